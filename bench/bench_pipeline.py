#!/usr/bin/env python3
"""Run a shipped recipe end to end and check it against the issue's goals.

    python bench/bench_pipeline.py lenet300            # goal: >=92% pruned, <=0.5 pt loss, <=180 s
    python bench/bench_pipeline.py lenet5              # goal: >=90% pruned, <=0.5 pt loss, <=1200 s

Prints one JSON object (the goals, what was measured, pass/fail) and exits 1 if a goal is missed.
The run folder (runs/NAME by default) keeps report.json, model.dcz and the checkpoints.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

GOALS = {
    "lenet300": {"min_sparsity": 0.92, "max_loss_points": 0.5, "max_seconds": 180, "min_baseline": 0.88},
    "lenet5": {"min_sparsity": 0.90, "max_loss_points": 0.5, "max_seconds": 1200},
    "mobilenet_tiny": {},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=sorted(GOALS))
    ap.add_argument("--out", help="run folder (default runs/RECIPE)")
    args = ap.parse_args()
    out = Path(args.out or f"runs/{args.recipe}")
    cmd = [sys.executable, "-m", "compression", "run", args.recipe, "--out", str(out), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    report = json.loads(proc.stdout)
    acc = report["accuracy"]
    loss_points = (acc["baseline"] - acc["final"]) * 100
    goals = GOALS[args.recipe]
    checks = {}
    if "min_sparsity" in goals:
        checks["sparsity"] = report["sparsity"] >= goals["min_sparsity"]
    if "max_loss_points" in goals:
        checks["accuracy_loss"] = loss_points <= goals["max_loss_points"]
    if "max_seconds" in goals:
        checks["wall_seconds"] = wall <= goals["max_seconds"]
    if "min_baseline" in goals:
        checks["baseline"] = acc["baseline"] >= goals["min_baseline"]
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()} {platform.system()}, "
        f"{__import__('os').cpu_count()} cores", "command": " ".join(cmd[1:]),
        "recipe": args.recipe, "goals": goals,
        "measured": {
            "baseline_accuracy": acc["baseline"], "final_accuracy": acc["final"],
            "accuracy_loss_points": round(loss_points, 3), "sparsity": report["sparsity"],
            "wall_seconds": round(wall, 1), "seconds": report["seconds"],
            "dense_bytes": report.get("dense_bytes"), "compressed_bytes": report.get("compressed_bytes"),
            "compression_ratio": report.get("compression_ratio"),
            "stage_ratios": report.get("stage_ratios"),
            "layers": [{k: r[k] for k in ("name", "parameters", "nonzeros", "sparsity", "bits", "distinct_values")}
                       for r in report["layers"]],
        },
        "checks": checks, "pass": all(checks.values()),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
