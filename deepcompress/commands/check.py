"""``deepcompress check``: a CI size gate for exported artifacts (``deepcompress.size_gate``).

    deepcompress check out/*.tflite out/*.mlpackage --budget budgets.toml [--baseline base.json]
                       [--update-baseline] [--junit report.xml] [--json]

Exit status: 0 when every check holds, 1 when one fails (with a table of failures), 2 on a usage
error (bad budgets file, missing artifact, artifact without a budget).
"""
from __future__ import annotations

import argparse

from ..size_gate import SizeGate, check_sizes
from ..ui import print_json


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.description = ("CI size gate: check each artifact's bytes and zipped bytes against its "
                     "budget and its growth over a stored baseline.")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".tflite files, .mlpackage folders, ...")
    p.add_argument("--budget", required=True, metavar="budgets.toml",
                   help="the budgets file (max_size_bytes, max_zipped_bytes, size_pct per artifact)")
    p.add_argument("--baseline", metavar="baseline.json",
                   help="sizes to measure growth against (default: the budgets file's 'baseline')")
    p.add_argument("--update-baseline", action="store_true",
                   help="record the current sizes as the baseline (growth is not checked this run)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML (one testcase per artifact x gate)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


def main(args: argparse.Namespace) -> int:
    gate = check_sizes(args.artifacts, args.budget, baseline=args.baseline,
                       update_baseline=args.update_baseline, junit_file=args.junit)
    if args.json:
        print_json(gate.to_dict())
    else:
        _print(gate)
    return 0 if gate.ok else 1


def _print(gate: SizeGate) -> None:
    from rich.table import Table  # noqa: PLC0415

    from ..qualify import fmt_value, gate_name, verdict
    from ..ui import printable, stdout_console

    ok, line = verdict(gate.gates)
    table = Table(title="size budgets" + ("" if ok else " - FAILED"))
    for col in ("artifact", "gate", "actual", "limit", "result"):
        table.add_column(col, justify="right" if col in ("actual", "limit") else "left")
    for g in sorted(gate.gates, key=lambda g: g.ok):   # failures first
        result = (f"skipped ({g.skipped})" if g.skipped else "ok" if g.ok
                  else f"[red]FAIL[/red] {printable(g.message)}")
        table.add_row(printable(g.subject), gate_name(g.gate, g.figure), fmt_value(g.actual, "B"),
                      fmt_value(g.limit, "B"), result)
    console = stdout_console()
    console.print(table)
    console.print(printable(f"{len(gate.sizes)} artifact(s): {line}"), markup=False, highlight=False)
    if gate.baseline_written is not None:
        console.print(printable(f"baseline: the sizes of {len(gate.sizes)} artifact(s) recorded in "
                                f"{gate.baseline_written}; growth is checked against them from the "
                                "next run"), markup=False, highlight=False)
