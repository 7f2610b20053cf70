"""AdbDevice (the ADB backend) against the emulated device: exit codes, quoting of hostile
arguments, push/pull, info, AUTH, retries after a dropped connection, timeouts."""
from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from dccore.errors import DeviceError
from device_harness import emulator
from device_harness._adb import AdbDevice, banner_props, parse_spec
from device_harness._keys import ensure_adb_key

pytestmark = pytest.mark.emulator

HOSTILE = ["a b", "it's", 'say "hi"', "x; touch pwned-semicolon", "$(touch pwned-subst)",
           "`touch pwned-backtick`", "back\\slash", "new\nline", "*", "-n", "ümlaut ✓", "|&<>",
           "'; echo INJECTED; '", "", "  lead and trail  ", "$HOME", "%s%n"]


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return ensure_adb_key(tmp_path_factory.mktemp("home") / ".android" / "adbkey")


@pytest.fixture(scope="module")
def emu(key):
    with emulator.start(authorized_keys=[f"{key}.pub"]) as handle:
        yield handle


@pytest.fixture(scope="module")
def device(emu, key):
    with AdbDevice.connect(emu.serial, key_path=key, timeout_s=10, backoff_s=0.05) as dev:
        yield dev


def test_exit_status_and_output(device):
    assert device.shell(["sh", "-c", "exit 7"], check=False).returncode == 7
    with pytest.raises(DeviceError) as err:
        device.shell(["sh", "-c", "echo oh no; exit 3"])
    assert err.value.returncode == 3 and err.value.output == "oh no\n" and "status 3: oh no" in str(err.value)
    assert device.shell(["no-such-command-here"], check=False).returncode == 127
    result = device.shell(["printf", "no newline"])
    assert (result.returncode, result.output) == (0, "no newline")  # marker never glued to output
    assert device.shell(["echo", "__DC_RC=5"]).output == "__DC_RC=5\n"


def test_hostile_arguments_come_back_verbatim(device, emu):
    result = device.shell(["printf", "%s\\0"] + HOSTILE)
    assert result.output.split("\0")[:-1] == HOSTILE
    assert not list(emu.sandbox.glob("pwned*")) and "INJECTED\n" not in result.output
    with pytest.raises(DeviceError, match="NUL"):
        device.shell(["echo", "a\0b"])


def test_push_pull_round_trip_with_hostile_names(device, emu, tmp_path):
    local = tmp_path / "local name; 'q\".bin"
    payload = os.urandom(300_000) + b"\r\n\0end"
    local.write_bytes(payload)
    os.chmod(local, 0o750)
    remote = "/data/local/tmp/deepcompress/dir with space/it's; \"x\".bin"
    seconds = device.push(local, remote)
    assert seconds > 0
    on_host = emu.host_path(remote)
    assert on_host.read_bytes() == payload and stat.S_IMODE(on_host.stat().st_mode) == 0o750
    assert device.shell(["ls", remote]).output.strip() == str(on_host)
    back = tmp_path / "back"
    device.pull(remote, back)
    assert back.read_bytes() == payload
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    device.push(empty, "/data/local/tmp/deepcompress/empty")
    device.pull("/data/local/tmp/deepcompress/empty", tmp_path / "empty-back")
    assert (tmp_path / "empty-back").read_bytes() == b""
    device.push(local, "/data/local/tmp/deepcompress/")  # a folder: the local name is kept
    assert emu.host_path(f"/data/local/tmp/deepcompress/{local.name}").read_bytes() == payload


