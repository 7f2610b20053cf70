"""The runners on the built-in emulated Android device (real ADB protocol, host commands in a
sandbox playing /data/local/tmp): LiteRT runner + accuracy, benchmark_model pinned with taskset,
thermal cool-down, a dead device beside a live one, a connection dropped between models."""
from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

import pytest

from deepcompress.cli import main as cli
from dccore.errors import DeviceError
from device_harness.runners import BenchOptions, bench_artifact, bench_many
from device_harness.runners._benchmark_model import big_core_mask

emulator = pytest.importorskip("device_harness.emulator", reason="emulated device not available")
AdbDevice = pytest.importorskip("device_harness._adb", reason="ADB backend not available").AdbDevice

pytestmark = pytest.mark.emulator
FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = "m o; touch PWNED $(id) `id` 'q'.tflite"


@pytest.fixture(scope="module")
def emu():
    with emulator.start(port=0) as handle:
        yield handle


@pytest.fixture
def device(emu):
    emu.set_thermal_status(0)
    dev = AdbDevice.connect(emu.serial)
    try:
        yield dev
    finally:
        dev.close()
        emu.set_thermal_status(0)


@pytest.fixture
def hostile_model(tmp_path) -> Path:
    p = tmp_path / HOSTILE
    p.write_bytes((FIXTURES / "tiny_linear.tflite").read_bytes())
    return p


@pytest.fixture
def fake_benchmark_model(tmp_path) -> Path:
    """A benchmark_model stand-in (Python, so it runs on the emulated device's host CPU): checks its
    flags like the real tool, reports the CPUs it was pinned to, prints a recorded output sample."""
    sample = (FIXTURES / "benchmark_model" / "linux_info_scientific.txt").read_text()
    script = tmp_path / "benchmark_model"
    script.write_text(f"""#!{sys.executable}
import os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
if not os.path.isfile(flags["graph"]):
    print("ERROR: Could not open '" + flags["graph"] + "'."); sys.exit(1)
print("INFO: pinned to CPUs " + ",".join(map(str, sorted(os.sched_getaffinity(0)))))
print("INFO: flags " + " ".join(sorted(flags)))
sys.stdout.write({sample!r})
""")
    script.chmod(0o755)
    return script


def sandbox_names(emu) -> str:
    return "\n".join(str(p) for p in emu.sandbox.rglob("*"))


