"""The iOS simulator backend and the BenchHost protocol, against tests/fixtures/fake_xcrun.

The stand-in runs no model: its figures are placeholders (latencies 1, 2, ..., runs). What is
checked is the protocol: simctl arguments, SIMCTL_CHILD_ variables, where files go, the JSON schema.
"""
from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepcompress.cli import main as cli
from dccore.artifacts import artifact_sha256
from dccore.errors import DeviceError
from device_harness._simctl import Simctl, SimctlDevice, parse_device_list, runtime_version

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
IPHONE15 = "0A1B2C3D-0000-4000-8000-000000000001"
IPHONE_SE = "0A1B2C3D-0000-4000-8000-000000000002"
BUNDLE = "org.deepcompress.BenchHost"


@pytest.fixture
def xcrun(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "xcrun-state"
    state.mkdir()
    monkeypatch.setenv("DEEPCOMPRESS_XCRUN", str(FIXTURES / "fake_xcrun"))
    monkeypatch.setenv("FAKE_XCRUN_STATE", str(state))
    return state


def calls(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


@pytest.fixture
def app(tmp_path) -> Path:
    """A stand-in BenchHost.app carrying the real Info.plist (so its bundle id is checked too)."""
    bundle = tmp_path / "build" / "BenchHost.app"
    bundle.mkdir(parents=True)
    shutil.copy(ROOT / "ios_export" / "BenchHost" / "Info.plist", bundle / "Info.plist")
    (bundle / "BenchHost").write_bytes(b"not a real Mach-O")
    return bundle


@pytest.fixture
def mlpackage(tmp_path) -> Path:
    pkg = tmp_path / "my model; rm -rf ~ $(id).mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x08\x09" * 500)
    return pkg


def test_runtime_version():
    assert runtime_version("com.apple.CoreSimulator.SimRuntime.iOS-17-5") == "iOS 17.5"
    assert runtime_version("com.apple.CoreSimulator.SimRuntime.watchOS-10-0") == "watchOS 10.0"


def test_list_parses_into_frozen_records(xcrun):
    sims = Simctl().devices()
    assert [s.name for s in sims] == ["iPhone 15", "iPhone SE (3rd generation)", "iPhone 8"]
    assert sims[0].os_version == "iOS 17.5" and not sims[0].booted and sims[1].booted
    assert not sims[2].available
    with pytest.raises(AttributeError):
        sims[0].state = "Booted"  # type: ignore[misc]
    assert calls(xcrun)[0]["argv"] == ["simctl", "list", "-j", "devices"]
    with pytest.raises(DeviceError, match="unexpected JSON"):
        parse_device_list('{"runtimes": []}')


def test_resolve_booted_and_unknown(xcrun):
    simctl = Simctl()
    assert simctl.resolve("booted").udid == IPHONE_SE
    with pytest.raises(DeviceError, match="not found"):
        simctl.resolve("NOPE")


def test_boot_tolerates_already_booted_and_waits(xcrun):
    simctl = Simctl()
    simctl.boot(IPHONE_SE)            # already booted: simctl exits 149, which is fine
    simctl.boot(IPHONE15)
    assert simctl.resolve(IPHONE15).booted
    argvs = [c["argv"][1:] for c in calls(xcrun)]
    assert ["boot", IPHONE15] in argvs and ["bootstatus", IPHONE15, "-b"] in argvs


def test_missing_xcrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DEEPCOMPRESS_XCRUN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DeviceError, match="xcrun not found"):
        Simctl()


