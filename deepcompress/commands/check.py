"""``deepcompress check``: a CI size gate for exported artifacts.

    deepcompress check out/*.tflite out/*.mlpackage --budget budgets.toml [--baseline base.json]
                       [--update-baseline] [--junit report.xml] [--json]

budgets.toml (see examples/budgets.toml)::

    baseline = "size-baseline.json"   # optional, relative to this file; --baseline overrides

    [defaults]                        # optional: applies to every artifact, entries override it
    max_growth_pct = 5.0

    [artifacts."*.tflite"]            # a file or package name, or a glob over names or paths
    max_bytes = 200_000               # on disk (a package: all its files)
    max_zipped_bytes = 60_000         # deflated, as inside an APK/IPA
    max_growth_pct = 2.0              # over the baseline's bytes and zipped bytes

An exact name beats a glob, a longer glob beats a shorter one. An artifact that no check
measures (no entry covers it and ``[defaults]`` sets no size limit, or its only limit is growth
and the baseline does not know it) is a usage error: a gate must not pass what it does not
measure. A baseline file the budgets name must exist; ``--update-baseline`` records the current
sizes as the baseline (written atomically) and growth is not checked in that run.

Exit status: 0 when every check holds, 1 when one fails (with a table of failures), 2 on a usage
error (bad budgets file, missing artifact, artifact without a budget).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dccore.outputs import (JSON_FILE, JUNIT_XML, check_output, write_bytes_atomic,
                            write_json_atomic)
from dccore.artifacts import ArtifactSize, artifact_size
from dccore.errors import BudgetError

LIMIT_KEYS = ("max_bytes", "max_zipped_bytes", "max_growth_pct")
TOP_KEYS = ("baseline", "defaults", "artifacts")


@dataclass(frozen=True)
class Budget:
    pattern: str
    max_bytes: int | None = None
    max_zipped_bytes: int | None = None
    max_growth_pct: float | None = None


@dataclass(frozen=True)
class Check:
    artifact: str
    check: str            # max_bytes | max_zipped_bytes | growth_bytes | growth_zipped_bytes
    limit: float
    actual: float | None
    ok: bool
    skipped: str = ""     # why a check did not run (no baseline entry)
    message: str = ""


def _limits(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise BudgetError(f"{where} must be a table of {', '.join(LIMIT_KEYS)}")
    unknown = sorted(set(table) - set(LIMIT_KEYS))
    if unknown:
        raise BudgetError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(LIMIT_KEYS)}")
    out = {}
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or not math.isfinite(value):
            raise BudgetError(f"{where}.{key} = {value!r}: expected a non-negative number")
        if key != "max_growth_pct" and not float(value).is_integer():
            raise BudgetError(f"{where}.{key} = {value!r}: expected a whole number of bytes")
        out[key] = int(value) if key != "max_growth_pct" else float(value)
    return out


def load_budgets(path: Path) -> tuple[list[Budget], dict[str, Any], Path | None]:
    """(entries in file order, defaults, baseline path) from a budgets TOML file."""
    from dccore import tomlfile

    data = tomlfile.read(path, "budgets file", error=BudgetError)[0]
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise BudgetError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed at the top level: "
                          f"{', '.join(TOP_KEYS)} (limits go under [artifacts.\"NAME\"] or [defaults])")
    defaults = _limits(data.get("defaults", {}), f"{path}: [defaults]")
    artifacts = data.get("artifacts", {})
    if not isinstance(artifacts, dict):
        raise BudgetError(f"{path}: 'artifacts' must be tables like [artifacts.\"*.tflite\"]")
    budgets = [Budget(pattern, **_limits(table, f"{path}: [artifacts.{json.dumps(pattern)}]"))
               for pattern, table in artifacts.items()]
    if not budgets and not defaults:
        raise BudgetError(f"{path}: no budgets; add [artifacts.\"NAME\"] tables or [defaults]")
    baseline = data.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise BudgetError(f"{path}: baseline must be a path string")
    return budgets, defaults, (path.parent / baseline) if baseline else None


def budget_for(artifact: Path, budgets: list[Budget], defaults: dict[str, Any]) -> dict[str, Any] | None:
    """Merged limits for one artifact: defaults, overridden by its most specific entry."""
    name = artifact.name
    exact = [b for b in budgets if b.pattern == name]
    globs = [b for b in budgets if b.pattern != name
             and (fnmatch.fnmatchcase(name, b.pattern) or fnmatch.fnmatchcase(str(artifact), b.pattern))]
    chosen = exact[0] if exact else max(globs, key=lambda b: len(b.pattern), default=None)
    if chosen is None and not defaults:
        return None
    limits = dict(defaults)
    if chosen is not None:
        limits.update({k: v for k, v in asdict(chosen).items() if k != "pattern" and v is not None})
        limits["pattern"] = chosen.pattern
    return limits


def _growth(name: str, what: str, now: int, base: Any, pct: float) -> Check:
    check = f"growth_{what}"
    if not isinstance(base, int) or base <= 0:
        return Check(name, check, pct, None, True, skipped="no baseline")
    growth = 100.0 * (now - base) / base
    ok = growth <= pct
    msg = "" if ok else f"{what.replace('_', ' ')} grew {growth:.1f}% ({base:,} -> {now:,}), limit {pct:g}%"
    return Check(name, check, pct, round(growth, 3), ok, message=msg)


def run_checks(artifacts: list[Path], budgets: list[Budget], defaults: dict[str, Any],
               baseline: dict[str, Any] | None, *, recording: bool = False
               ) -> tuple[list[Check], dict[str, ArtifactSize]]:
    """Measure each artifact against its limits. ``recording``: this run records the baseline,
    so an artifact whose only limit is growth counts as measured (from the next run on)."""
    sizes, checks = {}, []
    for path in artifacts:
        limits = budget_for(path, budgets, defaults)
        if limits is None:
            raise BudgetError(f"artifact {path.name} matches no budget; add [artifacts.\"{path.name}\"] "
                              "or a [defaults] table to the budgets file")
        size = sizes[path.name] = artifact_size(path)
        for key, actual in (("max_bytes", size.bytes), ("max_zipped_bytes", size.zipped_bytes)):
            if key in limits:
                ok = actual <= limits[key]
                msg = "" if ok else f"{actual:,} bytes > {limits[key]:,} ({key.removeprefix('max_')})"
                checks.append(Check(path.name, key, limits[key], actual, ok, message=msg))
        if "max_growth_pct" in limits and baseline is not None:
            base = baseline.get(path.name, {})
            for what, now in (("bytes", size.bytes), ("zipped_bytes", size.zipped_bytes)):
                checks.append(_growth(path.name, what, now, base.get(what), limits["max_growth_pct"]))
        measured = any(c.artifact == path.name and not c.skipped for c in checks)
        if not measured and not (recording and "max_growth_pct" in limits):
            raise BudgetError(f"artifact {path.name} is not measured by any budget (no size limit "
                              "covers it, and the baseline does not know it for a growth check); "
                              f"add [artifacts.\"{path.name}\"] with max_bytes to the budgets file")
    return checks, sizes


def _read_baseline(path: Path | None, *, must_exist: bool = True) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.exists():
        if must_exist:
            raise BudgetError(f"baseline {path} does not exist; record the current sizes once with "
                              "--update-baseline (and commit the file), or drop 'baseline' from "
                              "the budgets file")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BudgetError(f"baseline {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise BudgetError(f"baseline {path} must map artifact names to {{\"bytes\", \"zipped_bytes\"}}")
    return data


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold shown as \\xNN (a file name may hold any)."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def junit_xml(checks: list[Check]) -> bytes:
    """One testcase per artifact x check (classname = artifact, name = check)."""
    suite = ET.Element("testsuite", name="deepcompress.check", tests=str(len(checks)),
                       failures=str(sum(not c.ok for c in checks)),
                       skipped=str(sum(bool(c.skipped) for c in checks)))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=xml_text(c.artifact), name=c.check)
        if c.skipped:
            ET.SubElement(case, "skipped", message=c.skipped)
        elif not c.ok:
            ET.SubElement(case, "failure", message=xml_text(c.message),
                          type="SizeBudgetExceeded").text = xml_text(f"{c.artifact}: {c.message}")
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.description = ("CI size gate: check each artifact's bytes and zipped bytes against its "
                     "budget and its growth over a stored baseline.")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".tflite files, .mlpackage folders, ...")
    p.add_argument("--budget", required=True, metavar="budgets.toml", help="the budgets file")
    p.add_argument("--baseline", metavar="baseline.json",
                   help="sizes to measure growth against (default: the budgets file's 'baseline')")
    p.add_argument("--update-baseline", action="store_true",
                   help="record the current sizes as the baseline (growth is not checked this run)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML (one testcase per artifact x check)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


def main(args: argparse.Namespace) -> int:
    budgets, defaults, baseline_path = load_budgets(Path(args.budget))
    if args.baseline:
        baseline_path = Path(args.baseline)
    artifacts = [Path(a) for a in args.artifacts]
    missing = [str(a) for a in artifacts if not a.exists()]
    if missing:
        raise BudgetError(f"artifact(s) not found: {', '.join(missing)}")
    if args.update_baseline and baseline_path is None:
        raise BudgetError("--update-baseline needs --baseline FILE or 'baseline' in the budgets file")
    if args.junit:   # report files get their folder made, as pytest's --junitxml does
        check_output(args.junit, JUNIT_XML, flag="--junit", make_parents=True)
    if args.update_baseline:
        check_output(baseline_path, JSON_FILE, flag="baseline", make_parents=True)
    baseline = None if args.update_baseline else _read_baseline(baseline_path)
    checks, sizes = run_checks(artifacts, budgets, defaults, baseline,
                               recording=args.update_baseline)
    if args.update_baseline:
        merged = _read_baseline(baseline_path, must_exist=False) or {}
        merged.update({name: s.to_dict() for name, s in sizes.items()})
        write_json_atomic(baseline_path, merged, kind=JSON_FILE)
    if args.junit:
        write_bytes_atomic(args.junit, junit_xml(checks), kind=JUNIT_XML)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "artifacts": {n: s.to_dict() for n, s in sizes.items()},
                          "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        _print(checks, sizes, ok)
    return 0 if ok else 1


def _print(checks: list[Check], sizes: dict[str, ArtifactSize], ok: bool) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(title="size budgets" + ("" if ok else " - FAILED"))
    for col in ("artifact", "check", "actual", "limit", "result"):
        table.add_column(col, justify="right" if col in ("actual", "limit") else "left")
    for c in sorted(checks, key=lambda c: c.ok):   # failures first
        pct = c.check.startswith("growth")
        actual = "-" if c.actual is None else (f"{c.actual:+.1f}%" if pct else f"{int(c.actual):,}")
        limit = f"{c.limit:g}%" if pct else f"{int(c.limit):,}"
        result = (f"skipped ({c.skipped})" if c.skipped else "ok" if c.ok else f"[red]FAIL[/red] {c.message}")
        table.add_row(c.artifact, c.check, actual, limit, result)
    console.print(table)
    failed = sum(not c.ok for c in checks)
    console.print(f"{len(sizes)} artifact(s), {len(checks)} check(s), {failed} failed")
