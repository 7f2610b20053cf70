#!/usr/bin/env python3
"""ProjectionNet on Fashion-MNIST (issue 13): accuracy against bits, next to its trainer.

    python bench/bench_projection.py [--seeds 0,1]    # reuses finished run folders under runs/

1. ``deepcompress sweep`` over T in {8, 20, 60, 100} x d = 10, without and with an FC layer of
   256, the shipped recipe's stages at every point; LeNet-300-100's Deep Compression run marked.
2. The shipped recipe (``recipes/projectionnet.toml``) and two variants of its joint loss: the
   projection network on the labels alone (λ1 = λ2 = 0: no trainer), and the distillation term
   also training the trainer (``distill_trains_trainer = true``); for every ``--seeds`` (recipe
   seed: initialisation and data order; the hyperplanes' seed is the model's and stays 0) the
   shipped recipe, the no-trainer variant and the trainer in the joint training only (the later
   stages on the labels alone).
3. The shipped model exported: TFLite with the hashing as LSH_PROJECTION (default) and as its
   matrix, Core ML; both TFLite files measured on the host and the emulated Android device.

Goals: the shipped recipe >= 80% with a model >= 20x smaller than its trainer (bits), and a
second setting >= 85%. Prints JSON (also runs/bench_projection.json); exit 1 if a goal is missed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_projection_common import (ROOT, bench, cli, export_coreml, export_tflite,  # noqa: E402
                                     machine, run, save)

SWEEP = ["sweep", "projectionnet", "--out", "runs/sweep_fmnist", "--T", "8,20,60,100", "--d",
         "10", "--hidden", "", "--hidden", "256", "--mark", "runs/lenet300", "--json", "-q"]


NO_TRAINER = ["stages.0.trainer_loss=0", "stages.0.distill=0",   # no teacher anywhere: its
              "stages.1.distill=0", "stages.3.distill=0"]       # trainer stays untrained
JOINT_ONLY = ["stages.1.distill=0", "stages.3.distill=0"]       # prune, fine-tune on labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="recipe seeds for shipped vs no trainer")
    seeds = [int(x) for x in ap.parse_args().seeds.split(",")]
    start = machine()
    run("lenet300", ROOT / "runs/lenet300")                 # the Deep Compression mark
    sweep = json.loads(cli(SWEEP, timeout=6 * 3600))
    shutil.copy(ROOT / "runs/sweep_fmnist/sweep.png", ROOT / "docs/projection_sweep.png")
    shipped = run("projectionnet", ROOT / "runs/projectionnet")
    alone = run("projectionnet", ROOT / "runs/projectionnet_alone", NO_TRAINER)
    by_seed = {0: (shipped, alone)}
    for seed in (x for x in seeds if x != 0):
        by_seed[seed] = (run("projectionnet", ROOT / f"runs/projectionnet_s{seed}",
                             [f"seed={seed}"]),
                         run("projectionnet", ROOT / f"runs/projectionnet_alone_s{seed}",
                             [*NO_TRAINER, f"seed={seed}"]))
    joint_only = {seed: run("projectionnet", ROOT / f"runs/projectionnet_joint_only_s{seed}",
                            [*JOINT_ONLY, f"seed={seed}"]) for seed in by_seed}
    both = run("projectionnet", ROOT / "runs/projectionnet_distill_trains_trainer",
               ["stages.0.distill_trains_trainer=true"])
    dcz = ROOT / "runs/projectionnet/model.dcz"
    exports = {"tflite_lsh": export_tflite(dcz, ROOT / "runs/projectionnet/model_lsh.tflite"),
               "tflite_matmul": export_tflite(dcz, ROOT / "runs/projectionnet/model_matmul.tflite",
                                              projection="matmul"),
               "coreml": export_coreml(dcz, ROOT / "runs/projectionnet/model.mlpackage")}
    latency = {"tflite_lsh": bench(ROOT / "runs/projectionnet/model_lsh.tflite"),
               "tflite_matmul": bench(ROOT / "runs/projectionnet/model_matmul.tflite")}

    def row(report: dict) -> dict:
        p = report["projection"]
        return {"accuracy": p["accuracy"], "after_joint_training":
                report["accuracy"]["stages"]["1_projection"], "model_bits": p["model_bits"],
                "float32_bits": p["float32_bits"], "trainer_accuracy": p["trainer_accuracy"],
                "trainer_bits": p["trainer_bits"], "ratio": p["ratio"],
                "seconds": report["seconds"]["total"]}

    proj = shipped["projection"]
    best_other = max((p for p in sweep["points"] if not (p["T"] == 60 and p["d"] == 10
                                                          and not p["hidden"])),
                     key=lambda p: p["value"])
    checks = {"shipped_accuracy_>=_0.80": proj["accuracy"] >= 0.80,
              "shipped_>=_20x_smaller_than_trainer": proj["ratio"] >= 20,
              "shipped_float32_>=_20x_smaller": proj["trainer_bits"] / proj["float32_bits"] >= 20,
              "second_setting_>=_0.85": best_other["value"] >= 0.85}
    result = {**start, "load_average_end": machine()["load_average"],
              "commands": ["deepcompress " + " ".join(SWEEP),
                           "deepcompress run projectionnet --out runs/projectionnet",
                           "... --set stages.0.trainer_loss=0 --set stages.0.distill=0 "
                           "--set stages.1.distill=0 --set stages.3.distill=0",
                           "... --set stages.0.distill_trains_trainer=true"],
              "sweep": sweep["points"], "marks": sweep["marks"],
              "shipped": row(shipped), "no_trainer": row(alone),
              "distill_trains_trainer": row(both),
              "trainer_effect": [{"seed": seed, "shipped": row(a), "no_trainer": row(b),
                                  "trainer_in_joint_training_only": row(joint_only[seed])}
                                 for seed, (a, b) in sorted(by_seed.items())],
              "exports": exports, "latency": latency,
              "best_other_setting": best_other, "checks": checks, "ok": all(checks.values())}
    save("bench_projection", result)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
