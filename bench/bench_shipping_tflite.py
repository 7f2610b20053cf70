#!/usr/bin/env python3
"""The .tflite that ships, side by side: ours (``deepcompress export --tflite`` of a run's
model.dcz, the ``auto`` variant) against ai-edge-quantizer's recipes on the same model's dense
float weights, and the dense float32 and float16 exports.

    python bench/bench_shipping_tflite.py lenet300 RUN_DIR [RUN_DIR...]   # of 'deepcompress run'
    python bench/bench_shipping_tflite.py lenet5 RUN_DIR
    PYTHONPATH=bench python bench/bench_shipping_tflite.py minilm RUN_DIR [RUN_DIR...] [--limit N]

The dense model ai-edge-quantizer is given: a LeNet's dense baseline (the first RUN_DIR's
checkpoints/0_baseline.pt, what its user trained before compressing), MiniLM's packaged weights. Its
recipes: int8 and int4 dynamic-range, per channel and in blocks of 32, with and without Hadamard
rotation (``*_hr``, per channel only in 0.10), and weight-only int8 / int4.

For each artifact: bytes, zipped bytes (zipfile DEFLATED at level 9, as inside an APK), the
metric through the LiteRT interpreter on every held-out example (a LeNet: test-set accuracy, 10,000
images; MiniLM: mean and minimum cosine of the embedding to the dense float32 PyTorch model's on
the held-out test sentences of bench/minilm.py), and the p50 in ms through ``device_harness``
(1 thread, XNNPACK, as ``deepcompress bench``) on the host and the emulated Android device
(``--devices``). Ratios are
against the dense float32 export. Timings on a shared machine are upper bounds.

``--json FILE`` writes every figure. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import device_harness  # noqa: E402
from android_export import convert_float32, export_tflite, tflite_outputs  # noqa: E402
from dccore import metrics  # noqa: E402
from dccore.artifacts import artifact_size  # noqa: E402
from deepcompress.loading import model_from_dcz  # noqa: E402

# ai-edge-quantizer 0.10's recipes (name in ai_edge_quantizer.recipe -> label); those missing
# from the installed version are skipped with a note
AEQ_RECIPES = {
    "dynamic_wi8c_afp32": "aeq int8 channelwise",
    "dynamic_wi8b32_afp32": "aeq int8 blockwise-32",
    "dynamic_wi4c_afp32": "aeq int4 channelwise",
    "dynamic_wi4b32_afp32": "aeq int4 blockwise-32",
    "dynamic_wi8c_hr_afp32": "aeq int8 channelwise + Hadamard",
    "dynamic_wi4c_hr_afp32": "aeq int4 channelwise + Hadamard",
    "weight_only_wi8_afp32": "aeq int8 weight-only",
    "weight_only_wi4_afp32": "aeq int4 weight-only",
}


# ----------------------------------------------------------------------------------------------
# Models and held-out examples

def lenet(run: Path, limit: int | None) -> dict[str, Any]:
    from compression.data import load_split
    from compression.models import build_model
    _, dcz = model_from_dcz(run / "model.dcz")
    name = dcz.meta["model"]["name"]
    dense = build_model(name).eval()
    blob = torch.load(run / "checkpoints" / "0_baseline.pt", map_location="cpu", weights_only=True)
    dense.load_state_dict(blob["state_dict"])
    split = load_split("test", root=(dcz.meta.get("data") or {}).get("root"), limit=limit)
    shape = dcz.meta["model"]["input_shape"]
    images = split.images.reshape(len(split.images), *shape)
    labels = split.labels.numpy()

    def score(out: np.ndarray) -> dict[str, float]:
        return {"accuracy": metrics.accuracy(out, labels)}
    return {"name": name, "dense": dense, "inputs": (images,), "score": score,
            "metric": "accuracy", "load": lambda path: model_from_dcz(path)}


def minilm_model(run: Path, limit: int | None) -> dict[str, Any]:
    import minilm
    dense = minilm.pretrained()
    ids, mask = minilm.tokenize(minilm.sentences("test", limit))
    with torch.no_grad():
        ref = dense(ids, mask).numpy()

    def score(out: np.ndarray) -> dict[str, float]:
        return {"mean_cosine": metrics.mean_cosine(out, ref), "min_cosine": metrics.min_cosine(out, ref)}
    return {"name": "all-MiniLM-L6-v2", "dense": dense, "inputs": (ids, mask), "score": score,
            "metric": "mean_cosine",
            "load": lambda path: model_from_dcz(path, model="minilm:pretrained")}


MODELS: dict[str, Callable[[Path, int | None], dict[str, Any]]] = {
    "lenet300": lenet, "lenet5": lenet, "minilm": minilm_model}


# ----------------------------------------------------------------------------------------------
# Artifacts

def aeq_artifact(float32: bytes, recipe_name: str, out: Path) -> str | None:
    """ai-edge-quantizer's recipe on the dense float32 flatbuffer; None, or why not."""
    from ai_edge_quantizer import quantizer, recipe
    make = getattr(recipe, recipe_name, None)
    if make is None:
        return f"ai-edge-quantizer has no recipe {recipe_name}"
    q = quantizer.Quantizer(bytearray(float32))
    q.load_quantization_recipe(make())
    from android_export._backend import quiet
    try:
        with quiet():
            out.write_bytes(bytes(q.quantize().quantized_model))
    except (ValueError, RuntimeError) as exc:   # e.g. a layer's width not a multiple of the block
        return f"ai-edge-quantizer refused: {str(exc).strip().splitlines()[-1][-160:]}"
    return None


