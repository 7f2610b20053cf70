#!/usr/bin/env python3
"""Device-side LiteRT runner: pushed as-is to devices that have Python (Linux boards, the emulated
device) and run as a child process on the host.

Self-contained on purpose: stdlib + numpy + ai_edge_litert only, no import from deepcompress.
It loads a .tflite, warms up, times each ``invoke()`` with a monotonic clock and prints ONE line,
``DEEPCOMPRESS_RESULT {json}``, with the schema ``deepcompress.runner/1`` that the iOS BenchHost
app writes too:

  init_ms        interpreter construction + allocate_tensors
  first_ms       the first invoke (first warm-up), or null without warm-up
  latencies_ms   every timed run, in order
  peak_memory_kb VmHWM of this process for the whole run, the Python interpreter, numpy and the
                 runtime included (null where there is no /proc)
  model_memory_kb the model's own peak: this process's peak while the model is loaded and run
                 minus its resident memory just before (the runtime already imported), with the
                 peak reset there through /proc/self/clear_refs; null where that cannot be read.
                 It includes what loading a first model sets up in the runtime (about 3 MB for
                 LiteRT with XNNPACK on x86-64), which an app pays once too

With ``--eval-input X.npy --eval-output Y.npy`` it also runs every example of X through the model
(batched as the model's input allows) and saves the first output tensor for all of them.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

SCHEMA = "deepcompress.runner/1"
RESULT_MARKER = "DEEPCOMPRESS_RESULT "


def proc_status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (VmHWM = peak resident set size)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0: ``5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _quantize(np, x, detail):
    """Float data into an integer input tensor with that tensor's (scale, zero point)."""
    scale, zero = detail.get("quantization", (0.0, 0))
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(np, y, detail):
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def run_batch(interpreter, x):
    """Run every example of ``x`` (N, ...) through a single-input model; return output 0 (N, ...).

    The model's input has a fixed batch size B (1 for most exports); examples go B at a time and a
    last partial batch is padded, its padding dropped from the result.
    """
    import numpy as np

    (inp,) = interpreter.get_input_details()
    out = interpreter.get_output_details()[0]
    shape = [int(d) for d in inp["shape"]]
    batch = max(shape[0], 1)
    per_example = int(np.prod(shape[1:]))
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if x.shape[1] != per_example:
        raise ValueError(f"eval examples hold {x.shape[1]} values each but the model input "
                         f"{shape} takes {per_example}")
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, per_example), np.float32)])
        interpreter.set_tensor(inp["index"], _quantize(np, chunk.reshape(shape), inp))
        interpreter.invoke()
        y = _dequantize(np, interpreter.get_tensor(out["index"]), out)
        results.append(y.reshape(batch, -1)[:n])
    return np.concatenate(results) if results else np.zeros((0, 0), np.float32)


def _random_inputs(np, details, seed):
    rng = np.random.default_rng(seed)
    feed = []
    for d in details:
        shape = [max(int(s), 1) for s in d["shape"]]
        if np.issubdtype(d["dtype"], np.floating):
            arr = rng.random(shape, dtype=np.float32).astype(d["dtype"])
        elif d["dtype"] == np.bool_:
            arr = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            # integer inputs are ids, indices and masks: 0 or 1, valid for any embedding table
            # of two rows or more (a negative id, or one past a small vocabulary, fails the
            # lookup) and for an attention mask; the timing does not depend on which ids
            arr = rng.integers(0, 2, shape).astype(d["dtype"])
        feed.append((d["index"], arr))
    return feed


def measure(args) -> dict:
    import os

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # DEEPCOMPRESS_LITERT_XNNPACK=0: TFLite's builtin kernels only, without the default delegate
    # (XNNPACK). Read from the environment, which the host device's runner inherits.
    kernels = ({"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
               if os.environ.get("DEEPCOMPRESS_LITERT_XNNPACK") == "0" else {})
    np.random.default_rng(args.seed)   # numpy.random loads lazily: not the model's memory
    # the process without the model: everything imported, nothing loaded; its peak so far kept
    peak_before_kb, rss_before_kb = proc_status_kb("VmHWM"), proc_status_kb("VmRSS")
    peak_reset = reset_peak()
    t0 = time.perf_counter_ns()
    interpreter = Interpreter(model_path=args.model, num_threads=args.threads, **kernels)
    interpreter.allocate_tensors()
    init_ms = (time.perf_counter_ns() - t0) / 1e6

    details = interpreter.get_input_details()
    for index, arr in _random_inputs(np, details, args.seed):
        interpreter.set_tensor(index, arr)

    def timed_invoke() -> float:
        start = time.perf_counter_ns()
        interpreter.invoke()
        return (time.perf_counter_ns() - start) / 1e6

    warmup_ms = [timed_invoke() for _ in range(args.warmup)]
    latencies = [timed_invoke() for _ in range(args.runs)]
    # read before --eval loads its examples, which are not the model's
    peak_with_model_kb = proc_status_kb("VmHWM")

    result = {
        "schema": SCHEMA, "runner": "litert-python",
        "init_ms": init_ms,
        "first_ms": warmup_ms[0] if warmup_ms else None,
        "warmup": args.warmup, "warmup_ms": warmup_ms,
        "threads": args.threads,
        "latencies_ms": latencies,
        "inputs": [{"name": d["name"], "shape": [int(s) for s in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name} for d in details],
        "runtime": {"python": platform.python_version(), "numpy": np.__version__,
                    "ai_edge_litert": _litert_version()},
    }
    if args.eval_input:
        x = np.load(args.eval_input, allow_pickle=False)
        t = time.perf_counter_ns()
        y = run_batch(interpreter, x)
        np.save(args.eval_output, y, allow_pickle=False)
        result["eval"] = {"count": int(len(x)), "output_shape": list(y.shape),
                          "seconds": (time.perf_counter_ns() - t) / 1e9}
    # Read last: VmHWM is the high-water mark since the reset; the whole run's is the larger of
    # that and the peak before the reset.
    peaks = [kb for kb in (peak_before_kb, proc_status_kb("VmHWM")) if kb is not None]
    result["peak_memory_kb"] = max(peaks) if peaks else None
    result["memory_source"] = "VmHWM" if result["peak_memory_kb"] is not None else None
    measured = peak_reset and peak_with_model_kb is not None and rss_before_kb is not None
    result["model_memory_kb"] = max(peak_with_model_kb - rss_before_kb, 0) if measured else None
    result["model_memory_source"] = ("VmHWM with the model loaded and run minus VmRSS before it "
                                     "(peak reset by clear_refs)") if measured else None
    return result


def _litert_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("ai-edge-litert")
    except Exception:  # metadata may be missing on a hand-copied install
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Time a .tflite with LiteRT; print one JSON line.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-input")
    parser.add_argument("--eval-output")
    args = parser.parse_args(argv)
    if bool(args.eval_input) != bool(args.eval_output):
        parser.error("--eval-input and --eval-output go together")
    try:
        result = measure(args)
    except ImportError as exc:
        result, code = {"schema": SCHEMA, "error": f"cannot import the runtime ({exc}); "
                        "install ai-edge-litert and numpy"}, 3
    except Exception as exc:  # report any runtime failure as JSON so the harness shows its cause
        result, code = {"schema": SCHEMA, "error": f"{type(exc).__name__}: {exc}"}, 1
    else:
        code = 0
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
