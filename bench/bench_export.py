#!/usr/bin/env python3
"""Exports of a compressed model through every registered exporter: the bytes of each variant next
to the .dcz, its validation, and its latency on this machine.

    python bench/bench_export.py runs/lenet300 runs/lenet5            # DIR/model.dcz from 'deepcompress run'
    python bench/bench_export.py --synthetic lenet300 --synthetic lenet5   # no run yet: see below

For each model and each exporter (``exporters.EXPORTERS``: TFLite, Core ML, ...), every variant the
this bench compares (``variants``: its dense baseline first):
- sizes: bytes on disk and zipped (deflate at level 9, a real zip), and dense baseline / bytes.
  Goals per format (``SIZE_GOALS``): Core ML's default export >= 20x smaller than its dense fp32.
- validation on the test set (whole by default), through the exporter's own ``validate`` with the
  accuracy scorer: accuracy as a fraction, against PyTorch's, the largest output difference; Core
  ML's verdict is the weights decoded from the package.
- latency through ``device_harness``'s host device (the runner ``deepcompress bench --device host``
  uses): single-example invocations, 1 thread, with the default delegates (XNNPACK, as an app gets
  them) and with TFLite's builtin kernels only (``DEEPCOMPRESS_LITERT_XNNPACK=0``); ``--runs``
  timed runs per variant, measured in interleaved rounds so that load on the machine hits every
  variant alike. What the host cannot run (a .mlpackage off a Mac) is listed as not timed, with the
  harness's reason. Goal: no compressed variant's median beyond 5% over its dense baseline's.

``--synthetic NAME`` builds NAME untrained (seed 0) and compresses it with the pipeline's own prune
and share functions at the paper's per-layer densities and bit widths (LeNet-300-100: 8/9/26% kept,
6 bits; LeNet-5: 66/12/8/19% kept, 8 bits conv / 5 bits FC). Its sizes are representative; its
accuracy is chance (~0.1), which is what the validation then compares. Results are labelled.

Prints a table; ``--json FILE`` also writes every figure.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import device_harness  # noqa: E402
from compression.data import load_split  # noqa: E402
from compression.models import build_model  # noqa: E402
from dccore.artifacts import artifact_size  # noqa: E402
from dccore.errors import DeviceError  # noqa: E402
from device_harness.runners import latency_stats  # noqa: E402
from exporters import (EXPORTERS, accuracy_scorer, compressed_layers, first_example,  # noqa: E402
                       torch_outputs)

PAPER = {   # layer -> (fraction kept, bits): Han et al. 2016, Tables 2 and 3
    "lenet300": {"fc1.weight": (0.08, 6), "fc2.weight": (0.09, 6), "fc3.weight": (0.26, 6)},
    "lenet5": {"conv1.weight": (0.66, 8), "conv2.weight": (0.12, 8), "fc1.weight": (0.08, 5),
               "fc2.weight": (0.19, 5)},
}
SIZE_GOALS = {"coreml": 20.0}   # format -> its default export at least this much under its dense one
LATENCY_NOISE = 0.05   # a variant counts as slower only beyond 5% over its dense baseline's median
XNNPACK_ENV = "DEEPCOMPRESS_LITERT_XNNPACK"   # read by device_harness's LiteRT runner


def synthetic(name: str) -> tuple[torch.nn.Module, dict, Any]:
    """(model, meta, .dcz size): NAME compressed at the paper's densities, packed like a run."""
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


@contextlib.contextmanager
def litert_kernels(xnnpack: bool) -> Iterator[None]:
    """Default delegates (XNNPACK) or TFLite's builtin kernels, for the runners started inside."""
    before = os.environ.get(XNNPACK_ENV)
    os.environ[XNNPACK_ENV] = "1" if xnnpack else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(XNNPACK_ENV, None)
        else:
            os.environ[XNNPACK_ENV] = before


