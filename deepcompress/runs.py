"""A recipe run's folder, and the overrides its callers apply to the recipe.

``check_run_folder`` is the one rule for the folders a recipe runs into (``deepcompress run``
and ``sweep``, qualify's compress phase): new, empty, or a deepcompress run folder (its marker,
``dccore.outputs``). ``apply_override`` is ``--set KEY=VALUE`` (and a qualify config's
``overrides``), checked against the recipe's schema before it is applied.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from dccore.errors import RecipeError, UsageError


def check_run_folder(out: Path, *, force: bool, resuming: bool, claim: bool = True) -> None:
    """Refuse ``--out`` before any work unless writing there destroys nothing of the user's:
    a new or empty folder, or a deepcompress run folder (it carries our marker, see
    dccore.outputs.check_folder; a finished one only with --force or --resume-from). Then take
    it (``claim``: create it and write the marker), so that a run killed half-way can be resumed
    or re-run. A re-run starts by removing the old report, so a run killed half-way leaves a
    folder without a report (unfinished), never a report that describes other files."""
    from dccore.outputs import JSON_FILE, check_folder, claim_folder

    # a finished run written before run folders carried a marker is taken as ours (an
    # unfinished one of that age cannot be told from a user's folder: it is refused)
    if check_folder(out, "run", legacy=lambda p: finished_run(p) is not None) is not None:
        report = out / "report.json"
        if report.exists() and not (force or resuming):
            raise UsageError(f"--out {out} holds a finished run; pass --force to run again into "
                             "it (its files are replaced), --resume-from STAGE to redo stages, "
                             "or choose another folder")
        if report.exists() and not resuming:
            if not JSON_FILE.owns(report):
                raise UsageError(f"{report} is not a deepcompress report; move it away first")
            report.unlink()
    if claim:
        claim_folder(out, "run")


def finished_run(out: Path, sha256: str | None = None) -> dict[str, Any] | None:
    """The report of the finished run in ``out`` (of the recipe whose sha256 is ``sha256``; of
    any recipe: None), else None. Finished: its recipe.json is the pipeline's ({"recipe": ...,
    "sha256": ...}), and its report.json names that recipe and the sha256 of the model.dcz
    beside it (``pipeline.read_report``), which no folder of the user's does by chance."""
    from compression.pipeline import read_report
    from dccore.errors import CheckpointError
    from dccore.outputs import JSON_FILE

    if not (JSON_FILE.owns(out / "recipe.json") and JSON_FILE.owns(out / "report.json")):
        return None
    try:
        saved = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
        if not (isinstance(saved, dict) and isinstance(saved.get("recipe"), dict)
                and isinstance(saved.get("sha256"), str) and sha256 in (None, saved["sha256"])):
            return None
        report = read_report(out)
    except (OSError, ValueError, CheckpointError):
        return None
    return report if report.get("recipe_sha256") == saved["sha256"] else None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.0.c=VALUE`` to a recipe dict; VALUE is parsed as TOML (strings may be bare).

    The key path and the value are checked against the recipe's schema first, so a typo is
    blamed on the flag (``--set baseline.epoch=1: unknown key 'epoch' in baseline; allowed:
    [...]``), not on the recipe file."""
    from compression.recipe import check_override

    key, sep, raw = assignment.partition("=")
    flag = f"--set {assignment if len(assignment) <= 100 else key + '=...'}"
    if not sep or not key:
        raise RecipeError(f"{flag}: expected KEY=VALUE, e.g. baseline.epochs=2")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise RecipeError(f"{flag}: the value is nested too deeply") from None
    parts = key.split(".")
    try:
        check_override(data, key, value)
    except RecipeError as exc:
        raise RecipeError(f"{flag}: {exc}") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{flag}: no item {part} in {'.'.join(parts[:i]) or 'recipe'}")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, [] if nxt_is_index else {})
        else:
            raise RecipeError(f"{flag}: {'.'.join(parts[:i])} is a single value, not a table")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"{flag}: no item {last}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"{flag}: {'.'.join(parts[:-1])} is a single value, not a table")