def p50_ms(path: Path, runs: int, specs: list[str]) -> dict[str, float]:
    return {spec: float(device_harness.bench(path, spec, runs=runs, warmup=min(10, runs), threads=1,
                                             cooldown_max_s=0)["latency_ms"]["p50"])
            for spec in specs}


def measure(path: Path, case: dict[str, Any], runs: int, extra: dict | None = None) -> dict[str, Any]:
    specs = case["devices"]
    size = artifact_size(path)
    t = time.time()
    out = tflite_outputs(path, case["inputs"])
    row = {"bytes": size.bytes, "zipped_bytes": size.zipped_bytes, **case["score"](out),
           "score_seconds": round(time.time() - t, 1), "p50_ms": p50_ms(path, runs, specs)}
    return {**row, **(extra or {})}


def bench(model: str, run_dirs: list[Path], limit: int | None, runs: int, work: Path,
          devices: list[str], aeq: list[str] | None = None) -> dict[str, Any]:
    case = {**MODELS[model](run_dirs[0], limit), "devices": devices}
    first = tuple(t[:1] for t in case["inputs"])
    rows: dict[str, dict[str, Any]] = {}
    for variant in ("float32", "float16"):
        path = work / f"dense-{variant}.tflite"
        export_tflite(case["dense"], first, path, variant=variant)
        rows[f"dense {variant}"] = measure(path, case, runs)
    for run in run_dirs:
        ours, dcz = case["load"](run / "model.dcz")
        with torch.no_grad():
            decoded = ours.eval()(*case["inputs"]).numpy()
        rows[f".dcz {run.name} (PyTorch, decoded)"] = {"bytes": dcz.bytes, **case["score"](decoded)}
        t = time.time()
        # the layers the .dcz stores compressed, as `deepcompress export` passes them
        out = export_tflite(ours, first, work / f"ours-{run.name}.tflite", layers=list(dcz.layers))
        forms = {n: {"form": s.form, "exact": s.exact, "why": s.why} for n, s in out.layers.items()}
        rows[f"ours {run.name} (auto)"] = measure(
            out.path, case, runs, {"export_seconds": round(time.time() - t, 1), "layers": forms,
                                   "all_exact": all(s.exact for s in out.layers.values())})
    float32 = convert_float32(case["dense"], first)
    for name, label in AEQ_RECIPES.items():
        if aeq is not None and name not in aeq:
            continue
        path = work / f"{name}.tflite"
        t = time.time()
        why = aeq_artifact(float32, name, path)
        rows[label] = {"skipped": why} if why else measure(
            path, case, runs, {"export_seconds": round(time.time() - t, 1)})
        if not why and rows[label]["bytes"] >= 0.95 * rows["dense float32"]["bytes"]:
            rows[label]["note"] = "ai-edge-quantizer left the weights float32 (recipe not applied)"
    return {"model": case["name"], "metric": case["metric"], "runs": [str(r) for r in run_dirs],
            "devices": devices,
            "examples": int(case["inputs"][0].shape[0]), "rows": rows}


def table(result: dict[str, Any]) -> str:
    metric, rows = result["metric"], result["rows"]
    dense = rows["dense float32"]["bytes"]
    devices = result["devices"]
    lines = [f"| {result['model']} ({result['examples']:,} held-out examples) | bytes | x fp32 | "
             f"zipped | {metric} | " + " | ".join(f"p50 ms {d}" for d in devices) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(devices)]
    for label, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {label} | skipped: {r['skipped']} | | | |" + " |" * len(devices))
            continue
        value = r.get(metric)
        shown = (f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}") if value is not None else ""
        p50 = " | ".join(f"{r['p50_ms'][d]:.3f}" if d in r.get("p50_ms", {}) else ""
                         for d in devices)
        zipped = f"{r['zipped_bytes']:,}" if "zipped_bytes" in r else ""
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {label}{note} | {r['bytes']:,} | {dense / r['bytes']:.1f}x | {zipped} | {shown} | {p50} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("run", type=Path, nargs="+",
                        help="folders 'deepcompress run' wrote (model.dcz), one row each")
    parser.add_argument("--aeq", metavar="RECIPE[,RECIPE]",
                        help="only these of ai-edge-quantizer's recipes ('' for none; default all: "
                             + ", ".join(AEQ_RECIPES) + ")")
    parser.add_argument("--limit", type=int, help="score on the first N held-out examples only")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per artifact (default 50)")
    parser.add_argument("--devices", default="host,emulator",
                        help="where to time each artifact (device specs; default host,emulator)")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as tmp:
        result = bench(args.model, args.run, args.limit, args.runs, Path(tmp),
                       [d.strip() for d in args.devices.split(",") if d.strip()],
                       None if args.aeq is None else [r for r in args.aeq.split(",") if r])
    result.update(started=started, load=os.getloadavg(), python=platform.python_version(),
                  command=" ".join(sys.argv))
    print(table(result))
    for label, row in result["rows"].items():
        for name, layer in row.get("layers", {}).items():
            print(f"- {label}: {name}: {layer['form']}{' (exact)' if layer['exact'] else ''}: "
                  f"{layer['why']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
