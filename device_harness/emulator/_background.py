"""The emulated device as a background process that outlives one CLI call.

``ensure_emulator()`` (what ``deepcompress bench --device emulator`` uses) reuses whatever
answers an ADB CNXN on 127.0.0.1:5555 -- our emulator, or a real Android emulator's adbd -- and
otherwise starts ``python -m device_harness.emulator --port 5555`` as a detached process (its own session,
stdin closed) that writes its pid to ``~/.cache/deepcompress/emulator-5555.pid`` and its log to
``emulator-5555.log`` beside it; its /data/local/tmp is ``~/.cache/deepcompress/emulator/5555/``
so pushed files survive a restart, as on a phone. It runs until ``deepcompress emulator --stop``
(``stop_emulator()``), a SIGTERM, or a reboot.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dccore.outputs import file_lock
from dccore.errors import DeviceError

from .._backends import BACKENDS, Backend
from . import _wire as w

DEFAULT_PORT = 5555  # where the adb server looks for emulator-5554
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepcompress"


def pidfile_path(port: int) -> Path:
    return cache_dir() / f"emulator-{port}.pid"


def default_sandbox(port: int) -> Path:
    return cache_dir() / "emulator" / str(port)


def answers_adb(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True if something on host:port answers a CNXN the way adbd does (CNXN or AUTH)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(w.pack(w.A_CNXN, w.VERSION_SKIP_CHECKSUM, w.MAX_PAYLOAD, b"host::\0"))
            header = b""
            while len(header) < w.HEADER.size:
                chunk = sock.recv(w.HEADER.size - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    cmd, *_rest, magic = w.HEADER.unpack(header)
    return w.magic_ok(cmd, magic) and cmd in (w.A_CNXN, w.A_AUTH)


def ensure_emulator(port: int = DEFAULT_PORT, *, timeout_s: float = 20.0) -> str:
    """Start or reuse the built-in emulated device on 127.0.0.1:port; return its serial."""
    serial = f"127.0.0.1:{port}"
    if answers_adb(port):
        return serial
    log_path = cache_dir() / f"emulator-{port}.log"
    with file_lock(cache_dir() / f"emulator-{port}.lock"):
        if answers_adb(port):  # another process started it while we waited for the lock
            return serial
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "device_harness.emulator", "--port", str(port),
                "--sandbox", str(default_sandbox(port)), "--pidfile", str(pidfile_path(port))]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, cwd=cache_dir(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if answers_adb(port, timeout_s=0.5):
                return serial
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        if proc.poll() is None:
            proc.terminate()
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:] if log_path.exists() else []
    raise DeviceError(f"the emulated device did not come up on {serial} within {timeout_s:.0f} s"
                      + (f"; its log {log_path} ends: " + " | ".join(tail) if tail else ""))


def _is_our_emulator(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (b"device_harness.emulator" in argv
            or (b"emulator" in argv and any(a.endswith(b"deepcompress") for a in argv)))


def stop_emulator(port: int = DEFAULT_PORT, *, timeout_s: float = 10.0) -> bool:
    """Stop a background emulator started by ``ensure_emulator``; False if none was running."""
    path = pidfile_path(port)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return False
    if not _is_our_emulator(pid):
        path.unlink(missing_ok=True)  # stale: that pid is gone or belongs to someone else
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_our_emulator(pid):
        time.sleep(0.05)
    if _is_our_emulator(pid):
        raise DeviceError(f"the emulator (pid {pid}) did not stop within {timeout_s:.0f} s")
    return True


def _open(_argument: str, *, timeout_s: float, retries: int):
    """``--device emulator``: the built-in emulated device, started or reused, reached by ADB."""
    return BACKENDS.get("adb").open(ensure_emulator(), timeout_s=timeout_s, retries=retries)


BACKENDS.register("emulator", Backend("emulator", _open))
