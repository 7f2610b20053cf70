"""Upload (and download) speed to the emulated Android device over loopback, three clients:

* ``adb-shell stock``  -- adb_shell.AdbDeviceTcp as it comes (header and payload written
  separately, Nagle on);
* ``AdbDevice``        -- our backend (TCP_NODELAY, one write per message, buffered reads);
* both adb-shell clients again against the daemon advertising 256 KiB and 64 KiB messages
  (older adbd) instead of 1 MiB: more messages, more stalls for the stock client;
* ``adb (Debian)``     -- Google's client through its own isolated adb server; wall time of the
  ``adb push`` process, and the rate adb itself prints.

Each figure is the median of ``--repeats`` transfers of the same random file (default 3 MB =
3,000,000 bytes; MB/s here are 10^6 bytes per second). Every transfer is checked byte for byte.

    nice -n 5 python bench/bench_adb_push.py [--size-mb 3] [--repeats 7] [--json]
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


def bench_stock(emu, key: Path, local: Path, payload: bytes, repeats: int) -> list[float]:
    from adb_shell.adb_device import AdbDeviceTcp

    dev = AdbDeviceTcp("127.0.0.1", emu.port, default_transport_timeout_s=10)
    dev.connect(rsa_keys=[load_signer(key)], auth_timeout_s=10)
    dev.shell("mkdir -p /data/local/tmp/bench")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dev.push(str(local), REMOTE, read_timeout_s=60)
        times.append(time.perf_counter() - start)
        _check(emu, payload)
    dev.close()
    return times


def bench_ours(emu, key: Path, local: Path, payload: bytes, repeats: int) -> tuple[list[float], list[float]]:
    push, pull = [], []
    with AdbDevice.connect(emu.serial, key_path=key) as dev:
        back = local.with_name("back.bin")
        for _ in range(repeats):
            push.append(dev.push(local, REMOTE))
            start = time.perf_counter()
            dev.pull(REMOTE, back)
            pull.append(time.perf_counter() - start)
            if back.read_bytes() != payload:
                raise SystemExit("pulled file differs from the source")
            _check(emu, payload)
    return push, pull


def bench_adb(emu, home: Path, local: Path, payload: bytes, repeats: int) -> dict[str, list[float]] | None:
    adb = shutil.which("adb")
    if adb is None:
        return None
    env = dict(os.environ, HOME=str(home), TMPDIR=str(home), ANDROID_ADB_SERVER_PORT=str(_free_port()))
    run = lambda *a: subprocess.run([adb, *a], env=env, capture_output=True, text=True,  # noqa: E731
                                    timeout=60, stdin=subprocess.DEVNULL)
    subprocess.run([adb, "start-server"], env=env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
    try:
        run("connect", emu.serial)
        deadline = time.monotonic() + 10
        while run("-s", emu.serial, "get-state").stdout.strip() != "device":
            if time.monotonic() > deadline:
                raise SystemExit("adb never saw the emulated device as 'device'")
            time.sleep(0.1)
        out: dict[str, list[float]] = {"push_wall": [], "push_own": [], "pull_wall": []}
        back = local.with_name("adb-back.bin")
        for _ in range(repeats):
            start = time.perf_counter()
            res = run("-s", emu.serial, "push", str(local), REMOTE)
            out["push_wall"].append(time.perf_counter() - start)
            m = re.search(r"\(\d+ bytes in ([\d.]+)s\)", res.stdout)
            if res.returncode != 0 or not m:
                raise SystemExit(f"adb push failed: {res.stdout} {res.stderr}")
            out["push_own"].append(float(m.group(1)))
            start = time.perf_counter()
            res = run("-s", emu.serial, "pull", REMOTE, str(back))
            out["pull_wall"].append(time.perf_counter() - start)
            if res.returncode != 0 or back.read_bytes() != payload:
                raise SystemExit(f"adb pull failed: {res.stdout} {res.stderr}")
            _check(emu, payload)
        return out
    finally:
        subprocess.run([adb, "kill-server"], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = int(args.size_mb * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-adb-") as tmp:
        home = Path(tmp)
        key = ensure_adb_key(home / ".android" / "adbkey")
        local = home / "push.bin"
        payload = os.urandom(size)
        local.write_bytes(payload)
        with emulator.start(authorized_keys=[f"{key}.pub"]) as emu:
            stock = bench_stock(emu, key, local, payload, args.repeats)
            ours_push, ours_pull = bench_ours(emu, key, local, payload, args.repeats)
            adb = bench_adb(emu, home, local, payload, args.repeats)
        rows = [("adb-shell stock", "push", stock), ("AdbDevice", "push", ours_push),
                ("AdbDevice", "pull", ours_pull)]
        # older devices advertise smaller messages (Android 7-8 adbd: 256 KiB): more messages,
        # so more Nagle/delayed-ACK stalls for a client that writes header and payload apart
        for kib in (256, 64):
            with emulator.start(authorized_keys=[f"{key}.pub"], max_payload=kib * 1024) as emu:
                rows.append((f"adb-shell stock, {kib} KiB device", "push",
                             bench_stock(emu, key, local, payload, args.repeats)))
                rows.append((f"AdbDevice, {kib} KiB device", "push",
                             bench_ours(emu, key, local, payload, args.repeats)[0]))
    if adb:
        rows += [("adb (Debian), process wall time", "push", adb["push_wall"]),
                 ("adb (Debian), its own figure", "push", adb["push_own"]),
                 ("adb (Debian), process wall time", "pull", adb["pull_wall"])]
    results = [{"client": c, "op": op, "median_s": statistics.median(t),
                "mb_per_s": size / 1e6 / statistics.median(t), "runs_s": [round(x, 5) for x in t]}
               for c, op, t in rows]
    if args.json:
        print(json.dumps({"bytes": size, "repeats": args.repeats, "results": results}, indent=2))
    else:
        print(f"{size:,} bytes, median of {args.repeats}, loopback to the emulated device")
        for r in results:
            print(f"  {r['client']:<34} {r['op']:<5} {r['median_s'] * 1000:8.1f} ms  {r['mb_per_s']:8.1f} MB/s")
    if adb is None:
        print("  adb (Debian): not installed, skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
