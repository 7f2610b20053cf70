"""``deepcompress export``: a .dcz model to each format asked for, each validated and measured.

The formats are the registered exporters (``exporters.EXPORTERS``: "tflite" from android_export,
"coreml" from ios_export); each brings its flags, ``--NAME OUT`` and one ``--NAME-OPTION`` per
field of its options. For each format the report gives the artifact's bytes on disk (a package's
total), its zipped bytes (deflate, as inside an APK/IPA), the bytes of the same model exported
uncompressed (same converter, actually exported and measured), the layers a converter dropped or
folded (skipped, with the reason), and the validation on the caller's examples:

- the examples: ``--inputs FILE`` (named tensors, one per ``forward`` input, plus optional
  ``labels``), or by default the IDX test set of an image model (``--data``, the recipe's).
- the scorer: with labels, the artifact's accuracy within 0.001 (0.1 point) of PyTorch's; without,
  every output at cosine >= 0.999 to PyTorch's. Accuracies are fractions of the examples.
- TFLite runs in the LiteRT interpreter; Core ML is read back and every compressed weight decoded
  and compared with ours (on macOS the package also runs on the examples).

Every output path is checked before any work: an existing path that is not an artifact of that
format, or a missing folder, is refused (exit 2) and nothing is touched.

Exit status: 0 when every validation holds, 1 when one fails (the report says which), 2 on a
usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any

from dccore.errors import RecipeError, UsageError
from exporters import EXPORTERS

from ..cli import json_object
from ..exporting import LATENCY_RUNS, export_format, load
from ..ui import print_json


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    formats = ", ".join(f"{e.label} (--{n})" for n, e in EXPORTERS.items())
    p.description = (f"Export a .dcz model to any of {formats} with the compression stored in "
                     "the artifact, validate each against the PyTorch model, and report sizes.")
    p.add_argument("file", metavar="MODEL.dcz", help="a model written by 'deepcompress run' or 'pack'")
    p.add_argument("--model", metavar="NAME",
                   help="the model to load the weights into: a built-in name, or your own "
                        "'package.module:factory' (default: the built-in model the file names; "
                        "a file never chooses code to run)")
    p.add_argument("--model-kwargs", metavar="JSON",
                   help="keyword arguments for --model's factory, as a JSON object")
    for name, exporter in EXPORTERS.items():
        p.add_argument(f"--{name}", metavar=f"OUT{exporter.suffix}", help=exporter.help)
    for name, exporter in EXPORTERS.items():
        for f in dataclasses.fields(exporter.Options):
            p.add_argument(f"--{name}-{f.name.replace('_', '-')}", dest=f"{name}_{f.name}",
                           default=f.default, choices=f.metadata.get("choices"),
                           help=f.metadata.get("help"))
    p.add_argument("--inputs", metavar="FILE.pt|FILE.npz",
                   help="the examples to export with (the first) and validate on (all): named "
                        "tensors, one per forward() input (named after its parameters, or in "
                        "order), and optionally 'labels'; .pt read with torch.load(weights_only="
                        "True), .npz with numpy (no pickles). Default: the IDX test set")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="without --inputs: shape of one image without the batch axis (default: "
                        "from the recipe)")
    p.add_argument("--data", metavar="DIR", help="without --inputs: IDX dataset folder (default: "
                   "the recipe's, then $DEEPCOMPRESS_DATA, then Fashion-MNIST)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="validate on the first N examples (default: all of them)")
    p.add_argument("--latency-runs", type=int, default=LATENCY_RUNS, metavar="N",
                   help=f"TFLite: timed runs of the artifact and of its float32 and float16 "
                        f"exports in the LiteRT interpreter (1 thread, XNNPACK), for their p50 "
                        f"(default {LATENCY_RUNS}; 0: no timing)")
    p.add_argument("--latency-on", default="host", metavar="SPEC[,SPEC]",
                   help="the devices to time on, as 'deepcompress bench --device' takes them: "
                        "'host' (default), 'emulator' (the emulated Android device), HOST:PORT")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _options(args: argparse.Namespace, name: str) -> Any:
    exporter = EXPORTERS.get(name)
    return exporter.Options(**{f.name: getattr(args, f"{name}_{f.name}", f.default)
                               for f in dataclasses.fields(exporter.Options)})


def main(args: argparse.Namespace) -> int:
    outputs = {n: getattr(args, n) for n in EXPORTERS.names() if getattr(args, n, None)}
    if not outputs:
        raise RecipeError("give " + " and/or ".join(f"--{n} OUT{e.suffix}"
                                                    for n, e in EXPORTERS.items()))
    if args.latency_runs < 0:
        raise UsageError("--latency-runs must be 0 (no timing) or a number of runs")
    from device_harness import check_spec, formats_for  # noqa: PLC0415
    latency_on = [spec.strip() for spec in args.latency_on.split(",") if spec.strip()]
    for spec in latency_on:
        try:
            check_spec(spec)
        except UsageError as exc:
            raise UsageError(f"--latency-on: {exc}") from None
    if args.limit is not None and args.limit <= 0:
        raise RecipeError("--limit must be a positive number of examples")
    if args.inputs and (args.data or args.input_shape):
        raise UsageError("--inputs gives the examples; --data and --input-shape are for the "
                         "default IDX test set")
    input_shape = _input_shape(args.input_shape)
    # Before any work: an output that would replace something not ours stops the command here.
    paths = {n: EXPORTERS.get(n).check_output(out, flag=f"--{n}") for n, out in outputs.items()}
    options = {n: _options(args, n) for n in paths}
    beside = set(formats_for("host"))   # artifacts this machine runs: timed beside their baselines

    console = None
    if not args.json:
        from rich.console import Console  # noqa: PLC0415
        console = Console(stderr=True)
    loaded = load(args.file, model=args.model,
                  model_kwargs=json_object(args.model_kwargs, "--model-kwargs", RecipeError),
                  inputs=args.inputs, data=args.data, input_shape=input_shape, limit=args.limit)
    report: dict[str, Any] = {"model": str(args.file), "dcz_bytes": loaded.dcz.bytes,
                              "inputs": loaded.examples.describe, "examples": len(loaded.examples)}
    step = console.status if console is not None else contextlib.nullcontext
    for name, path in paths.items():
        report[name] = export_format(loaded, EXPORTERS.get(name), path, options[name],
                                     beside=name in beside, latency_runs=args.latency_runs,
                                     latency_on=latency_on, step=step)
    ok = all(report[n]["ok"] for n in paths)
    report["ok"] = ok
    if args.json:
        print_json(report)
    else:
        _print(console, report, list(paths))
    return 0 if ok else 1


def _input_shape(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise RecipeError(f"--input-shape {text!r}: expected integers like 1,28,28") from None


def _score_line(s: dict) -> str:
    """One scorer's figures for people (accuracies printed in percent)."""
    if "accuracy" in s:
        return (f"accuracy {100 * s['accuracy']:.2f}% vs PyTorch {100 * s['torch_accuracy']:.2f}% on "
                f"{s['examples']:,} examples (limit {100 * s['tolerance']:g} pt); largest output "
                f"difference {s['max_abs_diff']:.2e}")
    return (f"cosine to PyTorch min {s['min_cosine']:.6f} (limit {s['min_cosine_required']:g}), "
            f"mean {s['mean_cosine']:.6f} on {s['examples']:,} examples; largest output "
            f"difference {s['max_abs_diff']:.2e}")


