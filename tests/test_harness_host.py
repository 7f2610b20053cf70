"""The host backend end to end: the LiteRT runner as a child process, `deepcompress bench` and
`deepcompress devices`, accuracy on device checked against torch and the labels."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepcompress.cli import main as cli
from device_harness.runners import _litert_runner
from device_harness.runners._driver import RUNNER_SCRIPT, parse_runner_output

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = "a b; touch PWNED $(id) `id` 'q' \"d\".tflite"


@pytest.fixture
def hostile_model(tmp_path) -> Path:
    p = tmp_path / HOSTILE
    p.write_bytes((FIXTURES / "tiny_linear.tflite").read_bytes())
    return p


def test_runner_script_standalone(tmp_path):
    x = np.random.default_rng(1).random((7, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = [sys.executable, str(RUNNER_SCRIPT), "--model", str(FIXTURES / "tiny_linear.tflite"),
            "--runs", "12", "--warmup", "2", "--eval-input", str(tmp_path / "x.npy"),
            "--eval-output", str(tmp_path / "y.npy")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = parse_runner_output(proc.stdout, argv)
    assert len(result["latencies_ms"]) == 12 and len(result["warmup_ms"]) == 2
    assert all(v > 0 for v in result["latencies_ms"]) and result["init_ms"] > 0
    assert result["peak_memory_kb"] > 10_000 and result["memory_source"] == "VmHWM"
    # the model's own peak, named apart from the process's (interpreter, numpy, LiteRT: ~50 MB):
    # a 32 KB model (and the runtime's first set-up, ~3 MB) costs a few MB, not the tens the
    # process holds
    assert 0 < result["model_memory_kb"] < 8_000
    assert result["peak_memory_kb"] - result["model_memory_kb"] > 20_000
    assert "clear_refs" in result["model_memory_source"]
    assert result["inputs"] == [{"name": result["inputs"][0]["name"], "shape": [1, 1, 28, 28],
                                 "dtype": "float32"}]
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (7, 10) and result["eval"]["count"] == 7
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_tiny_tflite import TinyLinear
    finally:
        sys.path.remove(str(FIXTURES))
    torch.manual_seed(0)
    expected = TinyLinear().eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, expected, atol=1e-5)  # the artifact computes the source model


def test_runner_reports_a_bad_model_as_json(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    proc = subprocess.run([sys.executable, str(RUNNER_SCRIPT), "--model", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(_litert_runner.RESULT_MARKER)][0]
    assert "error" in json.loads(line[len(_litert_runner.RESULT_MARKER):])


def test_bench_on_host_with_hostile_name_and_eval(hostile_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results.jsonl"
    code = cli(["bench", str(hostile_model), "--device", "host", "--runs", "15", "--warmup", "2",
                "--eval", "64", "--json", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    r = json.loads(stdout.strip())
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert r["ok"] and r["runner"] == "litert-python" and r["runs"] == 15
    assert r["artifact"] == str(hostile_model)
    lat = r["latency_ms"]
    assert len(r["latencies_ms"]) == 15
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["p50"] == pytest.approx(float(np.median(r["latencies_ms"])))
    assert r["init_ms"] > 0 and r["peak_memory_mb"] > 10
    assert 0 < r["model_memory_mb"] < r["peak_memory_mb"] and r["model_memory_source"]
    assert r["push"]["bytes"] == hostile_model.stat().st_size and r["push"]["seconds"] >= 0
    assert r["device"]["kind"] == "host" and r["device"]["cores"] == os.cpu_count()
    acc = r["accuracy"]
    assert acc["examples"] == 64 and acc["argmax_agreement"] == 1.0
    assert acc["max_abs_diff_vs_host"] < 1e-5
    # Score it independently: in-process LiteRT over the same 64 test examples.
    from ai_edge_litert.interpreter import Interpreter

    from compression.data import load_split
    split = load_split("test", limit=64)
    interp = Interpreter(model_path=str(hostile_model))
    interp.allocate_tensors()
    preds = []
    for img in split.images.numpy():
        interp.set_tensor(interp.get_input_details()[0]["index"], img[None])
        interp.invoke()
        preds.append(interp.get_tensor(interp.get_output_details()[0]["index"]).argmax())
    assert acc["accuracy"] == pytest.approx(float(np.mean(np.array(preds) == split.labels.numpy())))
    assert json.loads(out.read_text().strip()) == r  # --out holds the same record


def test_table_output_and_failure_exit_code(hostile_model, tmp_path, capsys):
    pkg = tmp_path / "model.mlpackage"
    pkg.mkdir()
    missing = tmp_path / ("m [usb] [/red] " + "long" * 40 + ".tflite")  # markup-like, >80 columns
    code = cli(["bench", str(hostile_model), str(pkg), str(missing), "--runs", "3", "--warmup", "0"])
    out, err = capsys.readouterr()
    assert code == 1  # two of three failed: reported after everything was printed
    assert "litert-python" in out  # the table: results on stdout
    assert f"{hostile_model.name} on host: ok" in err  # progress on stderr
    assert "model.mlpackage on host: failed" in err
    # each failure once, whole, with the results; no empty table row for it
    assert (out + err).count("Core ML runs only on Apple devices") == 1
    assert f"FAILED {missing.name} on host: artifact {missing} does not exist\n" in out
    assert not any("model.mlpackage" in line and "│" in line for line in out.splitlines())
    assert max(map(len, out.splitlines())) > 80  # a pipe gets every line whole


def test_bench_device_spec_errors_are_one_clear_line(hostile_model, capsys):
    code = cli(["bench", str(hostile_model), "--device", "bogus:device"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.splitlines()  # once, before anything ran
    assert "'bogus:device' is not a device" in line and "USB support" not in line
    for form in ("host", "emulator", "simctl:UDID|booted", "HOST:PORT", "USB serial"):
        assert form in line
    for argv in (["--device", "bogus:device"], ["--runs", "x"], ["--device", "simctl:"]):
        code = cli(["bench", str(hostile_model), *argv, "--json"])
        out = capsys.readouterr().out
        (record,) = [json.loads(line) for line in out.splitlines()]  # JSON, never a bare line
        assert code == 2 and record["ok"] is False and record["error_type"] == "UsageError"


def test_devices_json_lists_host_and_explains_missing_xcrun(capsys, monkeypatch):
    monkeypatch.delenv("DEEPCOMPRESS_XCRUN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli(["devices", "--json", "--no-probe"]) == 0
    rows = json.loads(capsys.readouterr().out)
    host = rows[0]
    assert host["spec"] == "host" and host["info"]["cores"] == os.cpu_count()
    assert {"model", "os_version", "abi", "max_freq_khz"} <= set(host["info"])
    assert rows[-1] == {"spec": "simctl", "note": "skipped: xcrun not found (iOS simulators need "
                                                  "macOS with Xcode)"}


def test_leftover_runners_are_killed_and_nothing_else(tmp_path):
    """A runner whose connection dropped is still running; kill_leftover_runners ends it and its
    wrapper through the pidfile, and never a process that a stale or forged pidfile names."""
    import posixpath
    import time

    from device_harness._host import HostDevice
    from device_harness.runners import _driver

    device = HostDevice(tmp_path / "workdir")
    run_dir = _driver.run_dir(device)
    pidfile = posixpath.join(run_dir, "leftover.pid")
    wrapper = subprocess.Popen(["sh", "-c", _driver._TRACKED, "deepcompress-run", pidfile,
                                "sleep", "30"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
        while not (Path(pidfile).exists() and children.read_text().split()) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        (runner,) = map(int, children.read_text().split())
        for name, text in (("stale.pid", f"{bystander.pid}\n"), ("forged.pid", "-1\n"),
                           ("words.pid", "1; touch PWNED\n")):
            Path(run_dir, name).write_text(text)
        assert _driver.kill_leftover_runners(device, timeout_s=10) == [wrapper.pid]
        assert wrapper.wait(timeout=5) in (-9, 137)  # killed, or saw its runner killed first
        deadline = time.monotonic() + 5  # gone, or a zombie waiting for init to reap it
        while _running(runner) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _running(runner)
        assert bystander.poll() is None  # its pid was in a pidfile, but it is not our runner
        assert list(Path(run_dir).iterdir()) == [] and not Path("PWNED").exists()
        assert _driver.kill_leftover_runners(device, timeout_s=10) == []
    finally:
        for proc in (wrapper, bystander):
            proc.kill()
            proc.wait()
        device.close()


def test_host_push_replaces_only_what_the_harness_pushed_in_its_workdir(tmp_path):
    from dccore.errors import DeviceError
    from device_harness._host import HostDevice

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    device = HostDevice(tmp_path / "workdir")
    work = Path(device.workdir)
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "w.bin").write_bytes(b"one")
    os.symlink(victim, work / "link")
    os.symlink(victim / "keep.txt", work / "file-link")
    refused = [(package, victim / "m.mlpackage"),       # outside the workdir
               (package, victim),                        # onto a folder that is not a push
               (package, work / "link" / "m.mlpackage"),  # out through a link
               (package, work / ".." / "victim"),
               (FIXTURES / "tiny_linear.tflite", work / "file-link"),  # written through a link
               (FIXTURES / "tiny_linear.tflite", victim / "keep.txt")]
    for local, remote in refused:
        with pytest.raises(DeviceError, match="refused"):
            device.push(local, str(remote))
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "mine"
    target = work / "models" / "m.mlpackage"  # an earlier push of ours is replaced whole
    device.push(package, str(target))
    (package / "Data" / "w.bin").write_bytes(b"two")
    (package / "Data" / "extra.bin").write_bytes(b"x")
    device.push(package, str(target))
    assert sorted(p.name for p in (target / "Data").iterdir()) == ["extra.bin", "w.bin"]
    assert (target / "Data" / "w.bin").read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.mlpackage"]  # no temporaries
    with pytest.raises(DeviceError, match="refused"):  # a file where a folder was pushed
        device.push(FIXTURES / "tiny_linear.tflite", str(target))
    assert (target / "Data" / "w.bin").read_bytes() == b"two"
    device.close()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
