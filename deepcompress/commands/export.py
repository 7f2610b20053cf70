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
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dccore.errors import DataError, ExportError, RecipeError, UsageError
from exporters import (EXPORTERS, CompressedLayer, accuracy_scorer, compressed_layers,
                       cosine_scorer, export_and_validate, first_example, torch_outputs)


# timed runs per artifact for the host p50: enough for a stable median of a small model
LATENCY_RUNS = 50
# formats whose artifact and baselines are scored and timed side by side on this machine
MEASURED_BESIDE = ("tflite",)


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


# ----------------------------------------------------------------------------------------------
# Validation examples

@dataclasses.dataclass(frozen=True)
class Examples:
    inputs: tuple[torch.Tensor, ...]
    labels: np.ndarray | None
    describe: dict[str, Any]          # for the report: where they come from, names and shapes


def _input_shape(args: argparse.Namespace, meta: dict) -> list[int]:
    if args.input_shape:
        try:
            return [int(d) for d in args.input_shape.split(",")]
        except ValueError:
            raise RecipeError(f"--input-shape {args.input_shape!r}: expected integers like 1,28,28") from None
    shape = (meta.get("model") or {}).get("input_shape")
    if not shape:
        raise RecipeError(f"{args.file} records no input shape (meta['model']['input_shape']); "
                          "pass --input-shape C,H,W, or give the examples with --inputs FILE")
    return [int(d) for d in shape]


def idx_examples(args: argparse.Namespace, meta: dict) -> Examples:
    """The default for the built-in image models: the IDX test set, labelled."""
    from compression.data import load_split  # noqa: PLC0415

    shape = _input_shape(args, meta)
    root = args.data or (meta.get("data") or {}).get("root")
    split = load_split("test", root=root, limit=args.limit)
    images = split.images
    if list(images.shape[1:]) != shape:
        if int(np.prod(shape)) != int(np.prod(images.shape[1:])):
            raise UsageError(f"the model takes examples of shape {shape}; the test set's are "
                             f"{list(images.shape[1:])}")
        images = images.reshape(len(images), *shape)
    return Examples((images,), split.labels.numpy(),
                    {"source": f"IDX test set ({root or 'default'})", "names": ["images"],
                     "shapes": [shape], "input_shape": shape})


def _read_named(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"--inputs {path}: no such file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"--inputs {path}: not a readable .npz of arrays ({exc})") from None
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors of many kinds: the file is not plain tensors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"--inputs {path}: not a file of plain tensors ({first})") from None
        if isinstance(obj, torch.Tensor):
            return {"input": obj}
        if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
            return dict(obj)
        raise DataError(f"--inputs {path} holds a {type(obj).__name__}; save a dict of named "
                        "tensors, e.g. torch.save({'input_ids': ids, 'attention_mask': mask}, f)")
    raise UsageError(f"--inputs {path}: expected a .pt or .npz file")


