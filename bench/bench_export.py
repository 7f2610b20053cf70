#!/usr/bin/env python3
"""Exports of a compressed model: bytes of every artifact next to the .dcz, and LiteRT latency.

    python bench/bench_export.py runs/lenet300 runs/lenet5            # DIR/model.dcz from 'deepcompress run'
    python bench/bench_export.py --synthetic lenet300 --synthetic lenet5   # no run yet: see below

For each model:
- sizes (bytes on disk, and zipped: deflate at level 9, a real zip) of the .dcz; the Core ML
  package compressed for iOS 18 (sparse + our LUTs in one op) and for iOS 16 (per layer sparse or
  palettized); the dense Core ML packages (fp32 and fp16 weights); every TFLite variant, the dense
  float32 one first. Core ML's goal: compressed package >= 20x smaller than the dense fp32 one.
- validation: Core ML weights decoded from each saved package == ours in fp16; each TFLite
  variant's accuracy on the test set (whole by default) against PyTorch's, largest logit difference.
- LiteRT latency of each TFLite variant on this machine: single-example invocations, 1 thread,
  default delegates (XNNPACK, as an app gets them) and builtin kernels only; ``--runs`` timed runs
  per variant after ``--warmup``, measured in interleaved rounds so that load on the machine hits
  every variant alike. The median is reported; goal: no compressed variant slower than float32.

``--synthetic NAME`` builds NAME untrained (seed 0) and compresses it with the pipeline's own prune
and share functions at the paper's per-layer densities and bit widths (LeNet-300-100: 8/9/26% kept,
6 bits; LeNet-5: 66/12/8/19% kept, 8 bits conv / 5 bits FC). Its sizes are representative; its
accuracy is chance (~10%), which is what the validation then compares. Results are labelled.

Prints a table; ``--json FILE`` also writes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from android_export import (VARIANTS, build_variant, convert_float32, evaluate_tflite,  # noqa: E402
                            torch_logits)
from android_export._evaluate import (invoke_times_us, latency_summary,  # noqa: E402
                                      timing_interpreter)
from dccore.artifacts import artifact_size  # noqa: E402
from exporters import compressed_layers, example_input  # noqa: E402
from compression.data import load_split  # noqa: E402
from compression.models import build_model  # noqa: E402
from ios_export import export_coreml, verify_coreml  # noqa: E402

PAPER = {   # layer -> (fraction kept, bits): Han et al. 2016, Tables 2 and 3
    "lenet300": {"fc1.weight": (0.08, 6), "fc2.weight": (0.09, 6), "fc3.weight": (0.26, 6)},
    "lenet5": {"conv1.weight": (0.66, 8), "conv2.weight": (0.12, 8), "fc1.weight": (0.08, 5),
               "fc2.weight": (0.19, 5)},
}
GOAL_COREML_RATIO = 20.0
LATENCY_NOISE = 0.05   # a variant counts as slower only beyond 5% over float32's median


def synthetic(name: str) -> tuple[torch.nn.Module, dict, int]:
    """(model, meta, .dcz bytes): NAME compressed at the paper's densities, packed like a run."""
    import dcz as container
    from compression.prune import magnitude_mask
    from compression.share import share_layer
    torch.manual_seed(0)
    model = build_model(name).eval()
    for layer, (kept, bits) in PAPER[name].items():
        weight = model.get_parameter(layer)
        mask = magnitude_mask(weight.data, sparsity=1 - kept)
        centroids, assign, mask = share_layer(weight.data, mask, bits, "linear", 30)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    meta = {"model": {"name": name, "kwargs": {}, "input_shape": [1, 28, 28]}, "data": {"root": None}}
    with tempfile.TemporaryDirectory() as tmp:
        report = container.pack(model.state_dict(), Path(tmp) / "model.dcz", meta=meta,
                                compressed={n: {"bits": b} for n, (_, b) in PAPER[name].items()})
        dcz = artifact_size(report.path)
    return model, meta, dcz


def sizes_row(label: str, path: Path, dense_bytes: int | None = None, **extra: Any) -> dict:
    size = artifact_size(path)
    row = {"artifact": label, "bytes": size.bytes, "zipped_bytes": size.zipped_bytes, **extra}
    if dense_bytes:
        row["dense_over_bytes"] = round(dense_bytes / size.bytes, 2)
    return row


