"""Push speed to the emulated Android device over loopback: our AdbDevice against Google's adb.

The goal (Hardening item 10): our push is at least as fast as Debian's ``adb`` client against the
same daemon, for devices that advertise 4 KiB, 64 KiB, 256 KiB and 1 MiB messages (old adbd ...
today's). For each size an emulated device is started (``emulator.start(max_payload=...)``, in
this process), both clients connect to it, and pushes of the same random file alternate between
them, ``--rounds`` times (the order flips every round, so neither always goes first). Each
figure is the median; MB/s are 10^6 bytes per second; every push is checked byte for byte.

* ``ours``      -- ``AdbDevice.push``, wall time of the call;
* ``adb wall``  -- the ``adb push`` process (its own adb server, started once), wall time;
* ``adb own``   -- the time adb itself prints, without its process start: the stricter bar;
* ``ratio``     -- ours/adb speed (> 1: ours is faster), against each of the two.

An extra row plays an old adbd (``old_adbd=True``: protocol 0x01000000, so both clients compute
and the daemon verifies a checksum on every message; 4 KiB messages). ``--stock`` adds adb-shell's
own push. The load average is printed: figures from a busy machine are noisy.

    nice -n 5 python bench/bench_adb_push.py [--size-mb 16] [--rounds 15] [--json] [--stock]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_harness import emulator  # noqa: E402
from device_harness._adb import AdbDevice  # noqa: E402
from device_harness._keys import ensure_adb_key, load_signer  # noqa: E402

REMOTE = "/data/local/tmp/bench/push.bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(emu, payload: bytes) -> None:
    if emu.host_path(REMOTE).read_bytes() != payload:
        raise SystemExit("pushed file differs from the source")
    emu.host_path(REMOTE).unlink()


def _time_stock(emu, key: Path, local: Path) -> Callable[[], float]:
    """adb-shell's own push (header and payload written apart, half-size DATA chunks)."""
    from adb_shell.adb_device import AdbDeviceTcp

    dev = AdbDeviceTcp("127.0.0.1", emu.port, default_transport_timeout_s=30)
    dev.connect(rsa_keys=[load_signer(key)], auth_timeout_s=10)

    def push() -> float:
        start = time.perf_counter()
        dev.push(str(local), REMOTE, read_timeout_s=60)
        return time.perf_counter() - start

    push.close = dev.close  # type: ignore[attr-defined]
    return push


