"""The Device contract, written once and run for every backend this machine can reach:
arguments arrive intact however hostile, exit codes and timeouts become DeviceError, files
round-trip. Backends: host, the iOS simulator (through fake_xcrun), the emulated Android device,
and a real phone when DEEPCOMPRESS_PHONE names one (skipped with the reason otherwise)."""
from __future__ import annotations

import posixpath
import time
from pathlib import Path

import pytest

from dccore.errors import DeviceError

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE_ARGS = ["a b", "semi;colon", "$(touch PWNED)", "`id`", "it's", 'say "hi"', "back\\slash",
                "*", "&& echo no", "|", ">out", "#hash", "~", "nl\nline", "-n", ""]


def _host(tmp_path, monkeypatch):
    from device_harness._host import HostDevice

    return HostDevice(tmp_path / "workdir")


def _simctl(tmp_path, monkeypatch):
    from device_harness._simctl import SimctlDevice

    monkeypatch.setenv("DEEPCOMPRESS_XCRUN", str(FIXTURES / "fake_xcrun"))
    monkeypatch.setenv("FAKE_XCRUN_STATE", str(tmp_path / "xcrun-state"))
    return SimctlDevice.open("booted")


def _emulator(tmp_path, monkeypatch):
    emulator = pytest.importorskip("device_harness.emulator", reason="emulated device not built yet")
    if not hasattr(emulator, "start"):
        pytest.skip("emulated device not built yet (device_harness.emulator.start missing)")
    from device_harness._adb import AdbDevice

    handle = emulator.start(port=0)
    device = AdbDevice.connect(f"127.0.0.1:{handle.port}")
    device._test_handle = handle  # stopped by the fixture
    return device


def _phone(tmp_path, monkeypatch):
    from phone import phone_spec

    from device_harness._adb import AdbDevice

    return AdbDevice.connect(phone_spec(), timeout_s=30)


BACKENDS = {"host": _host, "simctl": _simctl,
            "emulator": pytest.param(_emulator, marks=pytest.mark.emulator),
            "phone": pytest.param(_phone, marks=pytest.mark.phone)}


@pytest.fixture(params=list(BACKENDS.values()), ids=list(BACKENDS))
def device(request, tmp_path, monkeypatch):
    dev = request.param(tmp_path, monkeypatch)
    try:
        yield dev
    finally:
        dev.close()
        handle = getattr(dev, "_test_handle", None)
        if handle is not None:
            handle.stop()


def test_info_is_complete(device):
    info = device.info.to_dict()
    assert info["kind"] in ("host", "simctl", "adb") and info["serial"]
    assert info["model"] and info["os_version"] and info["abi"] and info["cores"] >= 1


def test_hostile_arguments_arrive_intact(device, tmp_path):
    result = device.shell(["printf", "[%s]\\n", *HOSTILE_ARGS], timeout_s=30)
    assert result.returncode == 0
    assert result.output.replace("\r\n", "\n") == "".join(f"[{a}]\n" for a in HOSTILE_ARGS)
    leftovers = device.shell(["ls", device.workdir], timeout_s=30, check=False).output
    assert "PWNED" not in leftovers and not (tmp_path / "PWNED").exists()


def test_exit_status_and_check(device):
    with pytest.raises(DeviceError) as info:
        device.shell(["sh", "-c", "exit 3"], timeout_s=30)
    assert info.value.returncode == 3
    assert device.shell(["sh", "-c", "exit 3"], timeout_s=30, check=False).returncode == 3


def test_timeout_is_enforced(device):
    start = time.monotonic()
    with pytest.raises(DeviceError, match="timed out") as info:
        device.shell(["sleep", "20"], timeout_s=1.0)
    assert info.value.transient and info.value.returncode is None  # a retry may succeed
    assert time.monotonic() - start < 10


def test_push_pull_round_trip(device, tmp_path):
    local = tmp_path / "we'ird; name $(x).bin"
    payload = bytes(range(256)) * 300
    local.write_bytes(payload)
    device.shell(["mkdir", "-p", device.workdir], timeout_s=30)
    remote = posixpath.join(device.workdir, "dir with space", "it's a file.bin")
    device.shell(["mkdir", "-p", posixpath.dirname(remote)], timeout_s=30)
    seconds = device.push(local, remote, timeout_s=60)
    assert seconds >= 0
    back = tmp_path / "back.bin"
    device.pull(remote, back, timeout_s=60)
    assert back.read_bytes() == payload
    with pytest.raises(DeviceError):
        device.pull(posixpath.join(device.workdir, "missing.bin"), tmp_path / "x", timeout_s=30)


def test_a_backend_is_one_registration(tmp_path):
    """open_device picks a backend by the SPEC's form through BACKENDS: registering one is all
    it takes; unknown forms are a usage error naming every form, before anything is opened."""
    from dccore.errors import UsageError
    from device_harness import check_spec, open_device
    from device_harness._backends import BACKENDS, Backend
    from device_harness._host import HostDevice

    opened: list[str] = []

    def open_fake(argument, *, timeout_s, retries):
        opened.append(argument)
        return HostDevice(tmp_path / "fake")

    BACKENDS.register("fake", Backend("fake:NAME", open_fake, prefix=True))
    try:
        with open_device("fake:phone-1") as device:
            assert isinstance(device, HostDevice) and opened == ["phone-1"]
        assert check_spec("fake:x") == "fake" and check_spec("host") == "host"
        assert check_spec("127.0.0.1:5555") == check_spec("R58M123ABC") == "adb"
        assert check_spec("host:5555") == "adb"  # a host named "host", not the host backend
        # ... and it benches: an artifact kind its devices' kind runs takes it, nothing else named
        from device_harness import bench

        result = bench(Path(__file__).parent / "fixtures" / "tiny_linear.tflite", "fake:phone-2",
                       runs=3, warmup=1)
        assert result["ok"] and result["runs"] == 3 and opened == ["phone-1", "phone-2"]
        with pytest.raises(UsageError, match="fake:NAME") as err:
            open_device("bogus:device")
        assert "simctl:UDID|booted" in str(err.value) and "\n" not in str(err.value)
    finally:
        BACKENDS.unregister("fake")

