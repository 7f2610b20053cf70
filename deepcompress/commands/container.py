"""``deepcompress pack | unpack | inspect``: write, decode and examine .dcz files."""
from __future__ import annotations

import argparse
import sys

from dccore.errors import ContainerError
from dcz import CODERS

from ..cli import json_object
from ..ui import print_json


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


def _pack(args: argparse.Namespace) -> int:
    from ..packing import PackSettings, pack

    kwargs = json_object(args.model_kwargs, "--model-kwargs", ContainerError) or {}
    settings = PackSettings(sparsity=args.sparsity, bits=args.bits, group_size=args.group_size,
                            grid=args.grid, layer=args.layer, bits_for=args.bits_for)
    report, notes = pack(args.checkpoint, args.out, model=args.model, model_kwargs=kwargs,
                         settings=settings, coder=args.coder, index_bits=args.index_bits,
                         plain_dtype=args.plain_dtype, metadata=args.metadata)
    for note in notes:
        print(f"deepcompress pack: note: {note}", file=sys.stderr)
    if args.json:
        print_json({**report.as_dict(), "notes": notes})
    else:
        meta_bytes = report.bytes - sum(t.bytes for t in report.tensors)
        print(f"wrote {report.path}: {report.bytes:,} bytes ({report.coder}); dense fp32 "
              f"{report.dense_bytes:,} bytes; ratio {report.ratio:.1f}x")
        print(f"  of which header and metadata {meta_bytes:,} bytes (a run's model.dcz also "
              "carries its resolved recipe and accuracies, so it differs by about that much)")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    from ..packing import unpack

    summary = unpack(args.file, args.out)
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {args.out}: {summary['tensors']} tensors decoded from {summary['file']}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dcz import inspect

    info = inspect(args.file)
    if args.json:
        print_json(info)
        return 0
    _print_tables(info)
    return 0


def _print_tables(info: dict) -> None:
    from ..ui import print_table, stdout_console

    console = stdout_console(width=132)
    columns = ("tensor", "shape", "storage", "density", "bits", "gap bits", "bytes", "bits/weight",
               "ratio")   # a file's own words (names): shown, never obeyed (nor markup)
    print_table(f"{info['path']}  (format v{info['format_version']}, coder {info['coder']})",
                columns, [(row["name"], "x".join(map(str, row["shape"])) or "scalar",
                           row["storage"], f"{row['density']:.1%}", _opt(row["bits"]),
                           _opt(row["index_bits"]), f"{row['bytes']:,}",
                           f"{row['bits_per_weight']:.2f}",
                           f"{row['ratio']:.1f}x" if row["ratio"] else "-")
                          for row in info["tensors"]],
                right=columns[3:], overflow="ellipsis", console=console)
    columns = ("tensor", "stream", "coder", "symbols", "distinct", "payload B", "table B",
               "entropy B", "over bound")
    rows = [(row["name"], stream, st["coder"], f"{st['count']:,}", f"{st['distinct']:,}",
             f"{st['payload_bytes']:,}", f"{st['table_bytes']:,}", f"{st['entropy_bits'] / 8:,.0f}",
             "-" if st["payload_overhead"] is None else f"{st['payload_overhead']:+.2%}")
            for row in info["tensors"] for stream, st in row["streams"].items()]
    if rows:
        print_table("coded streams: payload against the order-0 entropy bound", columns, rows,
                    right=columns[3:], overflow="ellipsis", console=console)
    console.print(f"total: {info['bytes']:,} bytes on disk (header + metadata "
                  f"{info['overhead_bytes']:,}); dense fp32 {info['dense_bytes']:,} bytes; ratio "
                  f"{info['ratio']:.1f}x; {info['bits_per_weight']:.2f} bits per weight"
                  if info["ratio"] else f"total: {info['bytes']:,} bytes on disk")


def _opt(value) -> str:
    return "-" if value is None else str(value)