def _forward_order(model: nn.Module, names: list[str]) -> list[str]:
    """The inputs' names in the order forward() takes them: by parameter name where the file
    names forward()'s first parameters, else as the file lists them."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    known = [n for n in names if n in params]
    if not known:
        return names
    if len(known) != len(names) or set(names) != set(params[:len(names)]):
        raise UsageError(f"--inputs names {names}; {type(model).__name__}.forward takes "
                         f"{params}: name the first {len(names)} of them, or none (file order)")
    return sorted(names, key=params.index)


def file_examples(args: argparse.Namespace, model: nn.Module) -> Examples:
    path = Path(args.inputs)
    named = _read_named(path)
    labels = named.pop("labels", None)
    tensors = {}
    for name, value in named.items():
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if t.dim() == 0:
            raise DataError(f"--inputs {path}: {name!r} is a scalar; each input needs a batch axis")
        # float inputs as the weights are (a float64 array from numpy would not run)
        tensors[name] = t.float() if t.is_floating_point() else t
    if not tensors:
        raise DataError(f"--inputs {path} holds no inputs (only labels)")
    order = _forward_order(model, list(tensors))
    inputs = tuple(tensors[n][:args.limit] for n in order)
    counts = {n: int(tensors[n].shape[0]) for n in order}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        counts["labels"] = int(labels.shape[0])
        labels = labels[:args.limit]
    if len(set(counts.values())) != 1:
        raise DataError(f"--inputs {path}: each entry needs the same number of examples; got {counts}")
    return Examples(inputs, labels, {"source": str(path), "names": order,
                                     "shapes": [list(t.shape[1:]) for t in inputs],
                                     "dtypes": [str(t.dtype).removeprefix("torch.") for t in inputs]})


# ----------------------------------------------------------------------------------------------

def dcz_layers(model: nn.Module, dcz: Any) -> dict[str, CompressedLayer]:
    """The layers the .dcz stores compressed, read back from the weights and checked against the
    file's codebooks: the exporters see exactly what the container holds."""
    layers = compressed_layers(model, list(dcz.layers))
    for name, info in layers.items():
        codebook = dcz.layers[name].codebook
        if codebook is not None and not np.isin(info.codebook, codebook).all():
            raise ExportError(f"{dcz.path}: layer {name!r} holds values outside its codebook; "
                              "the file is inconsistent")
    # grouped codebooks (one per group_size rows): the exporters store them per group
    return {n: dataclasses.replace(info, group_size=dcz.layers[n].group_size)
            for n, info in layers.items()}


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
    from device_harness import check_spec  # noqa: PLC0415
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
    # Before any work: an output that would replace something not ours stops the command here.
    paths = {n: EXPORTERS.get(n).check_output(out, flag=f"--{n}") for n, out in outputs.items()}
    options = {n: _options(args, n) for n in paths}

    from ..loading import model_from_dcz  # noqa: PLC0415

    console = None
    if not args.json:
        from rich.console import Console  # noqa: PLC0415
        console = Console(stderr=True)
    model, dcz = model_from_dcz(args.file, model=args.model,
                                model_kwargs=_json_object(args.model_kwargs, "--model-kwargs"))
    layers = dcz_layers(model, dcz)
    examples = file_examples(args, model) if args.inputs else idx_examples(args, dcz.meta)
    score = accuracy_scorer(examples.labels) if examples.labels is not None else cosine_scorer()
    n = int(examples.inputs[0].shape[0])
    reference = torch_outputs(model, examples.inputs)
    report: dict[str, Any] = {"model": str(args.file), "dcz_bytes": dcz.bytes,
                              "inputs": examples.describe, "examples": n}
    for name, path in paths.items():
        exporter = EXPORTERS.get(name)
        with _status(console, f"{exporter.label}: converting, measuring, validating on {n:,} examples"):
            result = export_and_validate(exporter, model, first_example(examples.inputs), path,
                                         options[name], examples.inputs, score, layers=layers,
                                         reference=reference)
        report[name] = result.to_dict()
        if name in MEASURED_BESIDE:
            with _status(console, f"{exporter.label}: its float32 and float16 exports, scored and timed"):
                ours = result.validation.score.to_dict() if result.validation.score else {}
                report[name]["beside"] = measure_beside(
                    exporter, model, examples.inputs, path, options[name], ours, score,
                    reference, args.latency_runs, latency_on)
    ok = all(report[n]["ok"] for n in paths)
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2, default=jsonable))
    else:
        _print(console, report, list(paths))
    return 0 if ok else 1


def p50_ms(path: Path, runs: int, specs: list[str]) -> dict[str, float]:
    """The artifact's median latency in ms on each device (``device_harness``: 1 thread, default
    delegates); empty when not timed."""
    if runs <= 0:
        return {}
    import device_harness  # noqa: PLC0415
    return {spec: float(device_harness.bench(path, spec, runs=runs, warmup=min(10, runs),
                                             threads=1, cooldown_max_s=0)["latency_ms"]["p50"])
            for spec in specs}


def measure_beside(exporter: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path,
                   options: Any, ours: dict, score: Any, reference: np.ndarray,
                   runs: int, specs: list[str]) -> dict[str, Any]:
    """The artifact beside the same model's uncompressed exports (``exporter.baselines``): bytes,
    zipped bytes, the task's metric through each on every example, p50 on each device. Keyed by label,
    "ours" first (``ours``: the artifact's score, already measured)."""
    from dccore.artifacts import artifact_size  # noqa: PLC0415
    from dccore.outputs import temporary_folder  # noqa: PLC0415

    def row(p: Path, figures: dict) -> dict[str, Any]:
        return {**artifact_size(p).to_dict(), **figures, "p50_ms": p50_ms(p, runs, specs)}

    out = {"ours": row(path, ours)}
    with temporary_folder() as tmp:
        for i, (label, dense) in enumerate(exporter.baselines(exporter.options(options)).items()):
            dense_path = Path(tmp) / f"beside{i}{exporter.suffix}"
            exporter.export(model, first_example(inputs), dense_path, dense)
            checked = exporter.validate(dense_path, model, inputs, score, reference=reference)
            out[getattr(dense, "variant", label)] = row(
                dense_path, checked.score.to_dict() if checked.score else {})
    return out


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


def jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)     # anything else a report may carry, as text rather than a crash


def _status(console: Any, text: str) -> Any:
    return console.status(text) if console is not None else contextlib.nullcontext()


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