def _beside_line(label: str, what: str, b: dict) -> str:
    metric = (f"accuracy {100 * b['accuracy']:.2f}%" if "accuracy" in b
              else f"mean cosine {b['mean_cosine']:.5f}" if "mean_cosine" in b else "not scored")
    p50 = ", ".join(f"p50 {ms:.3f} ms on {spec}" for spec, ms in b.get("p50_ms", {}).items())
    return (f"{label} {what}: {b['bytes']:,} bytes, {b['zipped_bytes']:,} zipped, {metric}, "
            f"{p50 or 'not timed'}")


def _print(console: Any, report: dict, formats: list[str]) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{report['model']}: {report['dcz_bytes']:,} bytes as .dcz")
    for col in ("format", "stores", "bytes", "zipped", "dense", "dense/bytes"):
        table.add_column(col, justify="left" if col in ("format", "stores") else "right")
    lines = []
    for name in formats:
        r, label = report[name], EXPORTERS.get(name).label
        table.add_row(label, r["stores"], f"{r['bytes']:,}", f"{r['zipped_bytes']:,}", f"{r['dense_bytes']:,}",
                      f"{r['ratio']:.1f}x")
        verdict = "ok  " if r["ok"] else "FAIL"
        if "weights_match" in r:
            bad = [n for n, chk in r["layers"].items() if not (chk.get("match") and chk.get("compressed"))]
            lines.append(f"{label} {verdict} {len(r['layers']) - len(bad)}/{len(r['layers'])} layers "
                         "decode from the artifact to exactly our weights, stored compressed"
                         + (f"; failing: {', '.join(bad)}" if bad else ""))
        if "examples" in r:
            lines.append(f"{label} {verdict} {_score_line(r)}")
        lines += [f"{label} beside {what}: {size['bytes']:,} bytes, {size['zipped_bytes']:,} zipped"
                  for what, size in r.get("baselines", {}).items()]
        lines += [f"{label} layer {n}: {chk['reason']}" for n, chk in r["layers"].items()
                  if chk.get("reason")]
        lines += [f"{label} layer {n}: {chk['form']}{' (exact)' if chk.get('exact') else ''}: "
                  f"{chk['why']}" for n, chk in r["layers"].items() if chk.get("why")]
        lines += [_beside_line(label, what, b) for what, b in r.get("beside", {}).items()]
        decoded = r.get("decoded")
        if decoded is not None:
            lines.append(f"{label} through the decoded weights: {_score_line(decoded)}")
        pred = r.get("predictions")
        if pred is not None:
            lines.append(f"{label} predictions: {pred['skipped']}" if "skipped" in pred
                         else f"{label} predictions: {_score_line(pred)}")
        lines += [f"{label} note: layer {n} skipped: {why}" for n, why in r["skipped"].items()]
    console.print(table)
    for line in lines:
        console.print(line, highlight=False)