def host_latencies(paths: dict[str, Path], runs: int, warmup: int, xnnpack: bool,
                   rounds: int = 5) -> dict[str, dict]:
    """Median (and spread) latency in microseconds per artifact on the host device, interleaving
    ``rounds`` blocks of runs across artifacts; an artifact the host cannot run is reported with
    the harness's reason instead."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    untimed: dict[str, str] = {}
    per_round = -(-runs // rounds)
    with litert_kernels(xnnpack):
        for _ in range(rounds):
            for key, path in paths.items():
                if key in untimed:
                    continue
                try:
                    result = device_harness.bench(path, "host", runs=per_round, warmup=warmup,
                                                  threads=1, cooldown_max_s=0)
                except DeviceError as exc:
                    untimed[key] = str(exc)
                    continue
                times[key] += [1000.0 * ms for ms in result["latencies_ms"]]
    out: dict[str, dict] = {k: {"not_timed": why} for k, why in untimed.items()}
    for key, t in times.items():
        if key not in untimed:
            stats = latency_stats(t)
            out[key] = {"median_us": round(stats["p50"], 2), "p90_us": round(stats["p90"], 2),
                        "spread": round(stats["spread"], 3), "runs": len(t)}
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def variants(name: str, exporter: Any) -> dict[str, Any]:
    """The variants compared for one exporter, its dense baseline first: every LiteRT variant,
    Core ML's dense fp32/fp16 and compressed iOS18/iOS16 packages; any other exporter's dense
    baseline and its default."""
    if name == "tflite":
        from android_export import VARIANTS, TFLiteOptions

        return {v: TFLiteOptions(v) for v in VARIANTS}   # float32 (the dense baseline) first
    if name == "coreml":
        from ios_export import CoreMLOptions

        return {"dense fp32": exporter.baseline(CoreMLOptions()),
                "dense fp16": CoreMLOptions(method="none"),
                "iOS18 compressed": CoreMLOptions(target="iOS18"),
                "iOS16 compressed": CoreMLOptions(target="iOS16")}
    default = exporter.Options()
    return {"dense": exporter.baseline(default), "default": default}


def bench(label: str, model: torch.nn.Module, meta: dict, dcz_size: Any, names: list[str],
          args: argparse.Namespace, work: Path) -> dict:
    layers = compressed_layers(model, names)
    split = load_split("test", root=args.data or (meta.get("data") or {}).get("root"), limit=args.limit)
    inputs = (split.images,)
    score = accuracy_scorer(split.labels.numpy())
    reference = torch_outputs(model, inputs)
    result: dict[str, Any] = {"model": label, "dcz": dcz_size.to_dict(), "test_examples": len(split),
                              "formats": {}, "size_goals": {}}
    paths: dict[str, Path] = {}
    for name, exporter in EXPORTERS.items():
        rows = []
        for variant, options in variants(name, exporter).items():
            path = paths[f"{name}/{variant}"] = work / f"{name}-{_slug(variant)}{exporter.suffix}"
            artifact = exporter.export(model, first_example(inputs), path, options, layers=layers)
            stored = [n for n in layers if n not in artifact.skipped]   # dense ones too
            check = exporter.validate(artifact, model, inputs, score, reference=reference,
                                      layers=stored).to_dict()
            row = {"variant": variant, "artifact": f"{exporter.label} {variant}",
                   "stores": artifact.stores, **artifact.size.to_dict(), "ok": check["ok"],
                   **{k: check[k] for k in ("accuracy", "torch_accuracy", "max_abs_diff",
                                            "weights_match", "all_compressed") if k in check}}
            if rows:   # the first is the dense baseline
                row["dense_over_bytes"] = round(rows[0]["bytes"] / row["bytes"], 2)
            if options == exporter.options():
                row["default"] = True
            rows.append(row)
        result["formats"][name] = rows
        if name in SIZE_GOALS:
            default = next(r for r in rows if r.get("default"))
            result["size_goals"][name] = {
                "goal": f"default export >= {SIZE_GOALS[name]:g}x smaller than dense",
                "ratio": default["dense_over_bytes"],
                "zipped_ratio": round(rows[0]["zipped_bytes"] / default["zipped_bytes"], 2),
                "met": default["dense_over_bytes"] >= SIZE_GOALS[name]}
    result["latency_xnnpack"] = host_latencies(paths, args.runs, args.warmup, xnnpack=True)
    result["latency_builtin"] = host_latencies(paths, args.runs, args.warmup, xnnpack=False)
    result["latency_goal"] = {}
    for kernels in ("xnnpack", "builtin"):
        lat = result[f"latency_{kernels}"]
        for name, rows in result["formats"].items():
            timed = [r["variant"] for r in rows if "median_us" in lat[f"{name}/{r['variant']}"]]
            if len(timed) < 2 or timed[0] != rows[0]["variant"]:
                continue
            base = lat[f"{name}/{timed[0]}"]["median_us"]
            ratios = {v: round(lat[f"{name}/{v}"]["median_us"] / base, 3) for v in timed[1:]}
            result["latency_goal"].setdefault(kernels, {})[name] = {
                "median_over_dense": ratios,
                # medians of interleaved runs still move a few % with the machine's load
                "slower_beyond_noise": sorted(v for v, x in ratios.items() if x > 1 + LATENCY_NOISE)}
    return result


def print_result(r: dict) -> None:
    print(f"\n== {r['model']}  (.dcz {r['dcz']['bytes']:,} B, zipped {r['dcz']['zipped_bytes']:,} B; "
          f"{r['test_examples']:,} test examples)")
    print(f"{'artifact':28s} {'bytes':>10s} {'zipped':>10s} {'dense/x':>8s} {'XNNPACK us':>11s} "
          f"{'builtin us':>11s}  validation")
    for name, rows in r["formats"].items():
        for row in rows:
            key = f"{name}/{row['variant']}"
            lat = [r[f"latency_{k}"][key].get("median_us") for k in ("xnnpack", "builtin")]
            val = (f"acc {100 * row['accuracy']:.2f}% vs torch {100 * row['torch_accuracy']:.2f}%, "
                   f"max|diff| {row['max_abs_diff']:.2e}" if "accuracy" in row else
                   f"weights match {row.get('weights_match')}, all compressed {row.get('all_compressed')}")
            print(f"{row['artifact']:28s} {row['bytes']:>10,} {row['zipped_bytes']:>10,} "
                  f"{row.get('dense_over_bytes', ''):>8} "
                  + " ".join(f"{x:>11.1f}" if x is not None else f"{'-':>11s}" for x in lat)
                  + f"  {val}")
    untimed: dict[str, list[str]] = {}
    for key, v in r["latency_xnnpack"].items():
        if "not_timed" in v:   # the harness names the file first: group by the reason after it
            untimed.setdefault(v["not_timed"].split(": ", 1)[-1], []).append(key)
    for why, keys in untimed.items():
        print(f"not timed on this host ({', '.join(keys)}): {why}")
    print(f"size goals {r['size_goals']}")
    print(f"latency goal {r['latency_goal']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run folders holding model.dcz")
    ap.add_argument("--synthetic", action="append", default=[], choices=sorted(PAPER),
                    help="bench an untrained model compressed at the paper's densities instead")
    ap.add_argument("--runs", dest="n_runs", type=int, default=500, help="timed runs per variant (>= 200)")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up runs before each round's timed runs")
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
