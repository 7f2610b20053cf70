"""``deepcompress pack | unpack | inspect``: write, decode and examine .dcz files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dccore.errors import ContainerError
from dcz import CODERS


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "pack":
        parser.add_argument("checkpoint", help="state_dict saved with torch.save (.pt)")
        parser.add_argument("--model", required=True,
                            help="built-in model name or 'package.module:factory'")
        parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                            help="keyword arguments for the model factory, as a JSON object")
        parser.add_argument("--out", "-o", required=True, help="the .dcz file to write")
        parser.add_argument("--coder", choices=(*CODERS, "smallest"), default="huffman",
                            help="entropy coder for the gap and index streams (default: huffman, "
                                 "the paper's; 'none' = fixed-width bit packing; 'smallest' = "
                                 "Huffman and rANS both tried, the smaller file kept)")
        parser.add_argument("--sparsity", type=float, metavar="S",
                            help="post-training: cut every compressible layer to this fraction "
                                 "of zeros by magnitude (layers already that sparse are kept)")
        parser.add_argument("--bits", type=int, metavar="B",
                            help="post-training: share every compressible layer's weights with "
                                 "k-means into 2**B values (layers already holding that few "
                                 "distinct values keep them exactly, stored with B-bit indices)")
        parser.add_argument("--group-size", type=int, metavar="ROWS",
                            help="with --bits: one codebook per this many rows (default: one "
                                 "per layer)")
        parser.add_argument("--grid", choices=("int4", "int8"), default=None,
                            help="post-training: share every compressible layer on an integer "
                                 "grid LiteRT holds exactly (a scale per row, or per "
                                 "--group-size rows, times int4 [-8, 7] or int8 [-127, 127] "
                                 "values); --bits defaults to the grid's width and may not "
                                 "exceed it")
        parser.add_argument("--layer", action="append", default=[], metavar="NAME:KEY=V[,KEY=V]",
                            help="per-layer settings, beating the global flags: sparsity, bits, "
                                 "group_size, grid (int4, int8, none), e.g. --layer "
                                 "fc3:sparsity=0.5,bits=6 (repeatable)")
        parser.add_argument("--bits-for", action="append", default=[], metavar="LAYER=B",
                            help="the same as --layer LAYER:bits=B (repeatable)")
        parser.add_argument("--index-bits", type=int, default=None, metavar="B",
                            help="gap width for every layer (default: the width that codes "
                                 "smallest, per layer)")
        parser.add_argument("--plain-dtype", choices=("float32", "float16"), default="float32",
                            help="storage of uncompressed tensors (biases, norms); float16 is "
                                 "lossy")
        parser.add_argument("--metadata", choices=("full", "minimal"), default="full",
                            help="what the file says besides the weights (the encode stage's "
                                 "option): 'minimal' keeps only the model to rebuild")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
    elif command == "unpack":
        parser.add_argument("file", help="the .dcz file")
        parser.add_argument("--out", "-o", required=True, help="state_dict file to write (.pt)")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")
    else:
        parser.add_argument("file", help="the .dcz file")
        parser.add_argument("--json", action="store_true",
                            help="print everything as JSON (per tensor, per stream, totals)")


def main(args: argparse.Namespace) -> int:
    return {"pack": _pack, "unpack": _unpack, "inspect": _inspect}[args.command](args)


def _layer_settings(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """Each layer's sparsity / bits / group_size from the global flags and --layer/--bits-for."""
    settings = {n: {"sparsity": args.sparsity, "bits": args.bits, "group_size": args.group_size,
                    "grid": args.grid} for n in names}
    items = [f"{spec.partition('=')[0]}:bits={spec.partition('=')[2]}" for spec in args.bits_for]
    for item in args.layer + items:
        name, _, pairs = item.partition(":")
        layer = name[:-len(".weight")] if name.endswith(".weight") else name
        if layer not in settings or not pairs:
            raise ContainerError(f"--layer/--bits-for {item!r}: expected LAYER:KEY=VALUE with LAYER "
                                 f"one of {', '.join(names)}")
        for pair in pairs.split(","):
            key, _, value = pair.partition("=")
            if key == "grid":
                if value not in ("int4", "int8", "none"):
                    raise ContainerError(f"--layer {item!r}: grid must be int4, int8 or none, "
                                         f"got {value!r}")
                settings[layer]["grid"] = None if value == "none" else value
                continue
            try:
                settings[layer][key] = float(value) if key == "sparsity" else int(value)
            except ValueError:
                raise ContainerError(f"--layer {item!r}: {key} needs a number, got {value!r}") \
                    from None
            if key not in ("sparsity", "bits", "group_size"):
                raise ContainerError(f"--layer {item!r}: unknown key {key!r}; allowed: sparsity, "
                                     "bits, group_size, grid")
    for layer, s in settings.items():
        if s["sparsity"] is not None and not 0 <= s["sparsity"] < 1:
            raise ContainerError(f"{layer}: sparsity must be in [0, 1), got {s['sparsity']}")
        if s["bits"] is not None and not 1 <= s["bits"] <= 16:
            raise ContainerError(f"{layer}: bits must be in 1..16, got {s['bits']}")
        if s["grid"] is not None:
            width = {"int4": 4, "int8": 8}[s["grid"]]
            if s["bits"] is not None and s["bits"] > width:
                raise ContainerError(f"{layer}: --grid {s['grid']} holds {width}-bit values; "
                                     f"bits {s['bits']} asks for more (at most {width})")
    return settings


