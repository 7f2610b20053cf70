"""``deepcompress sweep``: how many neural bits does the task need? (Ravi 2017, §4)

Runs a ProjectionNet recipe (default: the shipped ``projectionnet``) once per setting of the
projection and of its FC layers and plots the task's metric against the shipped model's bits
(``deepcompress.sweeping``). Writes ``DIR/sweep.json`` (one row per point) and ``DIR/sweep.png``.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from dccore.errors import UsageError

from ..cli import CODE_NOTE
from ..sweeping import PLOT_FILE, SWEEP_FILE, read_mark, sweep

DEFAULT_RECIPE = "projectionnet"


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.epilog = CODE_NOTE
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                   help=f"a ProjectionNet recipe (default: the shipped {DEFAULT_RECIPE})")
    p.add_argument("--out", "-o", required=True, metavar="DIR",
                   help="sweep folder: one run folder per point, sweep.json, sweep.png")
    p.add_argument("--T", dest="T", default="8,20,60", metavar="LIST",
                   help="projection functions, comma separated (default: 8,20,60)")
    p.add_argument("--d", dest="d", default="10", metavar="LIST",
                   help="bits per projection function (default: 10)")
    p.add_argument("--hidden", action="append", metavar="WIDTHS",
                   help="FC layers between the bits and the output, e.g. '' (none) or 128 or "
                        "256,64; repeatable (default: none, and one of 128)")
    p.add_argument("--mark", action="append", default=[], metavar="RUN_DIR",
                   help="a finished Deep Compression run folder (its report.json) to mark on "
                        "the chart; repeatable")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value for every point, e.g. --set stages.0.epochs=5")
    p.add_argument("--data", metavar="DIR", help="IDX dataset folder (as for run)")
    p.add_argument("--force", action="store_true",
                   help="re-run points whose folder holds a run of another recipe")
    p.add_argument("--json", action="store_true", help="print sweep.json on stdout, nothing else")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")


def _ints(text: str, flag: str, allow_empty: bool = False) -> list[int]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts and not allow_empty:
        raise UsageError(f"{flag} {text!r}: give one or more positive integers, e.g. 8,20,60")
    try:
        values = [int(s) for s in parts]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected positive integers, e.g. 8,20,60") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: expected positive integers")
    return values


def grid(args: argparse.Namespace) -> list[tuple[int, int, list[int]]]:
    hidden = args.hidden if args.hidden is not None else ["", "128"]
    widths = [_ints(h, "--hidden", allow_empty=True) for h in hidden]
    return [(t, d, h) for t, d, h in itertools.product(
        _ints(args.T, "--T"), _ints(args.d, "--d"), widths)]


def main(args: argparse.Namespace) -> int:
    from ..ui import Ui, print_json

    out = Path(args.out)
    points = grid(args)
    marks = [read_mark(m) for m in args.mark]      # before any work
    ui = Ui(enabled=not (args.quiet or args.json))
    with ui:
        result = sweep(args.recipe, out, points, marks=marks, overrides=args.overrides,
                       data_root=args.data, force=args.force, progress=ui.progress, log=ui.log)
    if args.json:
        print_json(result)
    elif not args.quiet:
        for r in result["points"]:
            print(f"T={r['T']:>4} d={r['d']:>3} hidden={r['hidden'] or '-':<10} "
                  f"{r['metric']} {r['value']:.4f}  {r['model_bits']:>10,} bits shipped  "
                  f"(trainer {r['trainer_value'] or float('nan'):.4f}, "
                  f"{r['trainer_bits'] or 0:,} bits)")
        print(f"wrote {out / SWEEP_FILE} and {out / PLOT_FILE}")
    return 0
