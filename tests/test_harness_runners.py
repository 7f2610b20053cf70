"""Runners against a scripted in-memory Android device: push caching, big-core pinning, hostile
names, thermal cool-down, retries with backoff, and results kept when one device drops."""
from __future__ import annotations

import json
import posixpath
from pathlib import Path

import numpy as np
import pytest

from dccore.config import build
from dccore.errors import ConfigError, DeviceError
from dccore.outputs import append_jsonl
from device_harness._device import AndroidDevice, DeviceInfo, ShellResult
from device_harness._host import HostDevice
from device_harness.runners import MAX_RETRIES, BenchOptions, EvalData, bench_artifact, bench_many
from device_harness.runners._driver import parse_runner_output

FIXTURES = Path(__file__).parent / "fixtures"
BM_OUTPUT = (FIXTURES / "benchmark_model" / "linux_info_scientific.txt").read_text()
HOSTILE = "my model; rm -rf $HOME `id` \"q\" 'x'.tflite"


class FakeAndroid(AndroidDevice):
    """Just enough of an Android shell for the runners: files in a dict, every argv recorded."""

    def __init__(self, *, thermal=(0,), python=False, fail_push: int = 0,
                 push_error: str = "connection reset by peer", fail_run: int = 0) -> None:
        self.info = DeviceInfo(kind="adb", serial="fake:5555", model="Fake Phone", os_version="14",
                               abi="arm64-v8a", cores=8, max_freq_khz=(1800000,) * 4 + (2400000,) * 4)
        self.workdir = "/data/local/tmp/deepcompress"
        self.files: dict[str, bytes] = {}
        self.calls: list[list[str]] = []
        self.pushed: list[str] = []
        self.runs: list[str] = []    # pidfiles of the runners started
        self.kills: list[str] = []   # run folders whose leftover runners were killed
        self._thermal = list(thermal)
        self._python = python
        self._fail_push = fail_push
        self._push_error = push_error
        self._fail_run = fail_run
        self.closed = False

    def shell(self, argv, *, timeout_s=60.0, check=True) -> ShellResult:
        assert all(isinstance(a, str) for a in argv), argv
        self.calls.append(list(argv))
        if argv[:2] == ["sh", "-c"] and argv[3] == "deepcompress-run":  # the pidfile wrapper
            assert argv[4].startswith(f"{self.workdir}/run/") and argv[4].endswith(".pid")
            self.runs.append(argv[4])
            argv = argv[5:]
            if self._fail_run > 0:  # the connection drops while the runner runs
                self._fail_run -= 1
                raise DeviceError("connection lost while running", command=argv, transient=True)
        elif argv[:2] == ["sh", "-c"] and argv[3] == "deepcompress-kill":
            self.kills.append(argv[4])
            return ShellResult(tuple(argv), 0, "")
        prog, rc, out = argv[0], 0, ""
        if prog == "ls":
            rc = 0 if argv[1] in self.files else 1
        elif prog == "mv":
            self.files[argv[3]] = self.files.pop(argv[2])
        elif prog == "dumpsys":
            status = self._thermal.pop(0) if len(self._thermal) > 1 else self._thermal[0]
            out = f"Thermal Status: {status}\n"
        elif prog in ("mkdir", "chmod"):
            pass
        elif prog == "taskset" or prog in self.files:
            binary = argv[2] if prog == "taskset" else prog
            assert binary in self.files, "benchmark_model run before it was pushed"
            out = BM_OUTPUT
        else:
            rc, out = 127, f"/system/bin/sh: {prog}: inaccessible or not found"
        if check and rc:
            raise DeviceError(out, command=argv, returncode=rc)
        return ShellResult(tuple(argv), rc, out)

    def push(self, local, remote, *, timeout_s=120.0) -> float:
        if self._fail_push > 0:
            self._fail_push -= 1
            raise DeviceError(self._push_error) from ConnectionResetError(104, "reset")
        self.files[remote] = Path(local).read_bytes()
        self.pushed.append(remote)
        return 0.001

    def pull(self, remote, local, *, timeout_s=120.0) -> None:
        Path(local).write_bytes(self.files[remote])

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def hostile_model(tmp_path) -> Path:
    p = tmp_path / "dir with space" / HOSTILE
    p.parent.mkdir()
    p.write_bytes((FIXTURES / "tiny_linear.tflite").read_bytes())
    return p


