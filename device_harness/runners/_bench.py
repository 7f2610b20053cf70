"""One benchmark = one artifact on one device: cool down, push, run, (score), and a result dict.

``bench_many`` runs every artifact on every device. A device that drops is retried with backoff,
then reported, and the other devices' results are kept; each result goes to ``on_result`` as it
arrives so a caller can write it out before the next one starts. Every result says how many
attempts it took (``attempts``) and, when more than one, what went wrong first
(``retried_after`` on a success, the first and last cause in a failure's ``error``).

What runs an artifact is chosen by its kind (``RUNNERS``, keyed by suffix): ``.tflite`` goes to
the LiteRT runner or benchmark_model, ``.mlpackage`` to BenchHost. A new kind is one function and
one registration.
"""
from __future__ import annotations

import datetime as _dt
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from dccore.artifacts import artifact_sha256
from dccore.config import Checked, FilePath, Int, Num, OneOf, setting
from dccore.errors import DeviceError
from dccore.registry import Registry

from .._device import Device
from . import _driver
from ._benchhost import COMPUTE_UNITS
from ._accuracy import EvalData
from ._benchmark_model import DELEGATES
from ._stats import cool_down, latency_stats

# Not retried: the command ran and said no (bad model, missing file). Retried: the call never
# completed (dropped connection, timeout), which is what a flaky USB cable or Wi-Fi looks like.
# OSError covers ConnectionError and TimeoutError (socket.timeout) too.
_TRANSIENT = (OSError, EOFError, subprocess.TimeoutExpired)

# Ceilings on every count and duration a bench sets (qualify's configs take theirs from here): a
# slip of the finger (runs = 5000000) is refused before any work. Each is far above real use.
MAX_RUNS = 100_000          # benchmark_model's default is 50; 100,000 of a 1 ms model is 100 s
MAX_THREADS = 256
MAX_RETRIES = 10            # doubling backoff: 10 retries already wait ~17 minutes
MAX_SECONDS = 86_400.0      # a timeout, cool-down or lease of a day


@dataclass(frozen=True)
class BenchOptions(Checked):
    runs: int = setting(50, Int(1, MAX_RUNS))     # benchmark_model's default: a stable median
    warmup: int = setting(5, Int(0, MAX_RUNS))    # caches, allocator and frequency governor settle
    threads: int = setting(1, Int(1, MAX_THREADS))   # comparable across devices, least noise
    timeout_s: float = setting(300.0, Num(0, MAX_SECONDS, lo_open=True))   # a model run included
    benchmark_model: Path | None = setting(None, FilePath())
    delegate: str = setting("default", OneOf(tuple(DELEGATES)))
    eval_data: EvalData | None = setting(None)   # labelled examples from the caller, for accuracy
    # bounded: a hot phone in a hot room may never reach status 0
    cooldown_max_s: float = setting(60.0, Num(0, MAX_SECONDS))
    cooldown_poll_s: float = setting(5.0, Num(0, MAX_SECONDS))
    bench_host_app: Path | None = setting(None, FilePath())
    compute_units: str = setting("all", OneOf(tuple(COMPUTE_UNITS)))
    retries: int = setting(2, Int(0, MAX_RETRIES))        # reconnections after a dropped connection
    backoff_s: float = setting(1.0, Num(0, MAX_SECONDS))  # first wait; doubles each retry


@dataclass(frozen=True)
class ArtifactKind:
    """How one kind of artifact is benchmarked: ``bench(device, path, sha256, opts)`` returns the
    runner's fields of the result (``runner``, latencies, ``push``, ...)."""

    format: str          # "tflite": the result's "format"
    folder: bool         # a .mlpackage is a folder, a .tflite a file
    description: str     # "a .tflite file", for messages
    bench: Callable[..., dict]
    exporter: str = ""   # the exporter that writes it ("tflite", "coreml")
    # the device kinds (DeviceInfo.kind, Backend.device_kind) that run it: recorded here once,
    # for the harness's refusal and for qualify's choice of artifacts per device
    runs_on: frozenset[str] = frozenset()
    elsewhere: str = ""  # what to do on another device, for the refusal


