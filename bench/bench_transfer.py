#!/usr/bin/env python3
"""Knowledge transfer on Fashion-MNIST (issue 13): a student's accuracy with and without its
teacher, the same epochs.

    python bench/bench_transfer.py [--seeds 0,1,2] [--hidden 32,16]   # reuses finished runs/ folders

The student is LeNet-300-100 with 32 and 16 neurons (26K weights); the teacher is the full
LeNet-300-100 trained by the shipped lenet300 recipe (runs/lenet300, 267K weights). Both
variants run ``recipes/lenet300_student.toml``: 20 epochs of the transfer stage (soft 0.9,
T = 4), then prune, share, fine-tune and code with distillation from the teacher; "labels only"
sets ``soft = 0`` and the later stages' ``distill = 0`` (the same epochs, learning rates and
schedule, no teacher anywhere); "soft 0.5, T 2" weights the labels as much as the teacher at a
lower temperature. ``--hidden 128,64`` runs a wider student (the teacher and epochs unchanged).
Prints JSON (also runs/bench_transfer.json, or runs/bench_transfer_h128-64.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_projection_common import ROOT, dcz_bytes, machine, run, save  # noqa: E402

TEACHER = "runs/lenet300/checkpoints/0_baseline.pt"     # the recipe's transfer.weights
VARIANTS = {  # label -> (run folder stem, --set overrides)
    "with teacher": ("with_teacher", []),
    "with teacher, soft 0.5, T 2": ("with_teacher_soft05_T2",
                                    ["stages.0.soft=0.5", "stages.0.temperature=2"]),
    "labels only": ("labels_only",
                    ["stages.0.soft=0", "stages.1.distill=0", "stages.3.distill=0"])}


def teacher_targets(weights: str) -> dict[str, dict]:
    """The teacher's accuracy and mean top probability on the training and test images at the
    temperatures used: how far its soft targets are from the labels, and how often wrong."""
    import torch

    from compression.data import load_split
    from compression.stages.transfer import load_model

    teacher = load_model("lenet300", {}, weights, "teacher")
    out = {}
    for split in ("train", "test"):
        data = load_split(split)
        with torch.no_grad():
            logits = teacher(data.images)
        out[split] = {"accuracy": float((logits.argmax(1) == data.labels).float().mean()),
                      **{f"top_probability_T{t}": float(torch.softmax(logits / t, 1).max(1)
                                                         .values.mean()) for t in (1, 2, 4)}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hidden", default="32,16", help="the student's fc1,fc2 widths")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    hidden = [int(h) for h in args.hidden.split(",")]
    wide = hidden != [32, 16]                # the recipe's own student
    tag = f"_h{'-'.join(map(str, hidden))}" if wide else ""
    width = [f"model.kwargs.hidden=[{','.join(map(str, hidden))}]"] if wide else []
    start = machine()
    teacher = run("lenet300", ROOT / "runs/lenet300")
    rows: dict[str, list[dict]] = {}
    commands = []
    for label, (stem, sets) in VARIANTS.items():
        for seed in seeds:
            out = f"runs/student{tag}_{stem}_s{seed}"
            all_sets = [*width, *sets, f"seed={seed}"]
            commands.append(f"deepcompress run lenet300_student --out {out} "
                            + " ".join(f"--set {s}" for s in all_sets))
            r = run("lenet300_student", ROOT / out, all_sets)
            rows.setdefault(label, []).append({
                "seed": seed, "after_transfer_stage": r["accuracy"]["stages"]["1_transfer"],
                "final": r["accuracy"]["final"], "dcz_bytes": dcz_bytes(ROOT / out),
                "seconds_transfer_stage": r["seconds"]["1_transfer"]})
    summary = {label: {"after_transfer_stage_mean": statistics.mean(
                           x["after_transfer_stage"] for x in xs),
                       "final_mean": statistics.mean(x["final"] for x in xs)}
               for label, xs in rows.items()}
    result = {**start, "load_average_end": machine()["load_average"], "commands": commands,
              "teacher": {"accuracy": teacher["accuracy"]["baseline"], "parameters": 266610,
                          "dense_bytes": teacher["dense_bytes"],
                          "targets": teacher_targets(str(ROOT / TEACHER))},
              "student_hidden": hidden,
              "student_parameters": sum(a * b + b for a, b in zip([784, *hidden],
                                                                  [*hidden, 10])),
              "runs": rows, "summary": summary,
              "gain_points": {label: {k: 100 * (summary[label][k] - summary["labels only"][k])
                                      for k in ("after_transfer_stage_mean", "final_mean")}
                              for label in VARIANTS if label != "labels only"}}
    save(f"bench_transfer{tag}", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
