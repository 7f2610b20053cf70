"""``deepcompress compare RUN_A RUN_B``: two runs of the history side by side.

    deepcompress compare RUN_A RUN_B [--db PATH|URL] [--json]

RUN is a run id (``deepcompress history``), ``latest`` or ``latest-passing``. Each figure of
either run is a row: its value in A and in B, and the change (for sizes, latency and memory a
negative change is an improvement; for the metric a positive one).
"""
from __future__ import annotations

import argparse
import json

from .history import add_arguments as _history_arguments
from .history import open_db


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="a run id, latest or latest-passing")
    p.add_argument("run_b", metavar="RUN_B", help="a run id, latest or latest-passing")
    _history_arguments(p, command)


def compare_runs(a: dict, b: dict) -> list[dict]:
    """One row per figure (by figure, format, device, task metric), A's value beside B's."""
    def key(m: dict) -> tuple:
        return (m["figure"], m["format"] or "", m["device"] or "", m["task_metric"] or "")

    left = {key(m): m for m in a["metrics"]}
    right = {key(m): m for m in b["metrics"]}
    rows = []
    for k in list(left) + [k for k in right if k not in left]:
        ma, mb = left.get(k), right.get(k)
        va, vb = (ma or {}).get("value"), (mb or {}).get("value")
        m = ma or mb
        change = None if va is None or vb is None else vb - va
        pct = None if change is None or not va else 100.0 * change / va
        better = None
        if change is not None and change != 0:
            better = (change > 0) == bool(m["higher_is_better"])
        rows.append({"figure": k[0], "format": k[1] or None, "device": k[2] or None,
                     "task_metric": k[3] or None, "unit": m["unit"], "a": va, "b": vb,
                     "change": change, "change_pct": pct, "better": better,
                     "same_device": (ma or {}).get("device_fingerprint") == (mb or {}).get("device_fingerprint")})
    return rows


def main(args: argparse.Namespace) -> int:
    from dccore.errors import UsageError

    with open_db(args) as history:
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
        print(json.dumps({"a": {k: a.get(k) for k in fields}, "b": {k: b.get(k) for k in fields},
                          "figures": rows}, indent=2, default=str))
        return 0
    _print(a, b, rows)
    return 0


def _print(a: dict, b: dict, rows: list[dict]) -> None:
    from rich.table import Table
    from rich.text import Text

    from deepcompress.qualify._gates import fmt_value

    from ..ui import printable, stdout_console

    table = Table(title=f"run {a['id']} vs run {b['id']}", title_justify="left")
    table.add_column("")
    table.add_column(f"A: run {a['id']}", overflow="fold")
    table.add_column(f"B: run {b['id']}", overflow="fold")
    table.add_column("change", justify="right")
    for label, key in (("kind / name", None), ("when", "started_at"), ("verdict", "verdict"),
                       ("git", "git_revision"), ("recipe", "recipe_sha256")):
        va = f"{a['kind']} {a['name']} ({a['model']})" if key is None else str(a.get(key))
        vb = f"{b['kind']} {b['name']} ({b['model']})" if key is None else str(b.get(key))
        table.add_row(Text(label), Text(printable(va)), Text(printable(vb)),
                      Text("" if va == vb else "differs"))
    for r in rows:
        name = r["task_metric"] if r["figure"].endswith("metric") and r["task_metric"] else r["figure"]
        where = " ".join(x for x in (r["format"], f"on {r['device']}" if r["device"] else "") if x)
        change = "-" if r["change"] is None else (
            f"{r['change_pct']:+.1f}%" if r["change_pct"] is not None else f"{r['change']:+.4g}")
        if r["better"] is not None:
            change += " better" if r["better"] else " worse"
        if r["a"] is not None and r["b"] is not None and not r["same_device"]:
            change += " (other device)"
        table.add_row(Text(printable(f"{name} {where}".strip())), Text(fmt_value(r["a"], r["unit"])),
                      Text(fmt_value(r["b"], r["unit"])), Text(change))
    stdout_console().print(table)
