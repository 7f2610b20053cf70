"""Google's own adb client (Debian package ``adb``) against the emulated device: connect, shell,
push and pull byte-exact with hostile names, sandbox refusals, and a refused key.

Each test session runs its own adb server on a free port (ANDROID_ADB_SERVER_PORT) with HOME
and TMPDIR in a temporary folder, so the user's adb server and keys are never touched; the
server is killed at the end.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from device_harness import emulator
from device_harness._keys import ensure_adb_key

ADB = shutil.which("adb") or "/usr/bin/adb"
pytestmark = [
    pytest.mark.adb_client, pytest.mark.emulator,
    pytest.mark.skipif(not Path(ADB).exists(), reason="Debian's adb client is not installed "
                       "(apt install adb)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbClient:
    def __init__(self, home: Path) -> None:
        self.env = dict(os.environ, HOME=str(home), TMPDIR=str(home),
                        ANDROID_ADB_SERVER_PORT=str(_free_port()))
        for var in ("ANDROID_USER_HOME", "ANDROID_SDK_HOME", "ADB_VENDOR_KEYS", "ANDROID_SERIAL"):
            self.env.pop(var, None)

    def __call__(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADB, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        # the server daemonises; its output must not hold our pipes open
        subprocess.run([ADB, "start-server"], env=self.env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=True)

    def kill(self) -> None:
        subprocess.run([ADB, "kill-server"], env=self.env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    home = tmp_path_factory.mktemp("adb-home")
    key = ensure_adb_key(home / ".android" / "adbkey")  # adb uses the pair our keygen wrote
    adb = AdbClient(home)
    with emulator.start(authorized_keys=[f"{key}.pub"]) as emu:
        adb.start()
        try:
            out = adb("connect", emu.serial)
            assert f"connected to {emu.serial}" in out.stdout, out
            yield adb, emu, home
        finally:
            adb.kill()


def _wait_for_state(adb: AdbClient, serial: str, want: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = adb("-s", serial, "get-state").stdout.strip()
        if state == want:
            break
        time.sleep(0.1)
    return state


def test_connect_lists_the_device_with_its_profile(setup):
    adb, emu, _ = setup
    assert _wait_for_state(adb, emu.serial, "device") == "device"
    listing = adb("devices", "-l").stdout
    line = next(l for l in listing.splitlines() if l.startswith(emu.serial))
    assert " device " in line and "model:DeepCompress_Emulated_Device" in line


def test_shell(setup):
    adb, emu, _ = setup
    out = adb("-s", emu.serial, "shell", "echo", "hi")
    assert (out.returncode, out.stdout) == (0, "hi\n")
    assert adb("-s", emu.serial, "shell", "getprop", "ro.build.version.sdk").stdout == "34\n"


def test_push_pull_byte_exact_with_hostile_names(setup, tmp_path):
    adb, emu, _ = setup
    local = tmp_path / "my model; v2 'final' \"x\".bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several DATA chunks and a partial one
    local.write_bytes(payload)
    remote = "/data/local/tmp/dc test/it's; \"quoted\" name.bin"
    out = adb("-s", emu.serial, "push", str(local), remote)
    assert out.returncode == 0 and "1 file pushed" in out.stdout, out
    assert emu.host_path(remote).read_bytes() == payload
    back = tmp_path / "back; 'here'.bin"
    out = adb("-s", emu.serial, "pull", remote, str(back))
    assert out.returncode == 0 and "1 file pulled" in out.stdout, out
    assert back.read_bytes() == payload
    small = tmp_path / "small.txt"  # adb sends files under 64 KiB as one SEND+DATA+DONE write
    small.write_bytes(b"tiny\n")
    assert adb("-s", emu.serial, "push", str(small), "/data/local/tmp/").returncode == 0
    assert adb("-s", emu.serial, "shell", "cat", "/data/local/tmp/small.txt").stdout == "tiny\n"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert adb("-s", emu.serial, "push", str(empty), "/data/local/tmp/empty").returncode == 0
    assert emu.host_path("/data/local/tmp/empty").read_bytes() == b""
    listing = adb("-s", emu.serial, "ls", "/data/local/tmp/dc test").stdout  # sync LIST
    assert listing.splitlines()[-1].endswith(" it's; \"quoted\" name.bin")
    mode, size, _mtime = listing.splitlines()[-1].split()[:3]
    assert int(size, 16) == len(payload) and int(mode, 16) & 0o170000 == 0o100000


def test_sandbox_escapes_are_refused(setup, tmp_path):
    adb, emu, _ = setup
    local = tmp_path / "f"
    local.write_bytes(b"x")
    out = adb("-s", emu.serial, "push", str(local), "/data/local/tmp/../../../tmp/dc-escape")
    assert out.returncode != 0 and "'..' is not allowed" in out.stdout + out.stderr
    assert not Path("/tmp/dc-escape").exists()
    out = adb("-s", emu.serial, "pull", "/etc/hostname", str(tmp_path / "h"))
    assert out.returncode != 0 and not (tmp_path / "h").exists()


def test_unauthorized_key_fails_to_authenticate(tmp_path):
    other_home = tmp_path / "home"
    ensure_adb_key(other_home / ".android" / "adbkey")
    trusted = ensure_adb_key(tmp_path / "trusted" / "adbkey")
    adb = AdbClient(other_home)
    with emulator.start(authorized_keys=[f"{trusted}.pub"]) as emu:
        adb.start()
        try:
            out = adb("connect", emu.serial)
            assert "failed to authenticate" in out.stdout + out.stderr, out
            assert adb("-s", emu.serial, "shell", "echo", "hi").returncode != 0
        finally:
            adb.kill()


def test_old_adbd_profile_with_googles_client(tmp_path):
    """Google's adb against the emulated old adbd (0x01000000 with checksums, 4 KiB messages,
    FAIL before the data): a push arrives byte for byte, a refused one fails at once with the
    device's reason, and the device is still usable."""
    home = tmp_path / "home"
    key = ensure_adb_key(home / ".android" / "adbkey")
    adb = AdbClient(home)
    with emulator.start(authorized_keys=[f"{key}.pub"], old_adbd=True) as emu:
        adb.start()
        try:
            assert f"connected to {emu.serial}" in adb("connect", emu.serial).stdout
            local = tmp_path / "f"
            local.write_bytes(os.urandom(300_001))
            assert adb("-s", emu.serial, "push", str(local), "/data/local/tmp/f").returncode == 0
            assert emu.host_path("/data/local/tmp/f").read_bytes() == local.read_bytes()
            (emu.sandbox / "a-file").write_bytes(b"x")
            out = adb("-s", emu.serial, "push", str(local), "/data/local/tmp/a-file/f")
            assert out.returncode != 0 and "Not a directory" in out.stdout + out.stderr
            assert adb("-s", emu.serial, "shell", "echo", "hi").stdout == "hi\n"
        finally:
            adb.kill()