RUNNERS: Registry[ArtifactKind] = Registry("artifact kind")


def artifact_kind(path: Path) -> ArtifactKind:
    if path.suffix in RUNNERS:
        kind = RUNNERS.get(path.suffix)
        if path.is_dir() if kind.folder else path.is_file():
            return kind
    if not path.exists():
        raise DeviceError(f"artifact {path} does not exist")
    expected = " or ".join(k.description for _suffix, k in RUNNERS.items())
    raise DeviceError(f"artifact {path}: expected {expected}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _from_runner(result: dict) -> dict:
    """Result fields from a runner that reports every latency (LiteRT runner, BenchHost)."""
    latencies = [float(v) for v in result["latencies_ms"]]
    if not latencies:
        raise DeviceError("the runner reported no timed runs")
    kb, model_kb = result.get("peak_memory_kb"), result.get("model_memory_kb")
    return {"runs": len(latencies), "latency_ms": latency_stats(latencies), "latencies_ms": latencies,
            "init_ms": result.get("init_ms"), "first_inference_ms": result.get("first_ms"),
            **memory(model_kb / 1024 if model_kb is not None else None,
                     result.get("model_memory_source"), kb / 1024 if kb is not None else None,
                     result.get("memory_source")),
            "inference_seconds": (sum(latencies) + sum(result.get("warmup_ms") or [])) / 1000,
            "runtime": result.get("runtime")}


def memory(model_mb: float | None, model_source: str | None, process_mb: float | None,
           process_source: str | None) -> dict:
    """A result's two memory figures, each named for what it is: ``model_memory_mb``, the
    model's own (what the runner holds with the model beyond what it holds without: the
    interpreter, its arena, the weights touched), and ``peak_memory_mb``, the runner process's
    whole peak (for the Python runner mostly the interpreter and numpy, ~50 MB)."""
    return {"model_memory_mb": model_mb, "model_memory_source": model_source,
            "peak_memory_mb": process_mb, "memory_source": process_source}


def _from_benchmark_model(parsed) -> dict:
    """benchmark_model prints aggregates only: p90/p99 are unknown and reported as null."""
    inf = parsed.inference
    us = lambda v: v / 1000 if v is not None else None  # noqa: E731
    stats = {"p50": us(inf.median), "p90": None, "p99": None, "mean": us(inf.avg), "min": us(inf.min),
             "max": us(inf.max), "std": us(inf.std), "spread": None,
             "p5": us(inf.p5), "p95": us(inf.p95), "source": "benchmark_model aggregates"}
    warm = parsed.warmup
    warm_s = (warm.avg or warm.curr or 0) * warm.count / 1e6 if warm else 0.0
    return {"runs": inf.count, "latency_ms": stats, "init_ms": parsed.init_ms,
            "first_inference_ms": us(parsed.first_inference_us),
            **memory(parsed.memory_overall_mb, "benchmark_model: footprint delta from the tool's "
                     "start, after the runs" if parsed.memory_overall_mb is not None else None,
                     parsed.peak_memory_mb, "benchmark_model periodic monitoring"
                     if parsed.peak_memory_mb else None),
            "memory_delta_mb": {"init": parsed.memory_init_mb, "overall": parsed.memory_overall_mb},
            "inference_seconds": inf.avg * inf.count / 1e6 + warm_s}


def _bench_tflite(device: Device, artifact: Path, sha256: str, opts: BenchOptions) -> dict:
    use_binary = opts.benchmark_model is not None and device.runs_android_binaries
    needs_python = not use_binary or opts.eval_data is not None
    python = _driver.device_python(device, timeout_s=opts.timeout_s) if needs_python else None
    if needs_python and python is None:  # say so before anything is pushed or run
        raise DeviceError(
            f"{device.info.serial}: --eval needs python3 with ai_edge_litert on the device "
            "(benchmark_model cannot return outputs)" if use_binary else
            f"{device.info.serial}: no python3 with ai_edge_litert on the device; pass "
            "--benchmark-model PATH (the Android benchmark_model binary) to bench there")
    model_remote, push = _driver.push_artifact(device, artifact, sha256, timeout_s=opts.timeout_s)
    if use_binary:
        parsed, argv = _driver.run_benchmark_model(
            device, opts.benchmark_model, model_remote, runs=opts.runs, warmup=opts.warmup,
            threads=opts.threads, delegate=opts.delegate, timeout_s=opts.timeout_s)
        out = {"runner": "benchmark_model", "runner_argv": argv, **_from_benchmark_model(parsed)}
    else:
        result = _driver.run_litert(device, python, model_remote, runs=opts.runs, warmup=opts.warmup,
                                    threads=opts.threads, timeout_s=opts.timeout_s)
        out = {"runner": "litert-python", **_from_runner(result)}
    out["push"] = push.to_dict()
    if opts.eval_data is not None:
        from ._accuracy import tflite_accuracy

        out["accuracy"] = tflite_accuracy(device, python, artifact, model_remote,
                                          data=opts.eval_data, threads=opts.threads,
                                          timeout_s=opts.timeout_s)
    return out


def _bench_mlpackage(device: Device, artifact: Path, sha256: str, opts: BenchOptions) -> dict:
    from . import _accuracy, _benchhost

    eval_x = labels = None
    if opts.eval_data is not None:
        eval_x, labels = opts.eval_data.inputs.astype("float32"), opts.eval_data.labels
    result, push, eval_out = _benchhost.run_benchhost(
        device, artifact, sha256, app=_benchhost.find_app(opts.bench_host_app), runs=opts.runs,
        warmup=opts.warmup, compute_units=opts.compute_units, timeout_s=opts.timeout_s, eval_x=eval_x)
    out = {"runner": "benchhost-coreml", "compute_units": opts.compute_units, **_from_runner(result),
           "push": push.to_dict()}
    if eval_out is not None:
        host = _benchhost.host_coreml_outputs(artifact, eval_x)
        out["accuracy"] = _accuracy.compare(eval_out, labels, host)
        if host is None:
            out["accuracy"]["host_reference"] = "unavailable: Core ML prediction on the host needs macOS"
    return out


RUNNERS.register(".tflite", ArtifactKind(
    "tflite", False, "a .tflite file", _bench_tflite, exporter="tflite",
    runs_on=frozenset({"host", "adb"}),
    elsewhere="a .tflite does not run in the iOS simulator here; bench the .mlpackage export "
              "instead"))
RUNNERS.register(".mlpackage", ArtifactKind(
    "mlpackage", True, "a .mlpackage folder", _bench_mlpackage, exporter="coreml",
    runs_on=frozenset({"simctl"}),
    elsewhere="Core ML runs only on Apple devices; use --device simctl:UDID|booted, or bench "
              "the .tflite export here"))


def formats_run_by(device_kind: str) -> list[str]:
    """The exporters whose artifacts a device of this kind runs."""
    return sorted({k.exporter for _suffix, k in RUNNERS.items()
                   if k.exporter and device_kind in k.runs_on})


def bench_artifact(device: Device, artifact: Path, opts: BenchOptions,
                   sleep: Callable[[float], None] = time.sleep) -> dict:
    """Benchmark one artifact on one device; raise DeviceError when it cannot be done."""
    start = time.perf_counter()
    artifact = Path(artifact)
    kind = artifact_kind(artifact)
    if device.info.kind not in kind.runs_on:
        raise DeviceError(f"{artifact.name}: " + (kind.elsewhere or (
            f"{kind.description} runs on {', '.join(sorted(kind.runs_on))} devices, not on "
            f"{device.info.kind}")))
    recovered = len(device.recovered_errors())
    thermal = cool_down(lambda: device.thermal_status(timeout_s=min(opts.timeout_s, 30.0)),
                        max_wait_s=opts.cooldown_max_s, poll_s=opts.cooldown_poll_s, sleep=sleep)
    sha256 = artifact_sha256(artifact)
    body = kind.bench(device, artifact, sha256, opts)
    reconnects = device.recovered_errors()[recovered:]
    return {"ok": True, "artifact": str(artifact), "format": kind.format,
            "artifact_bytes": body["push"]["bytes"],
            "artifact_sha256": sha256,
            "device": device.info.to_dict(), "warmup": opts.warmup, "threads": opts.threads,
            **body, "thermal": thermal.to_dict(),
            # calls the device made again after reconnecting, each with what interrupted it
            **({"device_reconnects": reconnects} if reconnects else {}),
            "harness_seconds": time.perf_counter() - start, "timestamp": _now()}


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def failure(artifact: Path | str, device: str | dict, exc: BaseException, attempts: int = 1,
            first: BaseException | None = None) -> dict:
    """A failed benchmark as a result. ``attempts``: how often it was tried (0: skipped);
    ``first``: the first attempt's error, quoted beside the last when they differ."""
    error = _text(exc)
    if attempts > 1:
        first_text = _text(first) if first is not None else None
        error = (f"{attempts} attempts failed; first: {first_text}; last: {error}"
                 if first_text is not None and first_text != error
                 else f"{attempts} attempts failed, each: {error}")
    out = {"ok": False, "artifact": str(artifact),
           "device": device if isinstance(device, dict) else {"spec": device},
           "error": error, "error_type": type(exc).__name__, "attempts": attempts,
           "timestamp": _now()}
    if attempts > 1 and first is not None:
        out["first_error"] = _text(first)
    return out


def _transient(exc: BaseException) -> bool:
    """Worth a reconnection: the call never completed (dropped connection, timeout).

    A DeviceError says so with its ``transient`` flag (or through its cause); its message is not
    read, since it may quote the device's own output ("TimeoutError: read timed out")."""
    if isinstance(exc, DeviceError):
        cause = exc.__cause__
        return exc.returncode is None and (
            exc.transient or (cause is not None and _transient(cause)))
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # a local file problem: retrying changes nothing
    return isinstance(exc, _TRANSIENT)


def bench_many(artifacts: Iterable[Path], specs: Iterable[str], opts: BenchOptions,
               open_device: Callable[[str], Device] | None = None,
               on_result: Callable[[dict], None] = lambda r: None,
               sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Every artifact on every device; failures are results too. Returns all results in order.

    This loop owns reconnection: ``open_device`` should not retry on its own (an AdbDevice opened
    with ``retries=0``), or each attempt counted in a failure's ``attempts`` hides several. By
    default it opens the device a SPEC names so, each connection call within a minute."""
    if open_device is None:
        from .._discover import open_device as open_spec

        def open_device(spec: str) -> Device:
            return open_spec(spec, timeout_s=min(opts.timeout_s, 60.0), retries=0)
    artifacts, results = list(artifacts), []

    def emit(result: dict) -> None:
        results.append(result)
        on_result(result)

    for spec in specs:
        device: Device | None = None
        dead: BaseException | None = None  # set once the device is given up on
        for artifact in artifacts:
            if dead is not None:
                emit(failure(artifact, spec, DeviceError(
                    f"{spec}: skipped, device unreachable ({_text(dead)})"), attempts=0))
                continue
            errors: list[BaseException] = []
            ran = False  # a runner may have started on the device, and may outlive the connection
            for attempt in range(1, opts.retries + 2):
                opened = device is not None
                try:
                    if device is None:
                        device = open_device(spec)
                        opened = True
                        if ran:  # reconnected: end what the lost connection left running
                            _driver.kill_leftover_runners(device, timeout_s=min(opts.timeout_s, 30.0))
                    ran = True
                    result = bench_artifact(device, artifact, opts, sleep=sleep)
                    result["attempts"] = attempt
                    if errors:
                        result["retried_after"] = _text(errors[0])
                    emit(result)
                    break
                except (DeviceError, *_TRANSIENT) as exc:
                    errors.append(exc)
                    transient = _transient(exc)
                    if not transient or attempt > opts.retries:
                        emit(failure(artifact, device.info.to_dict() if device else spec, exc,
                                     attempt, first=errors[0]))
                        if transient or not opened:
                            dead = exc
                        break
                    if device is not None:
                        _close_quietly(device)
                        device = None
                    sleep(opts.backoff_s * 2 ** (attempt - 1))
        if device is not None:
            _close_quietly(device)
    return results


def _close_quietly(device: Device) -> None:
    try:
        device.close()
    except Exception:  # closing a dropped connection may fail again; nothing left to save
        pass
