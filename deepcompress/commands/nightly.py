"""``deepcompress nightly``: a matrix of models x devices, once a night, against rolling baselines.

    deepcompress nightly MATRIX.toml [--out DIR] [--db PATH|URL] [--night YYYY-MM-DD]
                         [--device SLOT=SPEC ...] [--slot SLOT ...] [--retry-failed] [--no-wait]
                         [--json] [--quiet]

Several hosts work one matrix through one PostgreSQL (``--db postgresql://...``): each claims
cells of the device slots it serves; a cell runs once. Run it again after an interruption: the
cells already recorded stay, the others run. Writes DIR/report.html, DIR/junit.xml and
DIR/results.json. Exit status: 0 every cell of the night passes, 1 one failed (a regression, a
budget, an unreachable device), 2 a configuration or usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_OUT = "nightly-out"


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    from ..cli import CODE_NOTE

    p.epilog = CODE_NOTE
    p.add_argument("matrix", metavar="MATRIX.toml", help="the matrix (see examples/nightly_lenet.toml)")
    p.add_argument("--out", "-o", default=DEFAULT_OUT, metavar="DIR",
                   help=f"work folder and reports (default: {DEFAULT_OUT})")
    p.add_argument("--db", metavar="PATH|URL",
                   help="the history shared by the hosts: an SQLite file (one host) or "
                        "postgresql://... (default: the matrix's [history] db, else DIR/history.sqlite)")
    p.add_argument("--night", metavar="YYYY-MM-DD", help="the night to work (default: today, UTC)")
    p.add_argument("--device", action="append", default=[], metavar="SLOT=SPEC",
                   help="this host's device for a slot of the matrix (repeatable)")
    p.add_argument("--slot", action="append", default=[], metavar="SLOT",
                   help="serve only these slots (default: all of the matrix's)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again tonight's cells that failed (an unreachable device)")
    p.add_argument("--no-wait", action="store_true",
                   help="leave when this host's cells are done, without waiting for other hosts' "
                        "cells (whose lease may expire)")
    p.add_argument("--json", action="store_true", help="print results.json on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def _overrides(pairs: list[str]) -> dict[str, str]:
    from dccore.errors import UsageError

    out = {}
    for pair in pairs:
        slot, sep, spec = pair.partition("=")
        if not sep or not slot or not spec:
            raise UsageError(f"--device {pair!r}: expected SLOT=SPEC, e.g. pixel7=192.168.1.20:5555")
        out[slot] = spec
    return out


def main(args: argparse.Namespace) -> int:
    from deepcompress.qualify import load_matrix, run_nightly

    from ..ui import Ui, print_json

    matrix = load_matrix(args.matrix, device_overrides=_overrides(args.device))
    ui = Ui(enabled=not (args.quiet or args.json))
    with ui:
        result = run_nightly(matrix, Path(args.out), db=args.db, night=args.night,
                             slots=args.slot or None, retry_failed=args.retry_failed,
                             wait=not args.no_wait, log=ui.log)
    if args.json:
        print_json(json.loads(Path(args.out, "results.json").read_text()))
    else:
        _print(result.summary)
    s = result.summary
    from ..ui import printable

    print(printable(("PASS" if result.ok else "FAIL") + f" {s['matrix']} {s['night']}: "
                    f"{result.verdict} ({len(result.ran)} cell(s) run here, {s['seconds']:.1f} s; "
                    f"{args.out}/report.html)"),
          file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0 if result.ok else 1


def _print(summary: dict) -> None:
    from ..ui import print_table

    print_table(f"nightly {summary['matrix']} {summary['night']}",
                ("model", "device", "state", "attempts", "run", "verdict"),
                [(c["model"], c["device"], c["state"], c["attempts"], c.get("run_id") or "-",
                  c.get("verdict") or c.get("error") or "") for c in summary["cells"]])