@pytest.fixture
def fake_binary(tmp_path) -> Path:
    p = tmp_path / "bench; touch pwned" / "benchmark_model"
    p.parent.mkdir()
    p.write_bytes(b"\x7fELF fake android binary")
    p.chmod(0o755)
    return p


def test_benchmark_model_runner(hostile_model, fake_binary):
    dev = FakeAndroid()
    opts = BenchOptions(runs=50, warmup=1, threads=4, benchmark_model=fake_binary)
    first = bench_artifact(dev, hostile_model, opts)
    second = bench_artifact(dev, hostile_model, opts)

    assert first["ok"] and first["runner"] == "benchmark_model" and first["runs"] == 50
    lat = first["latency_ms"]
    assert lat["mean"] == pytest.approx(2950.34) and lat["min"] == pytest.approx(2727.568)
    assert lat["p50"] is None and lat["p90"] is None  # benchmark_model prints no percentiles here
    assert first["init_ms"] == pytest.approx(17.187)
    assert first["peak_memory_mb"] == pytest.approx(49.3281)           # the tool's process
    assert first["model_memory_mb"] == pytest.approx(46.0859)           # delta from its start
    assert "delta" in first["model_memory_source"]
    assert first["push"]["bytes"] == hostile_model.stat().st_size
    assert first["device"]["serial"] == "fake:5555"

    # Pushed once, cached by content hash; the model is pushed every time (its upload is measured).
    binaries = [p for p in dev.pushed if "benchmark_model-" in p]
    models = [p for p in dev.pushed if "/models/" in p]
    assert len(binaries) == 1 and len(models) == 2
    run = first["runner_argv"]
    assert run[:2] == ["taskset", "f0"]          # the four 2.4 GHz cores
    assert run[2].startswith("/data/local/tmp/deepcompress/cache/benchmark_model-")
    assert "--num_threads=4" in run and "--num_runs=50" in run and "--warmup_runs=1" in run
    assert second["runner_argv"] == run

    # Nothing the user named reaches the device: remote names are content hashes.
    everything = json.dumps(dev.calls) + json.dumps(dev.pushed)
    for piece in ("my model", "rm -rf", "`id`", "touch pwned", "dir with space", '"q"'):
        assert piece not in everything


def test_no_python_and_no_binary_is_a_clear_error(hostile_model):
    with pytest.raises(DeviceError, match="--benchmark-model"):
        bench_artifact(FakeAndroid(), hostile_model, BenchOptions(runs=5))


def _eval_data(n):
    return EvalData(np.zeros((n, 1, 28, 28), np.float32), np.zeros(n, np.int64))


def test_eval_without_python_fails_before_running(hostile_model, fake_binary):
    dev = FakeAndroid()
    with pytest.raises(DeviceError, match="--eval needs python3"):
        bench_artifact(dev, hostile_model, BenchOptions(benchmark_model=fake_binary,
                                                           eval_data=_eval_data(10)))
    assert dev.pushed == []


