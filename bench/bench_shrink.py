#!/usr/bin/env python3
"""Neuron shrinking on LeNet-300-100 / Fashion-MNIST (issue 13).

    python bench/bench_shrink.py            # reuses finished run folders under runs/

Every run starts from the same dense baseline (runs/lenet300's, trained by the shipped lenet300
recipe). Measured:

- shrink alone: neurons per layer, accuracy, the dense model's file size (.dcz, float32 TFLite)
  and LiteRT latency on the host and the emulated Android device, before and after, for 50% and
  75% of fc1's and fc2's neurons removed (``recipes/lenet300_shrink.toml``, criterion ``norm``),
  and the ``effect`` criterion at 50%;
- shrink + prune + share + code (fc1/fc2 pruned to 90%, or 85%) against prune + share + code
  alone (the lenet300 recipe at 93%, 95% and 96% sparsity): the smallest model.dcz of each
  method that stays within the accuracy budget (0.5, 1.0 and 1.5 points below the dense
  baseline).

Prints JSON (also runs/bench_shrink.json).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_projection_common import (ROOT, bench, cli, dcz_bytes, export_tflite,  # noqa: E402
                                     machine, run, save)

BASELINE = "runs/lenet300/checkpoints/0_baseline.pt"
WEIGHTS = f"model.weights={BASELINE}"
DC_RUNS = {"lenet300 (93%)": ("lenet300", "runs/lenet300", []),
           "lenet300 (96%)": ("lenet300", "runs/lenet300_s96",
                              [WEIGHTS, "stages.0.sparsity=0.96"]),
           "lenet300 (95%)": ("lenet300", "runs/lenet300_s95",
                              [WEIGHTS, "stages.0.sparsity=0.95"])}
SHRINK_RUNS = {"shrink 50% + DC": ("lenet300_shrink", "runs/lenet300_shrink", [WEIGHTS]),
               "shrink 75% + DC": ("lenet300_shrink", "runs/lenet300_shrink75",
                                   [WEIGHTS, "stages.0.fraction=0.75"]),
               "shrink 50% (effect) + DC": ("lenet300_shrink", "runs/lenet300_shrink_effect",
                                            [WEIGHTS, "stages.0.criterion=effect"]),
               "shrink 50% + DC (85%)": ("lenet300_shrink", "runs/lenet300_shrink_p85",
                                         [WEIGHTS, "stages.1.sparsity=0.85"])}


def dense_file(checkpoint: str, kwargs: dict, out: Path) -> Path:
    """A dense .dcz of a checkpoint (``deepcompress pack``), recording the widths it has."""
    args = ["pack", checkpoint, "--model", "lenet300", "--out", str(out), "--json"]
    if kwargs:
        args += ["--model-kwargs", json.dumps(kwargs)]
    cli(args)
    return out


def measure(dcz: Path, variant: str) -> dict:
    tflite = dcz.with_suffix(f".{variant}.tflite")
    exported = export_tflite(dcz, tflite, input_shape="1,28,28", variant=variant)
    return {"dcz_bytes": dcz.stat().st_size, "tflite": exported, "latency": bench(tflite)}


def main() -> int:
    start = machine()
    reports = {label: run(recipe, ROOT / out, sets)
               for label, (recipe, out, sets) in {**DC_RUNS, **SHRINK_RUNS}.items()}
    dense_acc = reports["lenet300 (93%)"]["accuracy"]["baseline"]
    folder = ROOT / "runs/shrink_bench"
    folder.mkdir(exist_ok=True)
    # the dense models, before and after shrinking (no pruning): sizes and latency
    dense = {"dense 300-100": (BASELINE, {}, None)}
    for label in ("shrink 50% + DC", "shrink 75% + DC", "shrink 50% (effect) + DC"):
        out = SHRINK_RUNS[label][1]
        widths = reports[label]["stages"]["1_shrink"]["model_kwargs"]
        dense[label.replace(" + DC", " (dense)")] = (f"{out}/checkpoints/1_shrink.pt", widths,
                                                    reports[label]["accuracy"]["stages"]["1_shrink"])
    alone = {}
    for label, (checkpoint, kwargs, acc) in dense.items():
        name = label.replace(" ", "_").replace("%", "").replace("(", "").replace(")", "")
        dcz = dense_file(checkpoint, kwargs, folder / f"{name}.dcz")
        alone[label] = {"widths": kwargs.get("hidden", [300, 100]),
                        "accuracy": dense_acc if acc is None else acc,
                        **measure(dcz, "float32")}
    combined = {}
    for label, report in reports.items():
        out = ({**DC_RUNS, **SHRINK_RUNS}[label])[1]
        combined[label] = {"accuracy": report["accuracy"]["final"],
                           "dcz_bytes": dcz_bytes(ROOT / out),
                           "widths": [row["shape"][0] for row in report["layers"]][:2],
                           **{k: v for k, v in measure(ROOT / out / "model.dcz",
                                                       "sparse-float16").items()
                              if k != "dcz_bytes"}}
    budgets = {}
    for points in (0.5, 1.0, 1.5):
        floor = dense_acc - points / 100
        best = {}
        for method, labels in (("prune + share + code", DC_RUNS), ("shrink + prune + share + code",
                                                                     SHRINK_RUNS)):
            ok = [(combined[lab]["dcz_bytes"], lab) for lab in labels
                  if combined[lab]["accuracy"] >= floor]
            best[method] = ({"run": min(ok)[1], "dcz_bytes": min(ok)[0],
                             "accuracy": combined[min(ok)[1]]["accuracy"]} if ok else None)
        budgets[f"within {points} pt ({floor:.4f})"] = best
    result = {**start, "load_average_end": machine()["load_average"],
              "dense_accuracy": dense_acc,
              "commands": {label: f"deepcompress run {r} --out {o} " + " ".join(
                  f"--set {s}" for s in sets) for label, (r, o, sets) in
                  {**DC_RUNS, **SHRINK_RUNS}.items()},
              "shrink_alone": alone, "compressed": combined, "budgets": budgets}
    save("bench_shrink", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
