"""``deepcompress emulator`` as a process: --json, SIGTERM, and the background emulator that
``bench --device emulator`` starts or reuses (ensure_emulator / --stop)."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dccore.errors import DeviceError
from device_harness import emulator
from device_harness._adb import AdbDevice
from device_harness._keys import ensure_adb_key
from device_harness.emulator._background import answers_adb, pidfile_path

pytestmark = pytest.mark.emulator
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the emulator printed nothing in time"
    return proc.stdout.readline()


def test_cli_json_line_serves_then_stops_cleanly_on_sigterm(tmp_path):
    home, sandbox = tmp_path / "home", tmp_path / "my sandbox"
    key = ensure_adb_key(home / ".android" / "adbkey")  # the default authorized key
    proc = subprocess.Popen([sys.executable, "-m", "deepcompress.cli", "emulator", "--port", "0",
                             "--json", "--sandbox", str(sandbox)], env=_env(home), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        info = json.loads(_readline(proc, 120))
        assert info["host"] == "127.0.0.1" and info["serial"] == f"127.0.0.1:{info['port']}"
        assert Path(info["sandbox"]) == sandbox.resolve() and str(key) in info["auth"]
        with AdbDevice.connect(info["serial"], key_path=key) as dev:
            assert dev.shell(["sh", "-c", "echo kept > /data/local/tmp/f"]).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert (sandbox / "f").read_text() == "kept\n"  # a folder given with --sandbox stays
        assert not answers_adb(info["port"], timeout_s=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ensure_emulator_starts_once_reuses_then_stops(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for name, value in _env(home).items():
        monkeypatch.setenv(name, value)
    port = _free_port()
    serial = emulator.ensure_emulator(port, timeout_s=120)
    try:
        assert serial == f"127.0.0.1:{port}" and answers_adb(port)
        pid = int(pidfile_path(port).read_text())
        start = time.monotonic()
        assert emulator.ensure_emulator(port) == serial and time.monotonic() - start < 3
        assert int(pidfile_path(port).read_text()) == pid  # reused, not restarted
        with AdbDevice.connect(serial) as dev:  # the same user's key: let in by default
            dev.shell(["sh", "-c", "echo x > /data/local/tmp/persist"])
        assert (home / ".cache" / "deepcompress" / "emulator" / str(port) / "persist").is_file()
    finally:
        assert emulator.stop_emulator(port)
    assert not answers_adb(port, timeout_s=0.5) and not pidfile_path(port).exists()
    assert not emulator.stop_emulator(port)


def test_cli_stop_without_emulator_and_busy_port(tmp_path, monkeypatch, capsys):
    from deepcompress.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    port = _free_port()
    assert main(["emulator", "--stop", "--port", str(port), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": False, "port": port}
    with emulator.start(no_auth=True) as emu:
        with pytest.raises(DeviceError, match=f"cannot listen on 127.0.0.1:{emu.port}"):
            emulator.start(port=emu.port, no_auth=True)


def test_the_pidfile_is_removed_only_while_it_is_ours(tmp_path):
    from device_harness.emulator._serve import _remove_own_pidfile

    pidfile = tmp_path / "emulator.pid"
    pidfile.write_text("999999999\n")  # a newer emulator's
    _remove_own_pidfile(pidfile)
    assert pidfile.exists()
    pidfile.write_text(f"{os.getpid()}\n")
    _remove_own_pidfile(pidfile)
    assert not pidfile.exists()

