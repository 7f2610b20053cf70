"""The CI size gate behind ``deepcompress check``: each artifact's bytes and zipped bytes against
its budget, and its growth over a stored baseline, judged as qualify judges them (its figures,
gates, verdict and JUnit).

budgets.toml (see examples/budgets.toml), in the budget vocabulary qualify's configs use::

    baseline = "size-baseline.json"   # optional, relative to this file; --baseline overrides

    [defaults]                        # optional: applies to every artifact, entries override it
    size_pct = 5.0

    [artifacts."*.tflite"]            # a file or package name, or a glob over names or paths
    max_size_bytes = 200_000          # on disk (a package: all its files)
    max_zipped_bytes = 60_000         # deflated, as inside an APK/IPA
    size_pct = 2.0                    # growth over the baseline's bytes and zipped bytes, percent

An exact name beats a glob, a longer glob beats a shorter one. An artifact that no gate
measures (no entry covers it and ``[defaults]`` sets no size limit, or its only limit is growth
and the baseline does not know it) is a usage error: a gate must not pass what it does not
measure. A baseline file the budgets name must exist; ``update_baseline`` records the current
sizes as the baseline (written atomically) and growth is not checked in that run. Every error
here is a ConfigError (exit 2) naming the file and the field.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from dccore import tomlfile
from dccore.artifacts import ArtifactSize, artifact_size
from dccore.config import (Bytes, Config, FilePath, Num, Section, Table, build, dump,
                           relative_to, setting, table)
from dccore.errors import ConfigError
from dccore.outputs import JSON_FILE, JUNIT_XML, check_output, write_bytes_atomic, write_json_atomic

from .qualify import Figure, Gate, budget_gates, junit_xml, regression_gates, verdict

# The keys this gate used before it spoke qualify's vocabulary, refused with their new name.
RENAMED = {"max_bytes": "max_size_bytes", "max_growth_pct": "size_pct"}


@dataclass(frozen=True)
class Limits(Config):
    """One artifact's budget: qualify's size budgets (FORMAT_KEYS) and size regression key."""

    max_size_bytes: int | None = setting(None, Bytes())     # on disk (a package: all its files)
    max_zipped_bytes: int | None = setting(None, Bytes())   # deflated, as inside an APK/IPA
    size_pct: float | None = setting(None, Num(0))          # growth over the baseline, percent


class _LimitsTable(Section):
    """A table of Limits; a key this gate used to take is refused with its new name."""

    def __call__(self, path: str, value: Any, owner: type) -> Limits:
        for old in sorted(RENAMED.keys() & set(table(path, value))):
            raise ConfigError(f"{path}.{old}: now called {RENAMED[old]} (the budget vocabulary "
                              "of qualify's configs)")
        return super().__call__(path, value, owner)


@dataclass(frozen=True)
class SizeBudgets(Config):
    baseline: Path | None = setting(None, FilePath())          # relative to the budgets file
    defaults: Limits = setting(factory=Limits, check=_LimitsTable(Limits))
    artifacts: Mapping[str, Limits] = setting(factory=dict, check=Table(_LimitsTable(Limits)))

    def _check(self, path: str) -> None:
        if not self.artifacts and not dump(self.defaults):
            raise ConfigError("no budgets; add [artifacts.\"NAME\"] tables or [defaults]")

    def for_artifact(self, artifact: Path) -> dict[str, Any] | None:
        """Merged limits for one artifact: defaults, overridden by its most specific entry (and
        the entry's ``pattern``); None when nothing covers it."""
        name = artifact.name
        globs = [p for p in self.artifacts if p != name and (
            fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(str(artifact), p))]
        chosen = name if name in self.artifacts else max(globs, key=len, default=None)
        limits = dump(self.defaults)
        if chosen is None:
            return limits or None
        return {**limits, **dump(self.artifacts[chosen]), "pattern": chosen}


def load_budgets(path: str | os.PathLike[str]) -> SizeBudgets:
    path = Path(path)
    data = tomlfile.read(path, "budgets file", error=ConfigError)[0]
    try:
        with relative_to(path.parent):
            return build(SizeBudgets, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# figure -> its key in an ArtifactSize and in the baseline file
SIZES = {"size_bytes": "bytes", "zipped_bytes": "zipped_bytes"}


def run_checks(artifacts: Sequence[Path], budgets: SizeBudgets, baseline: Mapping[str, Any] | None,
               *, recording: bool = False) -> tuple[list[Gate], dict[str, ArtifactSize]]:
    """Each artifact's sizes as qualify's figures, judged by qualify's gates: its limits
    (budget_gates) and its growth over the ``baseline`` (regression_gates). ``recording``: this
    run records the baseline, so an artifact whose only limit is growth counts as measured (from
    the next run on)."""
    sizes, gates = {}, []
    for path in artifacts:
        limits = budgets.for_artifact(path)
        if limits is None:
            raise ConfigError(f"artifact {path.name} matches no budget; add [artifacts.\"{path.name}\"] "
                              "or a [defaults] table to the budgets file")
        size = sizes[path.name] = artifact_size(path)
        figures = [Figure(f, getattr(size, key), format=path.name) for f, key in SIZES.items()]
        mine = budget_gates(figures, limits)
        if baseline is not None:
            entry = baseline.get(path.name, {})
            previous = {f.compare_key: base for f in figures for base in (entry.get(SIZES[f.figure]),)
                        if isinstance(base, int) and base > 0}
            mine += regression_gates(figures, previous, limits, "baseline")
        if all(g.skipped for g in mine) and not (recording and "size_pct" in limits):
            raise ConfigError(f"artifact {path.name} is not measured by any budget (no size limit "
                              "covers it, and the baseline does not know it for a growth check); "
                              f"add [artifacts.\"{path.name}\"] with max_size_bytes to the budgets "
                              "file")
        gates += mine
    return gates, sizes


def read_baseline(path: Path | None, *, must_exist: bool = True) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.exists():
        if must_exist:
            raise ConfigError(f"baseline {path} does not exist; record the current sizes once with "
                              "--update-baseline (and commit the file), or drop 'baseline' from "
                              "the budgets file")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"baseline {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"baseline {path} must map artifact names to {{\"bytes\", \"zipped_bytes\"}}")
    return data


@dataclass(frozen=True)
class SizeGate:
    gates: list[Gate]
    sizes: dict[str, ArtifactSize]
    baseline_written: Path | None = None      # --update-baseline: where today's sizes went

    @property
    def ok(self) -> bool:
        return verdict(self.gates)[0]

    def to_dict(self) -> dict[str, Any]:
        """As qualify's results.json: the verdict, the sizes, every gate."""
        ok, line = verdict(self.gates)
        out = {"ok": ok, "verdict": line, "artifacts": {n: s.to_dict() for n, s in self.sizes.items()},
               "gates": [g.to_dict() for g in self.gates]}
        if self.baseline_written is not None:
            out["baseline_written"] = str(self.baseline_written)
        return out


def check_sizes(artifacts: Sequence[str | os.PathLike[str]], budgets_file: str | os.PathLike[str],
                *, baseline: str | os.PathLike[str] | None = None, update_baseline: bool = False,
                junit_file: str | os.PathLike[str] | None = None) -> SizeGate:
    """The gate: every artifact measured against its budget (``baseline``: the sizes to measure
    growth against, default the budgets file's), the baseline updated with today's sizes
    (``update_baseline``), the JUnit XML written (``junit_file``). Outputs are checked first."""
    budgets = load_budgets(budgets_file)
    baseline_path = Path(baseline) if baseline else budgets.baseline
    paths = [Path(a) for a in artifacts]
    missing = [str(a) for a in paths if not a.exists()]
    if missing:
        raise ConfigError(f"artifact(s) not found: {', '.join(missing)}")
    if update_baseline and baseline_path is None:
        raise ConfigError("--update-baseline needs --baseline FILE or 'baseline' in the budgets file")
    if junit_file:   # report files get their folder made, as pytest's --junitxml does
        check_output(junit_file, JUNIT_XML, flag="--junit", make_parents=True)
    if update_baseline:
        check_output(baseline_path, JSON_FILE, flag="baseline", make_parents=True)
    gates, sizes = run_checks(paths, budgets, None if update_baseline else read_baseline(baseline_path),
                              recording=update_baseline)
    if update_baseline:
        merged = read_baseline(baseline_path, must_exist=False) or {}
        merged.update({name: s.to_dict() for name, s in sizes.items()})
        write_json_atomic(baseline_path, merged, kind=JSON_FILE)
    if junit_file:
        write_bytes_atomic(junit_file, junit_xml("deepcompress.check", gates), kind=JUNIT_XML)
    return SizeGate(gates, sizes, baseline_path if update_baseline else None)
