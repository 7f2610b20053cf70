#!/usr/bin/env python3
"""Harness overhead: wall time of a `deepcompress bench` call minus the time spent in inference.

    nice -n 5 python bench/bench_harness_overhead.py [--runs 50] [--repeats 5] [--devices host emulator]

For LeNet-300-100 as .tflite, on the host and on the emulated device (started beforehand, so its
start-up is not counted). Inference = the runner's timed runs + warm-ups (its own clock). The rest
is the harness: process start and imports, connecting, thermal check, pushing the model and the
runner, starting the runner's interpreter, parsing. `harness_seconds` is the part measured inside
the process (from thermal check to result), i.e. without CLI start-up. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from bench_harness_common import bench_cli, emulated_device, make_lenet300_tflite


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--devices", nargs="+", default=["host", "emulator"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_lenet300_tflite(Path(tmp) / "lenet300.tflite")
        report = {"model": "LeNet-300-100 .tflite (float32)", "model_bytes": model.stat().st_size,
                  "runs": args.runs, "repeats": args.repeats, "machine": platform.platform(), "devices": {}}
        with emulated_device("emulator" in args.devices):
            for device in args.devices:
                report["devices"][device] = measure(model, device, args.runs, args.repeats)
    print(json.dumps(report, indent=2))
    return 0


def measure(model: Path, device: str, runs: int, repeats: int) -> dict:
    bench_cli(model, device, runs=3)  # warm the page cache and the device's runner cache
    rows = []
    for _ in range(repeats):
        wall, r = bench_cli(model, device, runs=runs)
        rows.append({"wall_s": wall, "inference_s": r["inference_seconds"],
                     "harness_s": r["harness_seconds"], "push_s": r["push"]["seconds"],
                     "init_ms": r["init_ms"], "p50_ms": r["latency_ms"]["p50"]})
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    return {"median": med, "overhead_s": med["wall_s"] - med["inference_s"],
            "overhead_in_process_s": med["harness_s"] - med["inference_s"], "rows": rows}


if __name__ == "__main__":
    raise SystemExit(main())
