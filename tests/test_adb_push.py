"""AdbDevice.push against the emulated device playing old and new adbd: a refusal the device
sends before the data ends the push at once and is not retried; packets fill the device's
message size; checksums where the protocol wants them; files arrive byte for byte."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from dccore.artifacts import artifact_sha256
from dccore.errors import DeviceError
from device_harness import emulator
from device_harness._adb import WORKDIR, AdbDevice
from device_harness._keys import ensure_adb_key
from device_harness.emulator import _daemon
from device_harness.runners import BenchOptions, bench_many

pytestmark = pytest.mark.emulator
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return ensure_adb_key(tmp_path_factory.mktemp("home") / ".android" / "adbkey")


@pytest.fixture(scope="module")
def old_adbd(key):
    """4 KiB messages, protocol 0x01000000 (checksums verified), FAIL before the data."""
    with emulator.start(authorized_keys=[f"{key}.pub"], old_adbd=True) as handle:
        yield handle


@pytest.fixture
def big_file(tmp_path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(4 * 1024 * 1024 + 3))
    return path


def test_a_push_the_device_refuses_fails_at_once_with_its_message(old_adbd, key, big_file):
    (old_adbd.sandbox / "a-file").write_bytes(b"x")
    with AdbDevice.connect(old_adbd.serial, key_path=key, retries=2, backoff_s=0.01) as device:
        start = time.monotonic()
        with pytest.raises(DeviceError, match="Not a directory") as err:
            device.push(big_file, "/data/local/tmp/a-file/model.bin", timeout_s=5)
        assert time.monotonic() - start < 1  # not the 5 s deadline: the device said no at once
        assert not err.value.transient and "refused by the device" in str(err.value)
        assert not device.recovered_errors()  # refused once, not retried
        assert device.shell(["echo", "still usable"]).output == "still usable\n"


def test_bench_many_does_not_retry_a_refused_push(old_adbd, key, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes((FIXTURES / "tiny_linear.tflite").read_bytes())
    target = old_adbd.host_path(f"{WORKDIR}/models/{artifact_sha256(model)[:16]}.tflite.part")
    target.mkdir(parents=True)  # a folder where the upload goes: the device refuses the SEND
    opened, sleeps = [], []

    def open_device(spec: str) -> AdbDevice:
        opened.append(spec)
        return AdbDevice.connect(spec, key_path=key, retries=0)

    try:
        (result,) = bench_many([model], [old_adbd.serial],
                               BenchOptions(runs=1, warmup=0, retries=2, cooldown_max_s=0),
                               open_device=open_device, on_result=lambda r: None,
                               sleep=sleeps.append)
    finally:
        target.rmdir()
    assert not result["ok"] and result["attempts"] == 1 and len(opened) == 1 and sleeps == []
    assert "is a directory" in result["error"] and "refused by the device" in result["error"]


def _count_writes(monkeypatch) -> list[int]:
    """Payload sizes of every WRTE the daemon receives."""
    sizes: list[int] = []
    on_write = _daemon.Stream._on_write

    def counting(self, data: bytes) -> None:
        if self.service == "sync:":
            sizes.append(len(data))
        on_write(self, data)

    monkeypatch.setattr(_daemon.Stream, "_on_write", counting)
    return sizes


@pytest.mark.parametrize("max_payload", [4096, 1024 * 1024])
def test_push_packets_fill_the_device_message_size(key, big_file, monkeypatch, max_payload):
    """adb-shell sends one DATA chunk of half the message size per packet; ours fill each."""
    remote = "/data/local/tmp/deepcompress/full.bin"
    size = big_file.stat().st_size
    stream = (8 + len(f"{remote},{0o100644}") + 8 * math.ceil(size / 65536) + size + 8)
    with emulator.start(authorized_keys=[f"{key}.pub"], max_payload=max_payload) as handle:
        os.chmod(big_file, 0o644)
        with AdbDevice.connect(handle.serial, key_path=key) as device:
            sizes = _count_writes(monkeypatch)
            device.push(big_file, remote)
        assert handle.host_path(remote).read_bytes() == big_file.read_bytes()
    assert len(sizes) == math.ceil(stream / max_payload)
    assert set(sizes[:-1]) == {max_payload}


def test_old_adbd_checks_every_checksum_and_small_files_arrive(old_adbd, key, tmp_path):
    """Protocol 0x01000000: every packet carries its byte sum and the daemon verifies it (a
    wrong one ends the connection); tiny and empty files take one packet."""
    with AdbDevice.connect(old_adbd.serial, key_path=key, retries=0) as device:
        assert device._transport.checksums_needed
        for name, data in (("empty", b""), ("tiny", b"tiny\n"), ("odd", os.urandom(70_001))):
            local = tmp_path / name
            local.write_bytes(data)
            device.push(local, f"/data/local/tmp/deepcompress/{name}")
            assert old_adbd.host_path(f"/data/local/tmp/deepcompress/{name}").read_bytes() == data
        assert not device.recovered_errors()  # no checksum error dropped the connection


def test_new_adbd_skips_checksums_both_ways(key, tmp_path):
    """Against protocol 0x01000001 we announce it too (as Google's adb does): no checksums are
    computed, and adb-shell's own reads still verify (their sums are filled in)."""
    with emulator.start(authorized_keys=[f"{key}.pub"]) as handle:
        with AdbDevice.connect(handle.serial, key_path=key, retries=0) as device:
            assert not device._transport.checksums_needed
            payload = os.urandom(300_000)
            (tmp_path / "f").write_bytes(payload)
            device.push(tmp_path / "f", "/data/local/tmp/f")
            device.pull("/data/local/tmp/f", tmp_path / "back")
            assert (tmp_path / "back").read_bytes() == payload
            assert device.shell(["echo", "ok"]).output == "ok\n"
