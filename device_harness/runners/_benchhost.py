"""Core ML on an iOS simulator through the BenchHost app (sources in ios_export/BenchHost/).

Protocol, which the app and ``tests/fixtures/fake_xcrun`` both follow:
  1. the harness copies the .mlpackage into the app's data container, under Documents/;
  2. it launches the app with ``SIMCTL_CHILD_DEEPCOMPRESS_*`` variables (model path relative to
     Documents, runs, warm-up, compute units, result file name, optional eval files);
  3. the app compiles and loads the model, warms up, times each prediction, writes the result JSON
     (schema ``deepcompress.runner/1``, as the LiteRT runner prints) to Documents/RESULT and prints
     ``DEEPCOMPRESS_BENCHHOST_DONE`` before exiting;
  4. the harness reads the JSON back through ``simctl get_app_container``.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from dccore.artifacts import artifact_files
from dccore.errors import DeviceError
from dccore.outputs import write_bytes_atomic

from .._simctl import SimctlDevice
from ._driver import PushStats
from ._litert_runner import SCHEMA

BUNDLE_ID = "org.deepcompress.BenchHost"
APP_ENV = "DEEPCOMPRESS_BENCHHOST_APP"
DONE_MARKER = "DEEPCOMPRESS_BENCHHOST_DONE"
ERROR_MARKER = "DEEPCOMPRESS_BENCHHOST_ERROR"
RESULT_NAME = "deepcompress_result.json"
COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")


def find_app(explicit: Path | None) -> Path:
    app = explicit or (Path(os.environ[APP_ENV]) if os.environ.get(APP_ENV) else None)
    if app is None or not app.is_dir() or app.suffix != ".app":
        raise DeviceError(f"BenchHost.app not found ({app or 'no path given'}): build it on a Mac "
                          "(ios_export/BenchHost/README.md) and pass --bench-host-app PATH or set "
                          f"{APP_ENV}")
    return app


def run_benchhost(device: SimctlDevice, artifact: Path, sha256: str, *, app: Path, runs: int, warmup: int,
                  compute_units: str, timeout_s: float,
                  eval_x: np.ndarray | None = None) -> tuple[dict, PushStats, np.ndarray | None]:
    """Install and launch BenchHost on ``device``; return its result, the model push and eval outputs."""
    simctl, udid = device.simctl, device.sim.udid
    simctl.boot(udid, timeout_s=timeout_s)
    simctl.install(udid, app, timeout_s=timeout_s)
    documents = simctl.app_container(udid, BUNDLE_ID, "data") / "Documents"
    model_rel = f"deepcompress/models/{sha256[:16]}{artifact.suffix}"
    seconds = device.push(artifact, str(documents / model_rel), timeout_s=timeout_s)
    push = PushStats(sum(f.stat().st_size for _, f in artifact_files(artifact)), seconds)

    result_file = documents / RESULT_NAME
    result_file.unlink(missing_ok=True)  # never read a previous run's figures
    env = {"DEEPCOMPRESS_MODEL": model_rel, "DEEPCOMPRESS_RUNS": str(runs),
           "DEEPCOMPRESS_WARMUP": str(warmup), "DEEPCOMPRESS_COMPUTE_UNITS": compute_units,
           "DEEPCOMPRESS_RESULT": RESULT_NAME}
    eval_out_file = None
    if eval_x is not None:
        # Raw little-endian float32, N examples back to back: trivial to read in Swift.
        eval_in = "deepcompress/eval_input.f32"
        eval_out_file = documents / "deepcompress/eval_output.f32"
        eval_out_file.unlink(missing_ok=True)
        write_bytes_atomic(documents / eval_in, np.ascontiguousarray(eval_x, dtype="<f4").tobytes())
        env.update(DEEPCOMPRESS_EVAL_INPUT=eval_in, DEEPCOMPRESS_EVAL_COUNT=str(len(eval_x)),
                   DEEPCOMPRESS_EVAL_OUTPUT="deepcompress/eval_output.f32")

    output = simctl.launch(udid, BUNDLE_ID, env=env, timeout_s=timeout_s)
    for line in output.splitlines():
        if ERROR_MARKER in line:
            raise DeviceError(f"BenchHost failed: {line.split(ERROR_MARKER, 1)[1].strip()}", output=output)
    if DONE_MARKER not in output or not result_file.is_file():
        tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        raise DeviceError(f"BenchHost exited without writing {RESULT_NAME}: {tail}", output=output)
    try:
        result = json.loads(result_file.read_text())
    except json.JSONDecodeError as exc:
        raise DeviceError(f"BenchHost wrote malformed JSON to {result_file} ({exc})") from exc
    if result.get("schema") != SCHEMA or "error" in result:
        raise DeviceError(f"BenchHost result: {result.get('error') or 'schema ' + repr(result.get('schema'))}")
    eval_out = None
    if eval_out_file is not None:
        if not eval_out_file.is_file():
            raise DeviceError("BenchHost wrote no eval output; rebuild the app from ios_export/BenchHost")
        eval_out = np.fromfile(eval_out_file, dtype="<f4").reshape(len(eval_x), -1)
    return result, push, eval_out


def host_coreml_outputs(artifact: Path, x: np.ndarray) -> np.ndarray | None:
    """Reference outputs from Core ML on the host: only possible on macOS; None elsewhere."""
    if platform.system() != "Darwin":
        return None
    import coremltools as ct

    model = ct.models.MLModel(str(artifact))
    spec = model.get_spec()
    in_name = spec.description.input[0].name
    out_name = spec.description.output[0].name
    shape = [int(d) for d in spec.description.input[0].type.multiArrayType.shape] or [1, *x.shape[1:]]
    return np.stack([np.asarray(model.predict({in_name: xi.reshape(shape)})[out_name]).reshape(-1)
                     for xi in x]).astype(np.float32)
