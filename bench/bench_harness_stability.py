#!/usr/bin/env python3
"""Stability: the spread p90/p50 of 5 repeated benches of the same model on the emulated device.

    nice -n 5 python bench/bench_harness_stability.py [--runs 100] [--repeats 5] [--device emulator]

Each bench is a separate `deepcompress bench --json` call on LeNet-300-100 (.tflite). Reports, per
bench, p50 / p90 / p99 and spread = p90/p50; across benches, the median spread and how far the p50s
are apart (max/min). Prints one JSON object.
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
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="emulator")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_lenet300_tflite(Path(tmp) / "lenet300.tflite")
        benches = []
        with emulated_device(args.device == "emulator"):
            for _ in range(args.repeats):
                _, r = bench_cli(model, args.device, runs=args.runs)
                lat = r["latency_ms"]
                benches.append({k: lat[k] for k in ("p50", "p90", "p99", "mean", "min", "max", "spread")})
    p50s = [b["p50"] for b in benches]
    print(json.dumps({"model": "LeNet-300-100 .tflite (float32)", "device": args.device,
                      "runs": args.runs, "machine": platform.platform(),
                      "spread_median": statistics.median(b["spread"] for b in benches),
                      "spread_max": max(b["spread"] for b in benches),
                      "p50_max_over_min": max(p50s) / min(p50s),
                      "benches": benches}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
