"""``deepcompress export``: a .dcz model to TFLite and/or Core ML, each validated and measured.

For each format the report gives the artifact's bytes on disk (a package's total), its zipped
bytes (deflate, as inside an APK/IPA), the bytes of the same model exported uncompressed (same
converter, float32, actually exported and measured), and the validation:

- TFLite: the file runs in the LiteRT interpreter on the test set; its accuracy must be within
  0.1 points of the PyTorch model's, and the largest logit difference is reported.
- Core ML: the saved package is read back, every compressed weight decoded from its constexpr
  ops and compared with ours cast to the weight dtype: they must match exactly, and each must be
  stored compressed. On macOS the package also runs on the test set.

Exit status: 0 when every validation holds, 1 when one fails (the report says which), 2 on a
usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

# Both exporters import their converters (coremltools, LiteRT) only when they run: importing them
# here costs ~20 ms, and the options below come from them rather than from copies.
import android_export
import ios_export
from android_export import convert_float32, evaluate_tflite, export_tflite, torch_logits
from ios_export import coreml_logits, export_coreml, verify_coreml

from dccore.artifacts import artifact_size
from dccore.errors import ExportError, RecipeError
from exporters import CompressedLayer, compressed_layers, example_input, score_logits


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.description = ("Export a .dcz model to TFLite (litert-torch) and/or Core ML (coremltools) "
                     "with the compression stored in the artifact, validate each against the "
                     "PyTorch model, and report sizes.")
    p.add_argument("file", metavar="MODEL.dcz", help="a model written by 'deepcompress run' or 'pack'")
    p.add_argument("--model", metavar="NAME",
                   help="the model to load the weights into: a built-in name, or your own "
                        "'package.module:factory' (default: the built-in model the file names; "
                        "a file never chooses code to run)")
    p.add_argument("--model-kwargs", metavar="JSON",
                   help="keyword arguments for --model's factory, as a JSON object")
    p.add_argument("--tflite", metavar="OUT.tflite", help="write a LiteRT/TFLite flatbuffer")
    p.add_argument("--coreml", metavar="OUT.mlpackage", help="write a Core ML ML Program package")
    p.add_argument("--tflite-variant", default=android_export.DEFAULT_VARIANT,
                   choices=tuple(android_export.VARIANTS),
                   help=f"what the .tflite stores (default: {android_export.DEFAULT_VARIANT}, the "
                        "smallest that keeps the weights exact in fp16)")
    p.add_argument("--coreml-target", default=ios_export.DEFAULT_TARGET, choices=ios_export.TARGETS,
                   help=f"minimum deployment target (default {ios_export.DEFAULT_TARGET}: "
                        "sparse+palettized in one op; iOS16/17 store each layer sparse or "
                        "palettized, whichever is smaller)")
    p.add_argument("--coreml-precision", default=ios_export.DEFAULT_PRECISION,
                   choices=ios_export.PRECISIONS,
                   help=f"weight and compute precision (default {ios_export.DEFAULT_PRECISION}: "
                        "what the Neural Engine runs)")
    # "none" (the dense baseline) is what the report's dense_bytes measure, not a user choice
    p.add_argument("--coreml-compression", default=ios_export.DEFAULT_METHOD,
                   choices=tuple(m for m in ios_export.METHODS if m != "none"),
                   help="force one storage for every layer (default: the smallest per layer)")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="shape of one example without the batch axis (default: from the recipe)")
    p.add_argument("--data", metavar="DIR", help="IDX dataset folder for the TFLite accuracy check "
                   "(default: the recipe's, then $DEEPCOMPRESS_DATA, then Fashion-MNIST)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="validate on the first N test examples (default: the whole test set)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _input_shape(args: argparse.Namespace, meta: dict) -> list[int]:
    if args.input_shape:
        try:
            return [int(d) for d in args.input_shape.split(",")]
        except ValueError:
            raise RecipeError(f"--input-shape {args.input_shape!r}: expected integers like 1,28,28") from None
    shape = (meta.get("model") or {}).get("input_shape")
    if not shape:
        raise RecipeError(f"{args.file} records no input shape (meta['model']['input_shape']); "
                          "pass --input-shape C,H,W")
    return [int(d) for d in shape]


def _layers(model: nn.Module, dcz: Any) -> dict[str, CompressedLayer]:
    """The layers the .dcz stores compressed, read back from the weights and checked against the
    file's codebooks: the exporters see exactly what the container holds."""
    layers = compressed_layers(model, list(dcz.layers))
    for name, info in layers.items():
        codebook = dcz.layers[name].codebook
        if codebook is not None and not np.isin(info.codebook, codebook).all():
            raise ExportError(f"{dcz.path}: layer {name!r} holds values outside its codebook; "
                              "the file is inconsistent")
    return layers


def tflite_report(model: nn.Module, input_shape: list[int], out: Path, variant: str,
                  layers: dict[str, CompressedLayer], split: Any, reference: np.ndarray) -> dict:
    float32 = convert_float32(model, example_input(input_shape))
    result = export_tflite(model, input_shape, out, variant=variant, layers=layers, float32=float32)
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = Path(tmp) / out.name
        dense_path.write_bytes(float32)   # the float32 variant is litert-torch's output as is
        dense = artifact_size(dense_path)
    evaluation = evaluate_tflite(out, model, split.images, split.labels.numpy(), reference)
    size = artifact_size(out)
    return {**result.to_dict(), **size.to_dict(), "dense_bytes": dense.bytes,
            "dense_zipped_bytes": dense.zipped_bytes, "ratio": dense.bytes / size.bytes,
            **evaluation.to_dict()}


