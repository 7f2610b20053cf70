#!/usr/bin/env python3
"""Accuracy against shipped bytes for every method of the project, on one chart (issue 13).

    python bench/bench_pareto.py [--extra LABEL=RUN_DIR ...]

Reads the finished runs the other issue-13 benchmarks leave under runs/ (run bench_projection,
bench_shrink and bench_transfer first; missing ones are skipped and listed): the dense
LeNet-300-100, Deep Compression, neuron shrinking (alone and followed by Deep Compression),
knowledge transfer to a small student, and ProjectionNet (every sweep point and the shipped
recipe). Shipped bytes are model.dcz's size (dense models: their float32 weights). Draws each
method's points and the Pareto frontier (the best accuracy at each size or below) into
docs/pareto.png; prints JSON (also runs/bench_pareto.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_projection_common import ROOT, machine, save  # noqa: E402

RUNS = {  # method -> {label: run folder}
    "Deep Compression": {"LeNet-300-100, 93%": "runs/lenet300",
                         "LeNet-300-100, 95%": "runs/lenet300_s95",
                         "LeNet-300-100, 96%": "runs/lenet300_s96",
                         "LeNet-5": "runs/lenet5"},
    "shrink + Deep Compression": {"50%, norm": "runs/lenet300_shrink",
                                  "75%, norm": "runs/lenet300_shrink75",
                                  "50%, effect": "runs/lenet300_shrink_effect",
                                  "50%, norm, 85% sparse": "runs/lenet300_shrink_p85"},
    "transfer (student 32-16) + Deep Compression": {
        **{f"with teacher, seed {i}": f"runs/student_with_teacher_s{i}" for i in range(3)},
        **{f"labels only, seed {i}": f"runs/student_labels_only_s{i}" for i in range(3)}},
    "transfer (student 128-64) + Deep Compression": {
        **{f"with teacher, seed {i}": f"runs/student_h128-64_with_teacher_s{i}" for i in range(3)},
        **{f"labels only, seed {i}": f"runs/student_h128-64_labels_only_s{i}"
           for i in range(3)}},
    "ProjectionNet + Deep Compression": {"shipped 60x10": "runs/projectionnet",
                                         "60x10, no trainer": "runs/projectionnet_alone"},
}


def _report(folder: str) -> dict | None:
    path = ROOT / folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _float32_bytes(widths: list[int]) -> int:
    """A LeNet-300-100-shaped MLP's weights and biases in float32 (784 inputs, 10 classes)."""
    sizes = [784, *widths, 10]
    return 4 * sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def collect(extra: dict[str, str]) -> tuple[list[dict], list[str]]:
    points, missing = [], []
    for method, runs in {**RUNS, "other": extra}.items():
        for label, folder in runs.items():
            report = _report(folder)
            if report is None:
                missing.append(folder)
                continue
            points.append({"method": method, "label": label, "run": folder,
                           "bytes": report["compressed_bytes"],
                           "accuracy": report["accuracy"]["final"]})
    dc = _report("runs/lenet300")
    if dc is not None:
        points.append({"method": "dense float32", "label": "LeNet-300-100", "run": "runs/lenet300",
                       "bytes": dc["dense_bytes"], "accuracy": dc["accuracy"]["baseline"]})
    shrink = ROOT / "runs/bench_shrink.json"
    if shrink.is_file():
        for label, row in json.loads(shrink.read_text())["shrink_alone"].items():
            if "300-100" not in label:     # float32 weights, as the dense point
                points.append({"method": "shrink alone (dense)", "label": label,
                               "run": "runs/shrink_bench", "bytes": _float32_bytes(row["widths"]),
                               "accuracy": row["accuracy"]})
    else:
        missing.append("runs/bench_shrink.json")
    sweep = ROOT / "runs/sweep_fmnist/sweep.json"
    if sweep.is_file():
        for p in json.loads(sweep.read_text())["points"]:
            fc = f" + FC {'-'.join(map(str, p['hidden']))}" if p["hidden"] else ""
            points.append({"method": "ProjectionNet sweep", "label": f"{p['T']}x{p['d']}{fc}",
                           "run": p["run"], "bytes": p["model_bits"] // 8, "accuracy": p["value"]})
    else:
        missing.append("runs/sweep_fmnist/sweep.json")
    return points, missing


def frontier(points: list[dict]) -> list[dict]:
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p["bytes"], -p["accuracy"])):
        if p["accuracy"] > best:
            best = p["accuracy"]
            out.append(p)
    return out


def plot(points: list[dict], front: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    markers = "os^Dvp*hX<>"
    for i, method in enumerate(dict.fromkeys(p["method"] for p in points)):
        group = [p for p in points if p["method"] == method]
        ax.scatter([p["bytes"] for p in group], [100 * p["accuracy"] for p in group],
                   marker=markers[i % len(markers)], s=40, label=method, zorder=3)
        for p in group:
            ax.annotate(p["label"], (p["bytes"], 100 * p["accuracy"]), fontsize=6,
                        textcoords="offset points", xytext=(4, 3))
    ax.step([p["bytes"] for p in front], [100 * p["accuracy"] for p in front], where="post",
            color="black", alpha=0.4, linewidth=1, label="Pareto frontier")
    ax.set_xscale("log")
    ax.set_xlabel("shipped bytes (model.dcz; dense: float32 weights)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("Accuracy against shipped bytes, every method")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=RUN_DIR")
    args = ap.parse_args()
    extra = dict(e.split("=", 1) for e in args.extra)
    points, missing = collect(extra)
    front = frontier(points)
    plot(points, front, ROOT / "docs/pareto.png")
    result = {**machine(), "points": sorted(points, key=lambda p: p["bytes"]),
              "frontier": [f"{p['method']}: {p['label']}" for p in front], "missing": missing,
              "plot": "docs/pareto.png"}
    save("bench_pareto", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