def _pack(args: argparse.Namespace) -> int:
    import torch

    from compression.api import compress
    from compression.models import (build_model, compressible_layers, load_state_dict_file,
                                    load_weights, weight_name)
    from compression.stages import LAYER_TYPES
    from dccore.outputs import DCZ, check_output

    check_output(args.out, DCZ, flag="--out")
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as exc:
        raise ContainerError(f"--model-kwargs is not valid JSON ({exc})") from None
    if not isinstance(kwargs, dict):
        raise ContainerError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    state = load_state_dict_file(args.checkpoint)
    model = build_model(args.model, kwargs)
    load_weights(model, state, source=args.checkpoint)  # fail early if it is the wrong model
    layers = compressible_layers(model)
    settings = _layer_settings(args, list(layers))
    notes, cut, share = [], {}, {}
    for name, module in layers.items():
        s, w = settings[name], state[weight_name(name, module)]
        zeros = float((w == 0).float().mean())
        if s["sparsity"] is not None:
            if zeros >= s["sparsity"]:
                notes.append(f"{name}: already {zeros:.1%} zeros; --sparsity {s['sparsity']} "
                             "changes nothing there")
            else:
                cut[name] = {"sparsity": s["sparsity"]}
        if s["grid"] is not None:    # values on the grid are fitted, whatever they were
            share[name] = {"bits": s["bits"] or {"int4": 4, "int8": 8}[s["grid"]],
                           "group_size": s["group_size"], "grid": s["grid"]}
        elif s["bits"] is not None:
            distinct = torch.unique(w[w != 0]).numel()
            if distinct <= 2 ** s["bits"]:
                notes.append(f"{name}: already {distinct} distinct values (<= 2**{s['bits']}): "
                             "kept exactly, stored with "
                             f"{s['bits']}-bit indices")
            else:
                share[name] = {"bits": s["bits"], "group_size": s["group_size"]}
        elif s["group_size"] is not None:
            notes.append(f"{name}: --group-size without --bits or --grid changes nothing")
    off = {t: False for t in LAYER_TYPES}
    stages = []
    if cut:
        stages.append({"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0,
                       "by_type": off, "by_name": cut})
    if share:
        stages.append({"kind": "share", "by_type": off, "by_name": share})
    # the flags are a post-training recipe; Compressor.save is the one .dcz writer
    stages.append({"kind": "encode", "coder": args.coder, "index_bits": args.index_bits,
                   "plain_dtype": args.plain_dtype, "metadata": args.metadata})
    comp = compress(model, {"stages": stages})
    for name in layers:
        # what the checkpoint already holds is stored as such: its zeros sparse (a pruned
        # checkpoint packs without --sparsity), its few distinct values with --bits indices
        layer = comp.state.layers[name]
        if layer.mask is None and bool((layer.weight == 0).any()):
            layer.mask = layer.weight.detach() != 0
        if layer.bits is None and settings[name]["bits"] is not None:
            layer.bits = settings[name]["bits"]
    for note in notes:
        print(f"deepcompress pack: note: {note}", file=sys.stderr)
    report = comp.save(args.out, meta={"model": {"name": args.model, "kwargs": kwargs},
                                       "source": {"checkpoint": str(args.checkpoint)}})
    if args.json:
        print(json.dumps({**report.as_dict(), "notes": notes}, indent=2))
    else:
        meta_bytes = report.bytes - sum(t.bytes for t in report.tensors)
        print(f"wrote {report.path}: {report.bytes:,} bytes ({report.coder}); dense fp32 "
              f"{report.dense_bytes:,} bytes; ratio {report.ratio:.1f}x")
        print(f"  of which header and metadata {meta_bytes:,} bytes (a run's model.dcz also "
              "carries its resolved recipe and accuracies, so it differs by about that much)")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    import torch

    from dccore.outputs import TORCH_FILE, atomic_path, check_output
    from dcz import load

    check_output(args.out, TORCH_FILE, flag="--out")
    dcz = load(args.file)
    with atomic_path(args.out, kind=TORCH_FILE) as tmp:
        with open(tmp, "wb") as fh:   # a read-only folder: PermissionError naming it (torch
            torch.save(dcz.state_dict, fh)   # would say RuntimeError "open file failed")
    summary = {"file": str(dcz.path), "out": str(args.out), "tensors": len(dcz.state_dict),
               "bytes": Path(args.out).stat().st_size}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {args.out}: {summary['tensors']} tensors decoded from {dcz.path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dcz import inspect

    info = inspect(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print_tables(info)
    return 0


def _print_tables(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..ui import printable

    def name(value: object) -> Text:   # a file's own words: shown, never obeyed (nor markup)
        return Text(printable(value))

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 132)
    t = Table(title=name(f"{info['path']}  (format v{info['format_version']}, coder "
                         f"{info['coder']})"), title_justify="left")
    for col in ("tensor", "shape", "storage", "density", "bits", "gap bits", "bytes",
                "bits/weight", "ratio"):
        t.add_column(col, justify="left" if col in ("tensor", "shape", "storage") else "right")
    for row in info["tensors"]:
        t.add_row(name(row["name"]), "x".join(map(str, row["shape"])) or "scalar",
                  name(row["storage"]), f"{row['density']:.1%}", _opt(row["bits"]),
                  _opt(row["index_bits"]), f"{row['bytes']:,}", f"{row['bits_per_weight']:.2f}",
                  f"{row['ratio']:.1f}x" if row["ratio"] else "-")
    console.print(t)
    s = Table(title="coded streams: payload against the order-0 entropy bound",
              title_justify="left")
    for col in ("tensor", "stream", "coder", "symbols", "distinct", "payload B", "table B",
                "entropy B", "over bound"):
        s.add_column(col, justify="left" if col in ("tensor", "stream", "coder") else "right")
    for row in info["tensors"]:
        for stream, st in row["streams"].items():
            over = st["payload_overhead"]
            s.add_row(name(row["name"]), name(stream), name(st["coder"]), f"{st['count']:,}",
                      f"{st['distinct']:,}", f"{st['payload_bytes']:,}", f"{st['table_bytes']:,}",
                      f"{st['entropy_bits'] / 8:,.0f}",
                      "-" if over is None else f"{over:+.2%}")
    if s.row_count:
        console.print(s)
    console.print(f"total: {info['bytes']:,} bytes on disk (header + metadata "
                  f"{info['overhead_bytes']:,}); dense fp32 {info['dense_bytes']:,} bytes; ratio "
                  f"{info['ratio']:.1f}x; {info['bits_per_weight']:.2f} bits per weight"
                  if info["ratio"] else f"total: {info['bytes']:,} bytes on disk")


def _opt(value) -> str:
    return "-" if value is None else str(value)