def test_bench_mlpackage_protocol(xcrun, app, mlpackage, capsys):
    code = cli(["bench", str(mlpackage), "--device", f"simctl:{IPHONE15}", "--runs", "7", "--warmup",
                "2", "--compute-units", "cpuAndNeuralEngine", "--bench-host-app", str(app),
                "--eval", "20", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    r = json.loads(out)
    log = calls(xcrun)
    argvs = [c["argv"][1:] for c in log]
    assert argvs.index(["boot", IPHONE15]) < argvs.index(["bootstatus", IPHONE15, "-b"]) \
        < argvs.index(["install", IPHONE15, str(app)]) \
        < argvs.index(["get_app_container", IPHONE15, BUNDLE, "data"])
    launch = [c for c in log if c["argv"][1] == "launch"]
    assert len(launch) == 1
    assert launch[0]["argv"][1:] == ["launch", "--console-pty", "--terminate-running-process",
                                     IPHONE15, BUNDLE]
    env = launch[0]["child_env"]
    model_rel = env["SIMCTL_CHILD_DEEPCOMPRESS_MODEL"]
    # named by the one artifact hash, the one the result (and qualify's history) records
    assert model_rel == f"deepcompress/models/{artifact_sha256(mlpackage)[:16]}.mlpackage"
    assert r["artifact_sha256"] == artifact_sha256(mlpackage)
    assert env["SIMCTL_CHILD_DEEPCOMPRESS_RUNS"] == "7"
    assert env["SIMCTL_CHILD_DEEPCOMPRESS_WARMUP"] == "2"
    assert env["SIMCTL_CHILD_DEEPCOMPRESS_COMPUTE_UNITS"] == "cpuAndNeuralEngine"
    assert env["SIMCTL_CHILD_DEEPCOMPRESS_RESULT"] == "deepcompress_result.json"
    assert env["SIMCTL_CHILD_DEEPCOMPRESS_EVAL_COUNT"] == "20"

    # The package was copied whole into the app's Documents, under a content-hash name.
    documents = xcrun / "Containers" / IPHONE15 / BUNDLE / "data" / "Documents"
    copied = documents / model_rel
    assert (copied / "Manifest.json").read_bytes() == (mlpackage / "Manifest.json").read_bytes()
    assert (copied / "Data/com.apple.CoreML/model.mlmodel").stat().st_size == 1000
    # The eval batch went as raw float32: 20 Fashion-MNIST test images of 784 values.
    eval_in = np.fromfile(documents / env["SIMCTL_CHILD_DEEPCOMPRESS_EVAL_INPUT"], dtype="<f4")
    from compression.data import load_split

    split = load_split("test", limit=20)
    np.testing.assert_array_equal(eval_in.reshape(20, 1, 28, 28), split.images.numpy())

    # Nothing the user named went into an argument or a variable.
    assert "rm -rf" not in json.dumps(log) and "my model" not in json.dumps(log)

    # Result: the placeholders 1..7 ms, summarised by the harness.
    assert r["ok"] and r["runner"] == "benchhost-coreml" and r["format"] == "mlpackage"
    assert r["runs"] == 7 and r["latencies_ms"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert r["latency_ms"]["p50"] == 4.0 and r["latency_ms"]["mean"] == 4.0
    assert r["latency_ms"]["p90"] == pytest.approx(6.4)
    assert r["peak_memory_mb"] == 1.0 and r["memory_source"] == "phys_footprint"
    assert r["model_memory_mb"] == 0.5 and r["model_memory_source"].startswith("phys_footprint")
    assert r["push"]["bytes"] == 1000 + len('{"fileFormatVersion": "1.0.0"}')
    assert r["device"]["kind"] == "simctl" and r["device"]["serial"] == IPHONE15
    assert r["device"]["os_version"] == "iOS 17.5" and r["device"]["model"] == "iPhone 15"
    acc = r["accuracy"]  # the stand-in's "logits" are each example's first 10 pixels
    expected = float((split.images.numpy().reshape(20, -1)[:, :10].argmax(1) == split.labels.numpy()).mean())
    assert acc["examples"] == 20 and acc["accuracy"] == pytest.approx(expected)
    if platform.system() != "Darwin":
        assert acc["host_reference"].startswith("unavailable")


def test_second_bench_does_not_read_a_stale_result(xcrun, app, mlpackage, tmp_path, capsys):
    broken = tmp_path / "broken.mlpackage"
    broken.mkdir()  # no Manifest.json: the app reports an error
    assert cli(["bench", str(mlpackage), "--device", "simctl:booted", "--runs", "3",
                "--bench-host-app", str(app), "--json"]) == 0
    capsys.readouterr()
    assert cli(["bench", str(broken), "--device", "simctl:booted", "--runs", "3",
                "--bench-host-app", str(app), "--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert not r["ok"] and "BenchHost failed: model not found" in r["error"]
    assert r["attempts"] == 1  # the app said no: not a connection problem, no retry


def test_missing_app_and_tflite_on_simulator(xcrun, mlpackage, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEEPCOMPRESS_BENCHHOST_APP", raising=False)
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes((FIXTURES / "tiny_linear.tflite").read_bytes())
    assert cli(["bench", str(mlpackage), str(tflite), "--device", "simctl:booted", "--json"]) == 1
    first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "BenchHost.app not found" in first["error"] and "README" in first["error"]
    assert "does not run in the iOS simulator" in second["error"]


def test_devices_lists_available_simulators(xcrun, capsys):
    assert cli(["devices", "--json", "--no-probe"]) == 0
    rows = json.loads(capsys.readouterr().out)
    sims = [r for r in rows if r["spec"].startswith("simctl:")]
    assert [r["spec"] for r in sims] == [f"simctl:{IPHONE15}", f"simctl:{IPHONE_SE}"]
    assert sims[0]["info"]["os_version"] == "iOS 17.5"


def test_simulator_device_open_booted(xcrun):
    dev = SimctlDevice.open("booted")
    assert dev.info.serial == IPHONE_SE and dev.info.kind == "simctl"
    assert dev.workdir.endswith("/data/tmp/deepcompress")
    from device_harness._host import host_info

    host = host_info()  # a simulator runs on the Mac's CPU
    assert (dev.info.abi, dev.info.cores) == (host.abi, host.cores)


def test_push_replaces_a_folder_and_pull_is_atomic(xcrun, tmp_path):
    dev = SimctlDevice.open("booted")
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weights.bin").write_bytes(b"new")
    remote = Path(dev.workdir) / "sim" / "m.mlpackage"   # an earlier push, in the harness's folder
    (remote / "stale").mkdir(parents=True)
    assert dev.push(package, str(remote)) >= 0
    assert sorted(p.name for p in remote.iterdir()) == ["Data"]  # the old folder's files are gone
    elsewhere = tmp_path / "sim" / "m.mlpackage"                 # never replaced: not ours
    (elsewhere / "stale").mkdir(parents=True)
    with pytest.raises(DeviceError):
        dev.push(package, str(elsewhere))
    assert (elsewhere / "stale").is_dir()
    back = tmp_path / "out" / "weights.bin"  # its folder does not exist yet
    dev.pull(str(remote / "Data" / "weights.bin"), back)
    assert back.read_bytes() == b"new"
    assert [p.name for p in back.parent.iterdir()] == ["weights.bin"]  # no temporary file left
    with pytest.raises(DeviceError, match=f"simulator {IPHONE_SE}: .* does not exist"):
        dev.pull(str(remote / "missing.bin"), tmp_path / "out" / "missing.bin")
    assert not (tmp_path / "out" / "missing.bin").exists()


@pytest.mark.macos
@pytest.mark.skipif(platform.system() != "Darwin" or shutil.which("xcrun") is None,
                    reason="needs macOS with Xcode (real xcrun simctl)")
def test_real_simctl_list(monkeypatch):
    monkeypatch.delenv("DEEPCOMPRESS_XCRUN", raising=False)
    sims = Simctl().devices()
    assert all(s.udid and s.runtime for s in sims)
