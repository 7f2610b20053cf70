"""``deepcompress history`` and ``deepcompress compare``: past qualification and nightly runs,
from the terminal.

    deepcompress history [--db PATH|URL] [--name NAME] [--kind qualify|nightly] [--night DATE]
                         [--run ID] [--limit N] [--json]
    deepcompress compare RUN_A RUN_B [--db PATH|URL] [--json]

``--db`` defaults to $DEEPCOMPRESS_HISTORY_DB, else ./qualify-out/history.sqlite (qualify's
default folder). A folder means its history.sqlite.

For compare, RUN is a run id (``deepcompress history``), ``latest`` or ``latest-passing``. Each
figure of either run is a row: its value in A and in B, and the change (for sizes, latency and
memory a negative change is an improvement; for the metric a positive one).
"""
from __future__ import annotations

import argparse

from ..history import DEFAULT_DB, ENV, compare_runs, open_db
from ..ui import print_json


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    if command == "compare":
        p.add_argument("run_a", metavar="RUN_A", help="a run id, latest or latest-passing")
        p.add_argument("run_b", metavar="RUN_B", help="a run id, latest or latest-passing")
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


def main(args: argparse.Namespace) -> int:
    if args.command == "compare":
        return _compare(args)
    with open_db(args.db) as history:
        if args.run is not None:
            run = history.run(history.resolve_run(args.run))
            if run is None:
                from dccore.errors import UsageError

                raise UsageError(f"--run {args.run}: no such run in {history.where}")
            if args.json:
                print_json(run)
            else:
                _print_run(run)
            return 0
        runs = history.runs(name=args.name, kind=args.kind, night=args.night,
                            limit=args.limit or None)
    if args.json:
        print_json(runs)
        return 0
    _print_runs(runs, history.where)
    return 0


def _print_runs(runs: list[dict], where: str) -> None:
    from ..ui import print_table, stdout_console

    console = stdout_console()
    print_table(f"history {where}", ("run", "when", "kind", "name", "model", "night", "device", "ok",
                                     "git", "verdict"),
                [(r["id"], r["started_at"], r["kind"], r["name"], r["model"], r.get("night") or "",
                  r.get("device_slot") or "", "PASS" if r["ok"] else "FAIL", r["git_revision"][:12],
                  r["verdict"]) for r in runs], console=console)
    if not runs:
        console.print("no runs match", highlight=False)


def _print_run(run: dict) -> None:
    from rich.text import Text

    from deepcompress.qualify import fmt_value

    from ..ui import print_table, printable, stdout_console

    console = stdout_console()
    console.print(Text(printable(f"run {run['id']}: {run['kind']} {run['name']} ({run['model']}) "
                                 f"at {run['started_at']} on {run['host']}: "
                                 f"{'PASS' if run['ok'] else 'FAIL'} {run['verdict']}")))
    console.print(Text(printable(f"git {run['git_revision']} · recipe {run['recipe_sha256']}")))
    print_table("figures", ("figure", "format", "device", "value", "artifact", "device fingerprint"),
                [(m["task_metric"] if m["figure"].endswith("metric") and m["task_metric"]
                  else m["figure"], m["format"] or "", m["device"] or "",
                  fmt_value(m["value"], m["unit"]), (m["artifact_sha256"] or "")[:12],
                  m["device_fingerprint"] or "") for m in run["metrics"]], console=console)
    print_table("gates", ("gate", "subject", "actual", "limit", "result"),
                [(g["gate"], g["subject"], _n(g["actual"]), _n(g["limit"]),
                  f"skipped ({g['skipped']})" if g["skipped"] else "ok" if g["ok"]
                  else f"FAIL {g['message']}") for g in run["gates"]], console=console)


def _n(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _compare(args: argparse.Namespace) -> int:
    from dccore.errors import UsageError

    with open_db(args.db) as history:
        runs = []
        for ref in (args.run_a, args.run_b):
            run = history.run(history.resolve_run(ref))
            if run is None:
                raise UsageError(f"run {ref}: not in the history {history.where}")
            runs.append(run)
    a, b = runs
    rows = compare_runs(a, b)
    fields = ("id", "kind", "name", "model", "night", "device_slot", "started_at", "ok", "verdict",
              "git_revision", "recipe_sha256")
    if args.json:
        print_json({"a": {k: a.get(k) for k in fields}, "b": {k: b.get(k) for k in fields},
                    "figures": rows})
        return 0
    _print_compare(a, b, rows)
    return 0


def _print_compare(a: dict, b: dict, rows: list[dict]) -> None:
    from deepcompress.qualify import fmt_value

    from ..ui import print_table

    table = []
    for label, key in (("kind / name", None), ("when", "started_at"), ("verdict", "verdict"),
                       ("git", "git_revision"), ("recipe", "recipe_sha256")):
        va = f"{a['kind']} {a['name']} ({a['model']})" if key is None else str(a.get(key))
        vb = f"{b['kind']} {b['name']} ({b['model']})" if key is None else str(b.get(key))
        table.append((label, va, vb, "" if va == vb else "differs"))
    for r in rows:
        name = r["task_metric"] if r["figure"].endswith("metric") and r["task_metric"] else r["figure"]
        where = " ".join(x for x in (r["format"], f"on {r['device']}" if r["device"] else "") if x)
        change = "-" if r["change"] is None else (
            f"{r['change_pct']:+.1f}%" if r["change_pct"] is not None else f"{r['change']:+.4g}")
        if r["better"] is not None:
            change += " better" if r["better"] else " worse"
        if r["a"] is not None and r["b"] is not None and not r["same_device"]:
            change += " (other device)"
        table.append((f"{name} {where}".strip(), fmt_value(r["a"], r["unit"]),
                      fmt_value(r["b"], r["unit"]), change))
    print_table(f"run {a['id']} vs run {b['id']}", ("", f"A: run {a['id']}", f"B: run {b['id']}",
                                                     "change"), table, right=("change",))