def test_mlpackage_on_android_is_refused(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    with pytest.raises(DeviceError, match="Core ML runs only on Apple"):
        bench_artifact(FakeAndroid(), pkg, BenchOptions(runs=5))


def test_hot_device_cools_down_first(hostile_model, fake_binary):
    sleeps: list[float] = []
    dev = FakeAndroid(thermal=(3, 2, 0))
    r = bench_artifact(dev, hostile_model, BenchOptions(benchmark_model=fake_binary, cooldown_poll_s=5),
                       sleep=sleeps.append)
    assert r["thermal"]["status_before"] == 3 and r["thermal"]["status_after"] == 0
    assert len(sleeps) == 2
    assert dev.calls[0] == ["dumpsys", "thermalservice"]  # checked before anything is pushed


def test_dropped_connection_is_retried_with_backoff(hostile_model, fake_binary):
    devices, sleeps = [FakeAndroid(fail_push=1), FakeAndroid()], []
    opened = iter(devices)
    results = bench_many([hostile_model], ["fake:5555"], BenchOptions(benchmark_model=fake_binary),
                         open_device=lambda spec: next(opened), on_result=lambda r: None,
                         sleep=sleeps.append)
    assert [r["ok"] for r in results] == [True]
    assert sleeps == [1.0] and devices[0].closed  # reconnected once, after 1 s


def test_one_device_failing_keeps_the_others_results(hostile_model, fake_binary, tmp_path):
    out = tmp_path / "results.jsonl"
    sleeps: list[float] = []

    def open_device(spec):
        if spec == "dead:5555":
            return FakeAndroid(fail_push=99)
        return FakeAndroid()

    second = hostile_model.with_name("second.tflite")
    second.write_bytes(hostile_model.read_bytes())
    results = bench_many([hostile_model, second], ["dead:5555", "good:5555"],
                         BenchOptions(benchmark_model=fake_binary, retries=2),
                         open_device=open_device, on_result=lambda r: append_jsonl(out, r),
                         sleep=sleeps.append)
    assert [r["ok"] for r in results] == [False, False, True, True]
    assert results[0]["attempts"] == 3 and "connection reset" in results[0]["error"]
    assert "skipped, device unreachable" in results[1]["error"]  # no second round of retries
    assert sleeps == [1.0, 2.0]                                   # exponential backoff
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ok"] for r in lines] == [False, False, True, True]
    assert lines[2]["latency_ms"]["mean"] == pytest.approx(2950.34)


def test_a_result_after_a_reconnect_says_so_and_leftover_runners_are_killed(hostile_model,
                                                                            fake_binary):
    devices = [FakeAndroid(fail_run=1), FakeAndroid()]
    opened = iter(devices)
    (result,) = bench_many([hostile_model], ["fake:5555"], BenchOptions(benchmark_model=fake_binary),
                           open_device=lambda spec: next(opened), on_result=lambda r: None,
                           sleep=lambda s: None)
    assert result["ok"] and result["attempts"] == 2
    assert result["retried_after"] == "connection lost while running"
    # the runner of the lost connection may still run: the new connection kills it first
    assert devices[1].kills == [posixpath.dirname(devices[0].runs[0])]
    assert devices[1].calls[0][3] == "deepcompress-kill" and devices[0].kills == []
    first = bench_many([hostile_model], ["fake:5555"], BenchOptions(benchmark_model=fake_binary),
                       open_device=lambda spec: FakeAndroid(), on_result=lambda r: None)[0]
    assert first["attempts"] == 1 and "retried_after" not in first


def test_a_failure_text_agrees_with_its_attempts_and_quotes_the_first_cause(hostile_model,
                                                                           fake_binary):
    causes = iter(["first cause", "second cause", "third cause"])
    second = hostile_model.with_name("second.tflite")
    second.write_bytes(hostile_model.read_bytes())
    results = bench_many([hostile_model, second], ["flaky:5555"],
                         BenchOptions(benchmark_model=fake_binary, retries=2),
                         open_device=lambda spec: FakeAndroid(fail_push=1, push_error=next(causes)),
                         on_result=lambda r: None, sleep=lambda s: None)
    failed, skipped = results
    assert failed["attempts"] == 3 and failed["first_error"] == "first cause"
    assert failed["error"] == "3 attempts failed; first: first cause; last: third cause"
    assert skipped["attempts"] == 0 and "skipped" in skipped["error"]
    assert "third cause" in skipped["error"] and "attempt" not in skipped["error"]


def test_an_artifact_kind_is_one_registration(tmp_path):
    from device_harness.runners._bench import RUNNERS, ArtifactKind

    def bench_fake(device, path, sha256, opts):
        return {"runner": "fake", "push": {"bytes": path.stat().st_size, "seconds": 0.0}}

    model = tmp_path / "m.fake"
    model.write_bytes(b"12345")
    RUNNERS.register(".fake", ArtifactKind("fake", False, "a .fake file", bench_fake,
                                           exporter="fake", runs_on=frozenset({"adb"})))
    try:
        r = bench_artifact(FakeAndroid(), model, BenchOptions())
        assert (r["format"], r["runner"], r["artifact_bytes"]) == ("fake", "fake", 5)
        # where it runs is said once, on the kind: qualify's choice of artifacts per device
        # and the harness's refusal both read it
        from device_harness import formats_for
        assert "fake" in formats_for("127.0.0.1:5555") and "fake" not in formats_for("host")
        with pytest.raises(DeviceError, match="runs on adb devices, not on host"):
            bench_artifact(HostDevice(), model, BenchOptions())
        with pytest.raises(DeviceError, match="expected a .tflite file or a .mlpackage folder or "
                                              "a .fake file"):
            bench_artifact(FakeAndroid(), tmp_path, BenchOptions())
    finally:
        RUNNERS.unregister(".fake")


def test_non_transient_errors_are_not_retried(hostile_model):
    sleeps: list[float] = []
    results = bench_many([hostile_model], ["fake"], BenchOptions(), open_device=lambda s: FakeAndroid(),
                         on_result=lambda r: None, sleep=sleeps.append)
    assert not results[0]["ok"] and results[0]["attempts"] == 1 and sleeps == []


def test_transient_is_read_from_the_flag_not_the_message():
    from device_harness.runners._bench import _transient

    argv = ["python3", "runner.py"]
    quoted = ('DEEPCOMPRESS_RESULT {"schema": "deepcompress.runner/1", '
              '"error": "TimeoutError: read timed out"}\n')
    with pytest.raises(DeviceError, match="timed out") as said:
        parse_runner_output(quoted, argv)
    assert not _transient(said.value)  # the runner ran and reported an error: not a dropped call
    assert _transient(DeviceError("shell took too long", command=argv, transient=True))
    assert _transient(_chained(ConnectionResetError(104, "reset")))  # a backend's own error
    assert not _transient(DeviceError("timed out, says the device", command=argv))
    assert _transient(TimeoutError()) and _transient(EOFError()) and not _transient(ValueError())
    assert not _transient(FileNotFoundError(2, "gone"))


def _chained(cause: BaseException) -> DeviceError:
    try:
        raise DeviceError("connection lost") from cause
    except DeviceError as exc:
        return exc


@pytest.mark.parametrize("output, message", [
    ("some noise\n", "no result line"),
    ('DEEPCOMPRESS_RESULT {"schema": "other/9"}\n', "schema"),
    ('DEEPCOMPRESS_RESULT {"schema": "deepcompress.runner/1", "error": "boom"}\n', "boom"),
    ("DEEPCOMPRESS_RESULT {not json\n", "malformed"),
])
def test_runner_output_errors(output, message):
    with pytest.raises(DeviceError, match=message):
        parse_runner_output(output, ["python3", "runner.py"])


def test_options_are_validated():
    with pytest.raises(ConfigError, match=r"^runs: expected an integer in \[1, 100000\], got 0"):
        BenchOptions(runs=0)
    with pytest.raises(ConfigError, match="^delegate: expected one of .*got 'tpu'"):
        BenchOptions(delegate="tpu")
    with pytest.raises(ConfigError, match="^compute_units: .*got 'ane'"):
        BenchOptions(compute_units="ane")
    with pytest.raises(ConfigError, match=r"^retries: expected an integer in \[0, 10\]"):
        BenchOptions(retries=MAX_RETRIES + 1)
    with pytest.raises(ConfigError, match=r"^timeout_s: expected a number in \(0, "):
        BenchOptions(timeout_s=0)
    # from data: the one builder, unknown keys refused naming the path; a path given as text
    with pytest.raises(ConfigError, match="^bench.run: unknown key"):
        build(BenchOptions, {"run": 5}, "bench")
    assert build(BenchOptions, {"benchmark_model": "bm", "timeout_s": 5}, "bench") == \
        BenchOptions(benchmark_model=Path("bm"), timeout_s=5.0)


@pytest.mark.parametrize("flag, value, why", [
    ("--runs", "0", "expected an integer in [1, 100000], got 0"),
    ("--timeout", "0", "expected a number in (0, 86400.0], got 0.0"),
    ("--cooldown-max", "-1", "expected a number in [0, 86400.0], got -1.0")])
def test_a_bad_bench_flag_exits_2_naming_the_flag(hostile_model, capsys, flag, value, why):
    from deepcompress.cli import main as cli

    assert cli(["bench", str(hostile_model), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"error: {flag}: {why}" in err and "Traceback" not in err