def coreml_report(model: nn.Module, input_shape: list[int], out: Path, target: str, precision: str,
                  method: str, layers: dict[str, CompressedLayer], split: Any,
                  reference: np.ndarray) -> dict:
    result = export_coreml(model, input_shape, out, layers=layers, target=target,
                           precision=precision, method=method)
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = Path(tmp) / out.name
        export_coreml(model, input_shape, dense_path, target=target, precision="fp32", method="none")
        dense = artifact_size(dense_path)
    state = model.state_dict()
    check = verify_coreml(out, {n: state[n].detach().cpu().numpy() for n in layers})
    size = artifact_size(out)
    checked = check.to_dict()
    planned = result.to_dict()
    layers_ = {n: {**planned["layers"].get(n, {}), **checked["layers"][n]} for n in checked["layers"]}
    report = {**planned, **size.to_dict(), "dense_bytes": dense.bytes,
              "dense_zipped_bytes": dense.zipped_bytes, "ratio": dense.bytes / size.bytes,
              **checked, "layers": layers_, "ok": check.ok}
    if sys.platform == "darwin":
        score = score_logits(coreml_logits(out, split.images.numpy()), reference,
                             split.labels.numpy())
        # unrounded, and no pass/fail: the package's verdict is the decoded-weights check above
        keys = ("examples", "accuracy", "torch_accuracy", "max_abs_diff")
        report["predictions"] = {k: getattr(score, k) for k in keys}
    else:
        report["predictions"] = {"skipped": "Core ML predictions need macOS"}
    return report


def main(args: argparse.Namespace) -> int:
    if not args.tflite and not args.coreml:
        raise RecipeError("give --tflite OUT.tflite and/or --coreml OUT.mlpackage")
    if args.limit is not None and args.limit <= 0:
        raise RecipeError("--limit must be a positive number of examples")
    from compression.data import load_split  # noqa: PLC0415

    from ..loading import model_from_dcz  # noqa: PLC0415

    console = None
    if not args.json:
        from rich.console import Console  # noqa: PLC0415
        console = Console(stderr=True)
    model, dcz = model_from_dcz(args.file, model=args.model,
                                model_kwargs=_json_object(args.model_kwargs, "--model-kwargs"))
    shape = _input_shape(args, dcz.meta)
    layers = _layers(model, dcz)
    root = args.data or (dcz.meta.get("data") or {}).get("root")
    split = load_split("test", root=root, limit=args.limit)
    reference = torch_logits(model, split.images)
    report: dict[str, Any] = {"model": str(args.file), "dcz_bytes": dcz.bytes,
                              "input_shape": shape, "test_examples": len(split)}
    if args.tflite:
        with _status(console, f"TFLite {args.tflite_variant}: converting and running {len(split)} examples"):
            report["tflite"] = tflite_report(model, shape, Path(args.tflite), args.tflite_variant,
                                             layers, split, reference)
    if args.coreml:
        with _status(console, f"Core ML {args.coreml_target}: converting and decoding the weights"):
            report["coreml"] = coreml_report(model, shape, Path(args.coreml), args.coreml_target,
                                             args.coreml_precision, args.coreml_compression,
                                             layers, split, reference)
    ok = all(report[k]["ok"] for k in ("tflite", "coreml") if k in report)
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2, default=_jsonable))
    else:
        _print(console, report)
    return 0 if ok else 1


def _json_object(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{flag} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RecipeError(f"{flag} must be a JSON object, e.g. '{{\"num_classes\": 10}}'")
    return value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _status(console: Any, text: str) -> Any:
    return console.status(text) if console is not None else contextlib.nullcontext()


def _print(console: Any, report: dict) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{report['model']}: {report['dcz_bytes']:,} bytes as .dcz")
    for col in ("format", "stores", "bytes", "zipped", "dense", "dense/bytes"):
        table.add_column(col, justify="left" if col in ("format", "stores") else "right")
    lines = []
    if "tflite" in report:
        t = report["tflite"]
        table.add_row("TFLite", t["variant"], f"{t['bytes']:,}", f"{t['zipped_bytes']:,}",
                      f"{t['dense_bytes']:,}", f"{t['ratio']:.1f}x")
        lines.append(f"TFLite  {'ok  ' if t['ok'] else 'FAIL'} accuracy {t['accuracy']:.2f}% vs PyTorch "
                     f"{t['torch_accuracy']:.2f}% on {t['examples']:,} test examples (limit "
                     f"{t['tolerance_pts']} pt); largest logit difference {t['max_abs_diff']:.2e}")
    if "coreml" in report:
        c = report["coreml"]
        stores = "+".join(sorted({p.get("method", "?") for p in c["layers"].values()}))
        table.add_row("Core ML", f"{c['target']} {c['precision']} {stores}", f"{c['bytes']:,}",
                      f"{c['zipped_bytes']:,}", f"{c['dense_bytes']:,}", f"{c['ratio']:.1f}x")
        bad = [n for n, chk in c["layers"].items() if not (chk["match"] and chk["compressed"])]
        lines.append(f"Core ML {'ok  ' if c['ok'] else 'FAIL'} {len(c['layers']) - len(bad)}/"
                     f"{len(c['layers'])} layers decode from the package to exactly our "
                     f"{c['precision']} weights, stored compressed"
                     + (f"; failing: {', '.join(bad)}" if bad else ""))
        pred = c["predictions"]
        lines.append(f"Core ML predictions: {pred['skipped']}" if "skipped" in pred else
                     f"Core ML predictions: {pred['accuracy']:.2f}% vs PyTorch "
                     f"{pred['torch_accuracy']:.2f}%, "
                     f"largest logit difference {pred['max_abs_diff']:.2e}")
    console.print(table)
    for line in lines:
        console.print(line, highlight=False)