class GoogleAdb:
    """Debian's adb client with a server of its own (own port, HOME and keys): the user's adb
    server is never touched."""

    def __init__(self, home: Path) -> None:
        self.path = shutil.which("adb")
        self.env = dict(os.environ, HOME=str(home), TMPDIR=str(home),
                        ANDROID_ADB_SERVER_PORT=str(_free_port()))
        for var in ("ANDROID_USER_HOME", "ANDROID_SDK_HOME", "ADB_VENDOR_KEYS", "ANDROID_SERIAL"):
            self.env.pop(var, None)
        if self.path:
            subprocess.run([self.path, "start-server"], env=self.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                           check=True)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.path, *args], env=self.env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def connect(self, serial: str) -> None:
        self.run("connect", serial)
        deadline = time.monotonic() + 10
        while self.run("-s", serial, "get-state").stdout.strip() != "device":
            if time.monotonic() > deadline:
                raise SystemExit(f"adb never saw {serial} as 'device'")
            time.sleep(0.1)

    def push(self, serial: str, local: Path) -> tuple[float, float]:
        """(wall seconds of the adb process, the seconds adb reports itself)."""
        start = time.perf_counter()
        res = self.run("-s", serial, "push", str(local), REMOTE)
        wall = time.perf_counter() - start
        m = re.search(r"\(\d+ bytes in ([\d.]+)s\)", res.stdout)
        if res.returncode != 0 or not m:
            raise SystemExit(f"adb push failed: {res.stdout} {res.stderr}")
        return wall, float(m.group(1))

    def close(self) -> None:
        if self.path:
            subprocess.run([self.path, "kill-server"], env=self.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def compare(label: str, emu, key: Path, adb: GoogleAdb, local: Path, payload: bytes,
            rounds: int, stock: bool) -> dict:
    """Interleaved pushes by both clients (and adb-shell's own with ``stock``) to one device."""
    times: dict[str, list[float]] = {"ours": [], "adb_wall": [], "adb_own": [], "stock": []}
    adb.connect(emu.serial)
    stock_push = _time_stock(emu, key, local) if stock else None
    with AdbDevice.connect(emu.serial, key_path=key) as dev:
        def ours() -> None:
            start = time.perf_counter()
            dev.push(local, REMOTE)
            times["ours"].append(time.perf_counter() - start)
            _check(emu, payload)

        def google() -> None:
            wall, own = adb.push(emu.serial, local)
            times["adb_wall"].append(wall)
            times["adb_own"].append(own)
            _check(emu, payload)

        ours(), google()  # warm-up: connections, caches
        for key_ in times:
            times[key_].clear()
        for r in range(rounds):
            for run in ((ours, google) if r % 2 == 0 else (google, ours)):
                run()
            if stock_push is not None:
                times["stock"].append(stock_push())
                _check(emu, payload)
    if stock_push is not None:
        stock_push.close()  # type: ignore[attr-defined]
    adb.run("disconnect", emu.serial)
    size = len(payload)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    row = {"device": label, "max_payload": emu.max_payload,
           **{f"{k}_mb_per_s": size / 1e6 / t for k, t in med.items()},
           **{f"{k}_runs_s": [round(x, 5) for x in v] for k, v in times.items() if v}}
    row["ratio_vs_adb_wall"] = med["adb_wall"] / med["ours"]
    row["ratio_vs_adb_own"] = med["adb_own"] / med["ours"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=16.0)  # adb prints ms: big enough to read
    parser.add_argument("--rounds", type=int, default=15)  # a busy machine needs many
    parser.add_argument("--stock", action="store_true", help="also time adb-shell's own push")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("adb") is None:
        raise SystemExit("Debian's adb client is not installed (apt install adb): nothing to compare")
    size = int(args.size_mb * 1_000_000)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-adb-") as tmp:
        home = Path(tmp)
        key = ensure_adb_key(home / ".android" / "adbkey")
        local = home / "push.bin"
        payload = os.urandom(size)
        local.write_bytes(payload)
        adb = GoogleAdb(home)
        try:
            devices = [(f"{kib} KiB", {"max_payload": kib * 1024}) for kib in (4, 64, 256, 1024)]
            devices.append(("4 KiB old adbd", {"old_adbd": True}))
            for label, options in devices:
                with emulator.start(authorized_keys=[f"{key}.pub"], **options) as emu:
                    rows.append(compare(label, emu, key, adb, local, payload, args.rounds,
                                        args.stock))
        finally:
            adb.close()
    load = {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({"bytes": size, "rounds": args.rounds, "load_average": load,
                          "results": rows}, indent=2))
        return 0
    print(f"{size:,} bytes, median of {args.rounds} interleaved rounds, loopback to the emulated "
          f"device (daemon in this process); load average {load_before[0]:.2f} -> "
          f"{load['after'][0]:.2f} on {load['cpus']} CPUs")
    print(f"  {'device':<16} {'ours':>9} {'adb wall':>9} {'adb own':>9}  {'ratio wall':>10} "
          f"{'ratio own':>9}" + (f" {'adb-shell':>10}" if args.stock else "") + "   (MB/s)")
    for r in rows:
        print(f"  {r['device']:<16} {r['ours_mb_per_s']:9.1f} {r['adb_wall_mb_per_s']:9.1f} "
              f"{r['adb_own_mb_per_s']:9.1f}  {r['ratio_vs_adb_wall']:10.2f} "
              f"{r['ratio_vs_adb_own']:9.2f}"
              + (f" {r['stock_mb_per_s']:10.1f}" if args.stock else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