def test_sandbox_escapes_and_missing_files_are_device_errors(device, emu, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    for remote, why in (("/etc/deepcompress-test", "outside"),
                        ("/data/local/tmp/../../tmp/escaped", "'..'")):
        with pytest.raises(DeviceError, match=why):
            device.push(local, remote)
    assert not Path("/tmp/escaped").exists() and not Path("/etc/deepcompress-test").exists()
    with pytest.raises(DeviceError, match="No such file"):
        device.pull("/data/local/tmp/nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()  # no partial file left behind
    with pytest.raises(DeviceError, match="no such file"):
        device.push(tmp_path / "missing", "/data/local/tmp/x")
    assert device.shell(["echo", "still usable"]).output == "still usable\n"


def test_info_from_getprop_and_sysfs(device, emu):
    info = device.info
    p = emu.profile
    assert (info.kind, info.serial, info.model) == ("adb", emu.serial, p.properties["ro.product.model"])
    assert info.os_version == "Android 14 (SDK 34)" and info.abi == p.properties["ro.product.cpu.abi"]
    assert info.cores == p.cores and info.max_freq_khz == p.max_freq_khz
    assert info.extra["emulated"] is True and info.to_dict()["max_freq_khz"] == list(p.max_freq_khz)


def test_without_getprop_the_names_come_from_the_connection_banner(key):
    """A device whose shell has no getprop (a minimal image) is still named, as Google's adb
    names it in ``adb devices -l``: by the product, model and device its adbd announces in the
    CNXN banner when it connects."""
    with emulator.start(authorized_keys=[f"{key}.pub"]) as emu:
        (emu._sandbox.state / "bin" / "getprop").unlink()
        with AdbDevice.connect(emu.serial, key_path=key, timeout_s=10) as dev:
            assert dev.shell(["sh", "-c", "command -v getprop"], check=False).returncode != 0
            info = dev.info
    p = emu.profile.properties
    assert info.model == p["ro.product.model"] != "unknown"
    assert (info.extra["device"], info.extra["product"]) == (p["ro.product.device"],
                                                             p["ro.product.name"])


def test_banner_props_reads_what_adbd_announces():
    banner = (b"device::ro.product.name=oriole;ro.product.model=Pixel 6;ro.product.device=oriole;"
              b"features=shell_v2,cmd,stat_v2\0")
    assert banner_props(banner) == {"ro.product.name": "oriole", "ro.product.model": "Pixel 6",
                                    "ro.product.device": "oriole"}
    assert banner_props(b"host::\0") == {} and banner_props(None) == {}


def test_unauthorized_key_is_refused_quickly(emu, tmp_path):
    stranger = tmp_path / "stranger" / "adbkey"  # missing: generated, then refused
    start = time.monotonic()
    with pytest.raises(DeviceError, match="refused this computer's adb key"):
        AdbDevice.connect(emu.serial, key_path=stranger, timeout_s=5)
    assert time.monotonic() - start < 4 and stranger.is_file() and Path(f"{stranger}.pub").is_file()


def test_dropped_connection_is_reconnected_transparently(device, emu):
    assert device.shell(["echo", "before"]).output == "before\n"
    assert emu.drop_connections() >= 1
    assert device.shell(["echo", "after"]).output == "after\n"


def test_a_reconnection_runs_the_hooks_first_and_is_recorded(emu, key):
    with AdbDevice.connect(emu.serial, key_path=key, backoff_s=0.01) as dev:
        seen: list[str] = []
        dev.after_reconnect(lambda: seen.append(dev.shell(["echo", "hook"]).output))
        assert dev.shell(["echo", "one"]).output == "one\n" and seen == []
        assert emu.drop_connections() >= 1
        assert dev.shell(["echo", "two"]).output == "two\n"
        assert seen == ["hook\n"]  # once, before the interrupted call was made again
        (recovered,) = dev.recovered_errors()
        assert recovered.startswith("shell echo: ") and "Error" in recovered


def test_without_retries_the_error_counts_no_attempts(key):
    """A caller with its own retry loop (retries=0) counts attempts itself: the device's
    message must not claim a count of its own."""
    handle = emulator.start(authorized_keys=[f"{key}.pub"])
    dev = AdbDevice.connect(handle.serial, key_path=key, timeout_s=2, retries=0)
    handle.stop()
    with pytest.raises(DeviceError) as err:
        dev.shell(["echo", "hi"])
    assert "attempt" not in str(err.value) and "shell echo failed: " in str(err.value)


def test_lost_device_is_reported_after_retries(key):
    handle = emulator.start(authorized_keys=[f"{key}.pub"])
    dev = AdbDevice.connect(handle.serial, key_path=key, timeout_s=2, retries=2, backoff_s=0.05)
    handle.stop()
    start = time.monotonic()
    with pytest.raises(DeviceError, match=r"failed after 3 attempt\(s\)") as err:
        dev.shell(["echo", "hi"])
    assert err.value.command == ["echo", "hi"] and time.monotonic() - start < 5
    assert err.value.transient  # a lost connection: the caller may reconnect later
    with pytest.raises(DeviceError, match="connect failed after 2 attempt"):
        AdbDevice.connect(handle.serial, key_path=key, timeout_s=1, retries=1, backoff_s=0.01)


def test_shell_timeout_fires_and_device_recovers(device, emu):
    start = time.monotonic()
    with pytest.raises(DeviceError, match="timed out after 0.5 s") as err:
        device.shell(["sh", "-c", "echo $$; exec sleep 20"], timeout_s=0.5)
    assert time.monotonic() - start < 3
    pid = int(err.value.output)  # what it printed before the deadline is kept
    assert err.value.transient
    deadline = time.monotonic() + 3  # the dropped connection ends the command on the device
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert device.shell(["echo", "ok"]).output == "ok\n"


def test_connect_times_out_on_a_silent_port(key):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts (backlog) but never speaks ADB
    try:
        start = time.monotonic()
        with pytest.raises(DeviceError, match="connect"):
            AdbDevice.connect(f"127.0.0.1:{silent.getsockname()[1]}", key_path=key, timeout_s=0.3,
                              retries=1, backoff_s=0.01)
        assert time.monotonic() - start < 3
    finally:
        silent.close()


def test_two_devices_in_parallel_threads(emu, key, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1_000_000))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with AdbDevice.connect(emu.serial, key_path=key) as dev:
                dev.push(blob, f"/data/local/tmp/par/{i}.bin")
                assert dev.shell(["sh", "-c", f"sleep 0.2; echo {i}"]).output == f"{i}\n"
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert all(emu.host_path(f"/data/local/tmp/par/{i}.bin").read_bytes() == blob.read_bytes()
               for i in range(3))


def test_spec_parsing():
    assert parse_spec("127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert parse_spec("[::1]:5037") == ("::1", 5037)
    assert parse_spec("emulator-5554") == ("127.0.0.1", 5555)
    assert parse_spec("R58M123ABC") is None and parse_spec("host:") is None


def test_usb_without_libusb_says_what_to_install(key):
    try:
        import usb1  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("libusb1 is installed here: the USB path would look for a real device")
    with pytest.raises(DeviceError, match=r"pip install 'adb-shell\[usb\]'"):
        AdbDevice.connect("R58M123ABC", key_path=key, retries=0)