def latencies(paths: dict[str, Path], runs: int, warmup: int, xnnpack: bool, rounds: int = 5) -> dict:
    """Median latency (us) per variant, interleaving ``rounds`` blocks of runs across variants."""
    its = {v: timing_interpreter(p, threads=1, xnnpack=xnnpack, warmup=warmup)
           for v, p in paths.items()}
    times: dict[str, list[float]] = {v: [] for v in its}
    per_round = -(-runs // rounds)
    for _ in range(rounds):
        for v, it in its.items():
            times[v] += invoke_times_us(it, per_round)
    return {v: {**{k: round(x, 2) for k, x in latency_summary(t).items()}, "runs": len(t)}
            for v, t in times.items()}


def bench(label: str, model: torch.nn.Module, meta: dict, dcz_size: Any, names: list[str],
          args: argparse.Namespace, work: Path) -> dict:
    shape = meta["model"]["input_shape"]
    layers = compressed_layers(model, names)
    split = load_split("test", root=args.data or (meta.get("data") or {}).get("root"), limit=args.limit)
    reference = torch_logits(model, split.images)
    state = model.state_dict()
    ours = {n: state[n].numpy() for n in layers}
    result: dict[str, Any] = {"model": label, "dcz": dcz_size.to_dict(), "test_examples": len(split)}

    coreml = []
    dense32 = export_coreml(model, shape, work / "dense_fp32.mlpackage", precision="fp32", method="none").path
    dense_bytes = artifact_size(dense32).bytes
    coreml.append(sizes_row("Core ML dense fp32", dense32))
    dense16 = export_coreml(model, shape, work / "dense_fp16.mlpackage", precision="fp16", method="none").path
    coreml.append(sizes_row("Core ML dense fp16", dense16, dense_bytes))
    for target in ("iOS18", "iOS16"):
        res = export_coreml(model, shape, work / f"{target}.mlpackage", layers=layers, target=target)
        check = verify_coreml(res.path, ours)
        coreml.append(sizes_row(f"Core ML {target} compressed", res.path, dense_bytes,
                                weights_match=check.weights_match, all_compressed=check.all_compressed,
                                storage={n: p.method + (f", {p.lut_entries}-entry LUT" * bool(p.lut_entries))
                                         for n, p in res.layers.items()}))
    result["coreml"] = coreml
    ios18 = next(r for r in coreml if r["artifact"] == "Core ML iOS18 compressed")
    result["coreml_goal"] = {"goal": f">= {GOAL_COREML_RATIO:g}x smaller than dense fp32",
                             "ratio": ios18["dense_over_bytes"],
                             "zipped_ratio": round(coreml[0]["zipped_bytes"] / ios18["zipped_bytes"], 2),
                             "met": ios18["dense_over_bytes"] >= GOAL_COREML_RATIO}

    float32 = convert_float32(model, example_input(shape))
    paths, tflite = {}, []
    for variant in VARIANTS:
        path = paths[variant] = work / f"{variant}.tflite"
        path.write_bytes(build_variant(float32, variant))
        ev = evaluate_tflite(path, model, split.images, split.labels.numpy(), reference)
        tflite.append(sizes_row(f"TFLite {variant}", path, len(float32) if variant != "float32" else None,
                                accuracy=round(ev.accuracy, 2), torch_accuracy=round(ev.torch_accuracy, 2),
                                max_abs_diff=float(f"{ev.max_abs_diff:.3g}"), within_0_1_pt=ev.ok))
    result["tflite"] = tflite
    result["latency_xnnpack"] = latencies(paths, args.runs, args.warmup, xnnpack=True)
    result["latency_builtin"] = latencies(paths, args.runs, args.warmup, xnnpack=False)
    result["latency_goal"] = {}
    for kernels in ("xnnpack", "builtin"):
        lat = result[f"latency_{kernels}"]
        base = lat["float32"]["median_us"]
        ratios = {v: round(r["median_us"] / base, 3) for v, r in lat.items() if v != "float32"}
        result["latency_goal"][kernels] = {
            "median_over_float32": ratios,
            # medians of interleaved runs still move a few % with the machine's load
            "slower_beyond_noise": sorted(v for v, x in ratios.items() if x > 1 + LATENCY_NOISE)}
    return result


def print_result(r: dict) -> None:
    print(f"\n== {r['model']}  (.dcz {r['dcz']['bytes']:,} B, zipped {r['dcz']['zipped_bytes']:,} B; "
          f"{r['test_examples']:,} test examples)")
    print(f"{'artifact':30s} {'bytes':>10s} {'zipped':>10s} {'dense/x':>8s}  validation")
    for row in r["coreml"]:
        val = "" if "weights_match" not in row else \
            f"weights match {row['weights_match']}, all compressed {row['all_compressed']}"
        print(f"{row['artifact']:30s} {row['bytes']:>10,} {row['zipped_bytes']:>10,} "
              f"{row.get('dense_over_bytes', ''):>8}  {val}")
    for row in r["tflite"]:
        print(f"{row['artifact']:30s} {row['bytes']:>10,} {row['zipped_bytes']:>10,} "
              f"{row.get('dense_over_bytes', ''):>8}  acc {row['accuracy']:.2f} vs torch "
              f"{row['torch_accuracy']:.2f}, max|diff| {row['max_abs_diff']:.2e}")
    print(f"Core ML goal {r['coreml_goal']}")
    print(f"{'LiteRT latency (us, median)':30s} {'XNNPACK':>10s} {'builtin':>10s}")
    for v in r["latency_xnnpack"]:
        xnn, builtin = r["latency_xnnpack"][v]["median_us"], r["latency_builtin"][v]["median_us"]
        print(f"{v:30s} {xnn:>10.1f} {builtin:>10.1f}")
    print(f"latency goal {r['latency_goal']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run folders holding model.dcz")
    ap.add_argument("--synthetic", action="append", default=[], choices=sorted(PAPER),
                    help="bench an untrained model compressed at the paper's densities instead")
    ap.add_argument("--runs", dest="n_runs", type=int, default=500, help="timed runs per variant (>= 200)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--limit", type=int, help="test examples for validation (default: all 10,000)")
    ap.add_argument("--data", help="IDX dataset folder (default: the run's, then Fashion-MNIST)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    args.runs_list, args.runs = args.runs, args.n_runs
    if not args.runs_list and not args.synthetic:
        ap.error("give run folders or --synthetic NAME")
    if args.runs < 200:
        ap.error("--runs must be at least 200")
    from deepcompress.loading import model_from_dcz

    results = []
    for name in args.synthetic:
        model, meta, dcz = synthetic(name)
        label = f"SYNTHETIC {name} (untrained, paper densities)"
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench(label, model, meta, dcz, list(PAPER[name]), args, Path(tmp)))
        print_result(results[-1])
    for run in args.runs_list:
        model, dcz = model_from_dcz(run / "model.dcz")
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench(str(run), model, dcz.meta, artifact_size(run / "model.dcz"),
                                 list(dcz.layers), args, Path(tmp)))
        print_result(results[-1])
    record = {"date": date.today().isoformat(),
              "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
              "command": " ".join(sys.argv), "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