def test_bench_cli_on_emulator_with_eval(emu, hostile_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli(["bench", str(hostile_model), "--device", emu.serial, "--runs", "10", "--warmup", "2",
                "--eval", "32", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["runner"] == "litert-python" and r["runs"] == 10
    assert r["device"]["kind"] == "adb" and r["device"]["serial"] == emu.serial
    assert r["device"]["model"] == "DeepCompress Emulated Device"
    assert r["thermal"] == {"status_before": 0, "status_after": 0, "cooldown_s": 0.0}
    assert r["peak_memory_mb"] > 10 and r["push"]["bytes"] == hostile_model.stat().st_size
    acc = r["accuracy"]
    assert acc["examples"] == 32 and acc["max_abs_diff_vs_host"] < 1e-5 and acc["argmax_agreement"] == 1.0
    names = sandbox_names(emu)
    assert "PWNED" not in names and "touch" not in names and "m o" not in names
    assert not (tmp_path / "PWNED").exists()


def test_benchmark_model_pushed_once_and_pinned_to_big_cores(device, emu, hostile_model,
                                                             fake_benchmark_model):
    pushes: list[str] = []
    push = device.push
    device.push = lambda local, remote, **kw: pushes.append(remote) or push(local, remote, **kw)
    opts = BenchOptions(runs=50, warmup=1, benchmark_model=fake_benchmark_model)
    first = bench_artifact(device, hostile_model, opts)
    second = bench_artifact(device, hostile_model, opts)
    assert len([p for p in pushes if "/cache/benchmark_model-" in p]) == 1
    assert len([p for p in pushes if "/models/" in p]) == 2
    mask = big_core_mask(device.info.max_freq_khz)
    assert mask is not None and first["runner_argv"][:2] == ["taskset", mask]
    assert second["runner_argv"] == first["runner_argv"]
    assert first["runner"] == "benchmark_model" and first["runs"] == 50
    assert first["latency_ms"]["mean"] == pytest.approx(2950.34)  # the recorded sample's figure
    # taskset really pinned the run: the stand-in saw only the big cores.
    out = device.shell(first["runner_argv"], timeout_s=60).output
    pinned = {int(c) for c in out.split("pinned to CPUs ")[1].split()[0].split(",")}
    assert pinned == {i for i in range(device.info.cores) if int(mask, 16) >> i & 1}


def test_hot_device_is_cooled_down_and_recorded(device, emu, hostile_model):
    emu.set_thermal_status(3)
    timer = threading.Timer(0.6, emu.set_thermal_status, args=(0,))
    timer.start()
    try:
        r = bench_artifact(device, hostile_model, BenchOptions(runs=3, warmup=0, cooldown_poll_s=0.2,
                                                               cooldown_max_s=10))
    finally:
        timer.cancel()
    assert r["thermal"]["status_before"] == 3 and r["thermal"]["status_after"] == 0
    assert 0.4 <= r["thermal"]["cooldown_s"] < 10


def test_bounded_cooldown_when_it_stays_hot(device, emu, hostile_model):
    emu.set_thermal_status(2)
    r = bench_artifact(device, hostile_model, BenchOptions(runs=3, warmup=0, cooldown_poll_s=0.2,
                                                           cooldown_max_s=0.5))
    # Bounded: the 0.5 s maximum plus at most one (possibly slow, under load) thermal poll.
    assert r["ok"] and r["thermal"]["status_after"] == 2 and 0.5 <= r["thermal"]["cooldown_s"] < 5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_device_reported_live_one_kept(emu, hostile_model, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    dead = f"127.0.0.1:{_closed_port()}"
    code = cli(["bench", str(hostile_model), "--device", dead, "--device", emu.serial, "--runs", "3",
                "--retries", "0", "--out", str(out), "--json"])
    assert code == 1  # one failed, after everything was printed
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert printed == written and [r["ok"] for r in written] == [False, True]
    assert written[0]["device"] == {"spec": dead} and "reachable" in written[0]["error"]
    assert written[1]["device"]["serial"] == emu.serial


class _DroppingPort:
    """A TCP port whose every connection is closed as soon as it is accepted (a device that keeps
    dropping); counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.spec = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by the test
                return
            self.connections += 1
            conn.close()


@pytest.mark.parametrize("retries", [0, 1])
def test_attempts_reported_are_the_connections_made(hostile_model, retries, capsys):
    port = _DroppingPort()
    try:
        code = cli(["bench", str(hostile_model), "--device", port.spec, "--runs", "3",
                    "--retries", str(retries), "--json"])
    finally:
        port.sock.close()
    assert code == 1
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not result["ok"] and result["attempts"] == retries + 1
    assert port.connections == retries + 1  # no retry loop hidden inside each attempt
    assert "attempt(s)" not in result["error"]  # the text counts what the attempts field does
    assert result["error"].startswith("2 attempts failed") if retries else "attempts" not in result["error"]


def test_bench_api_passes_its_retries_to_the_device(hostile_model):
    import device_harness

    port = _DroppingPort()
    try:
        with pytest.raises(DeviceError, match=r"failed after 2 attempt\(s\)"):
            device_harness.bench(hostile_model, port.spec, runs=3, retries=1)
    finally:
        port.sock.close()
    assert port.connections == 2


def test_connection_dropped_between_models_is_recovered(emu, hostile_model):
    second = hostile_model.with_name("second.tflite")
    second.write_bytes(hostile_model.read_bytes())
    dropped: list[int] = []

    def on_result(result):
        dropped.append(emu.drop_connections())  # pull the cable after each model

    results = bench_many([hostile_model, second], [emu.serial], BenchOptions(runs=3, warmup=0),
                         open_device=lambda s: AdbDevice.connect(s), on_result=on_result)
    assert [r["ok"] for r in results] == [True, True] and dropped[0] >= 1
    assert "device_reconnects" not in results[0]  # the second model's first call reconnected:
    assert results[1]["device_reconnects"][0].startswith("shell dumpsys: ")  # and says so


def test_devices_lists_the_emulator(emu, capsys):
    assert cli(["devices", "--json", "--no-probe", "--adb", emu.serial]) == 0
    rows = {r["spec"]: r for r in json.loads(capsys.readouterr().out)}
    info = rows[emu.serial]["info"]
    assert info["kind"] == "adb" and info["model"] == "DeepCompress Emulated Device"
    assert info["os_version"].startswith("Android 14") and info["cores"] >= 1
    assert info["max_freq_khz"] and all(f > 0 for f in info["max_freq_khz"])
