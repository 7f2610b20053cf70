"""``deepcompress history``: past qualification and nightly runs, from the terminal.

    deepcompress history [--db PATH|URL] [--name NAME] [--kind qualify|nightly] [--night DATE]
                         [--run ID] [--limit N] [--json]

``--db`` defaults to $DEEPCOMPRESS_HISTORY_DB, else ./qualify-out/history.sqlite (qualify's
default folder). A folder means its history.sqlite.
"""
from __future__ import annotations

import argparse
import json
import os

ENV = "DEEPCOMPRESS_HISTORY_DB"
DEFAULT_DB = "qualify-out/history.sqlite"


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--db", metavar="PATH|URL", help=f"the history (default: ${ENV}, else {DEFAULT_DB})")
    if command == "history":
        p.add_argument("--name", help="only this qualification or matrix")
        p.add_argument("--kind", choices=("qualify", "nightly"), help="only this kind of run")
        p.add_argument("--night", metavar="YYYY-MM-DD", help="only this night's cells")
        p.add_argument("--run", metavar="ID", help="one run in full: its figures and gates "
                                                    "(an id, latest or latest-passing)")
        p.add_argument("--limit", type=_count, default=20, help="newest N runs (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def _count(text: str) -> int:
    """A number of runs: a whole number, 0 or more (argparse turns ValueError into a usage line)."""
    if not (text.isascii() and text.isdecimal()) or len(text) > 18:
        raise ValueError(text)
    return int(text)


_count.__name__ = "number of runs (0 or more)"   # argparse names the type in its message


def open_db(args: argparse.Namespace):
    """The history named by --db, $DEEPCOMPRESS_HISTORY_DB or the default; it must exist
    (reading never creates one)."""
    from pathlib import Path

    from dccore.errors import UsageError
    from deepcompress.qualify.history import open_history, resolve_url

    db = args.db or os.environ.get(ENV) or DEFAULT_DB
    url = resolve_url(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no history at {db}: run 'deepcompress qualify' or 'nightly' first, "
                         f"or name one with --db (or ${ENV})")
    return open_history(db)


def main(args: argparse.Namespace) -> int:
    with open_db(args) as history:
        if args.run is not None:
            run = history.run(history.resolve_run(args.run))
            if run is None:
                from dccore.errors import UsageError

                raise UsageError(f"--run {args.run}: no such run in {history.where}")
            if args.json:
                print(json.dumps(run, indent=2, default=str))
            else:
                _print_run(run)
            return 0
        runs = history.runs(name=args.name, kind=args.kind, night=args.night,
                            limit=args.limit or None)
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    _print_runs(runs, history.where)
    return 0


def _print_runs(runs: list[dict], where: str) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..ui import printable, stdout_console

    table = Table(title=Text(f"history {printable(where)}"), title_justify="left")
    for col in ("run", "when", "kind", "name", "model", "night", "device", "ok", "git", "verdict"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(*(Text(printable(v)) for v in (
            r["id"], r["started_at"], r["kind"], r["name"], r["model"], r.get("night") or "",
            r.get("device_slot") or "", "PASS" if r["ok"] else "FAIL", r["git_revision"][:12],
            r["verdict"])))
    console = stdout_console()
    console.print(table)
    if not runs:
        console.print("no runs match", highlight=False)


def _print_run(run: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    from deepcompress.qualify._gates import fmt_value

    from ..ui import printable, stdout_console

    console = stdout_console()
    console.print(Text(printable(f"run {run['id']}: {run['kind']} {run['name']} ({run['model']}) "
                                 f"at {run['started_at']} on {run['host']}: "
                                 f"{'PASS' if run['ok'] else 'FAIL'} {run['verdict']}")))
    console.print(Text(printable(f"git {run['git_revision']} · recipe {run['recipe_sha256']}")))
    table = Table(title="figures", title_justify="left")
    for col in ("figure", "format", "device", "value", "artifact", "device fingerprint"):
        table.add_column(col, overflow="fold")
    for m in run["metrics"]:
        name = m["task_metric"] if m["figure"].endswith("metric") and m["task_metric"] else m["figure"]
        table.add_row(*(Text(printable(v)) for v in (name, m["format"] or "", m["device"] or "",
                                                fmt_value(m["value"], m["unit"]),
                                                (m["artifact_sha256"] or "")[:12],
                                                m["device_fingerprint"] or "")))
    console.print(table)
    gates = Table(title="gates", title_justify="left")
    for col in ("gate", "subject", "actual", "limit", "result"):
        gates.add_column(col, overflow="fold")
    for g in run["gates"]:
        result = f"skipped ({g['skipped']})" if g["skipped"] else "ok" if g["ok"] else f"FAIL {g['message']}"
        gates.add_row(*(Text(printable(v)) for v in (g["gate"], g["subject"], _n(g["actual"]),
                                                _n(g["limit"]), result)))
    console.print(gates)


def _n(value) -> str:
    return "-" if value is None else f"{value:.6g}"
