"""``deepcompress qualify``: one command that says whether a model ships.

    deepcompress qualify CONFIG.toml [--out DIR] [--db PATH|URL] [--budgets FILE]
                         [--max-size-bytes N ...] [--json] [--quiet]

Compresses (reusing a finished or partly finished run of the same recipe), exports, benches
every device, judges every figure against its budget and against the last passing run, records
the run in the history and writes DIR/report.html, DIR/junit.xml and DIR/results.json.

Exit status: 0 every budget holds, 1 a budget failed, 2 a configuration or usage error (found
before any work).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_OUT = "qualify-out"


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    from deepcompress.qualify import BUDGET_FLAGS, BUDGET_KEYS, REGRESSION_KEYS

    p.description = ("Compress, export and bench a model on every device of CONFIG, gate every "
                     "figure against its budget and the last passing run, record the run in "
                     "the history, and write DIR/report.html, DIR/junit.xml, DIR/results.json. "
                     "Exit 0: every budget holds; 1: one failed; 2: configuration error.")
    from ..cli import CODE_NOTE

    p.epilog = CODE_NOTE
    p.add_argument("config", metavar="CONFIG.toml", help="the qualification config "
                   "(see examples/qualify_lenet300.toml)")
    p.add_argument("--out", "-o", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder to write (default: {DEFAULT_OUT}); a folder of other files is refused")
    p.add_argument("--db", metavar="PATH|URL",
                   help="the history: an SQLite file or a SQLAlchemy URL (postgresql://...) "
                        "(default: the config's [history] db, else DIR/history.sqlite)")
    p.add_argument("--budgets", metavar="FILE.toml",
                   help="budgets from this file instead of the config's [budgets]")
    group = p.add_argument_group("budget overrides (win over the config and every per-format or "
                                 "per-device entry)")
    helps = {**BUDGET_KEYS, **REGRESSION_KEYS}
    for option, (_section, key) in BUDGET_FLAGS.items():
        group.add_argument(option, type=float, metavar="N", dest=_dest(option), help=helps[key])
    p.add_argument("--json", action="store_true", help="print results.json on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def _dest(option: str) -> str:
    return "budget_" + option.lstrip("-").replace("-", "_")


def main(args: argparse.Namespace) -> int:
    from deepcompress.qualify import BUDGET_FLAGS, load_qualify_config, qualify

    from ..ui import Ui, print_json

    flags = {option: getattr(args, _dest(option)) for option in BUDGET_FLAGS}
    config = load_qualify_config(args.config, budgets_file=args.budgets, flags=flags)
    ui = Ui(enabled=not (args.quiet or args.json))
    with ui:
        result = qualify(config, Path(args.out), db=args.db, ui=ui, log=ui.log)
    if args.json:
        print_json(json.loads(Path(args.out, "results.json").read_text()))
    else:
        _print(result.results, Path(args.out))
    from ..ui import printable

    print(printable(("PASS" if result.ok else "FAIL") + f" {config.name}: {result.verdict} (run "
                    f"{result.run_id}, {result.results['phases']['total']:.1f} s; "
                    f"{args.out}/report.html)"),
          file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0 if result.ok else 1


def _print(results: dict, out: Path) -> None:
    from deepcompress.qualify import FIGURES, fmt_value, gate_name

    from ..ui import print_table, printable, stdout_console

    rows = []
    for g in sorted(results["gates"], key=lambda g: (g["ok"], bool(g.get("skipped")))):
        unit = FIGURES.get(g["figure"], ("",))[0]
        result = (f"skipped ({g['skipped']})" if g.get("skipped") else "ok" if g["ok"]
                  else f"FAIL {g.get('message') or ''}")
        rows.append((gate_name(g["gate"], g["figure"]), g["subject"],
                     fmt_value(g.get("actual"), unit), fmt_value(g.get("limit"), unit), result))
    console = stdout_console()
    print_table(f"qualify {results['name']}: gates", ("gate", "subject", "actual", "limit", "result"),
                rows, right=("actual", "limit"), console=console)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in results["phases"].items())
    console.print(printable(f"phases: {phases}; files in {out}/"), markup=False, highlight=False)
