"""Figures and the gates that judge them.

A :class:`Figure` is one measured number (an artifact's bytes, the model's metric, a device's
p50), with what it was measured on. A :class:`Gate` is one verdict on one figure: against a
budget (``max_size_bytes``...), against the last passing run (``regression``, qualify; ``check``:
its baseline file), or against the rolling baseline of the last nights (``rolling``, nightly). A
gate that could not be decided (no earlier run to compare with) is *skipped*, and says why; a gate
never passes a figure it did not see.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ._config import Budgets, Rolling
from ._measures import FIGURES, METRICS, tolerance_key


@dataclass(frozen=True)
class Figure:
    figure: str                        # a key of FIGURES
    value: float
    format: str | None = None          # the artifact's format ("dcz", "tflite"; check: its name)
    device: str | None = None          # the device SPEC (qualify) or slot (nightly), if any
    fingerprint: str | None = None     # the device's fingerprint
    artifact_sha256: str | None = None
    task_metric: str | None = None     # for metric figures: "accuracy", "cosine_mean"
    higher_is_better: bool | None = None

    @property
    def key(self) -> tuple:
        """What identifies "the same figure" across runs."""
        return (self.figure, self.format, self.device, self.task_metric)

    @property
    def compare_key(self) -> tuple:
        """``key``, and for a device figure the device's fingerprint: a figure is compared only
        with the same figure measured on the same kind of device."""
        return self.key + ((self.fingerprint,) if self.device else (None,))

    @property
    def unit(self) -> str:
        return FIGURES[self.figure][0]

    @property
    def better_high(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        return not FIGURES[self.figure][1]

    @property
    def subject(self) -> str:
        parts = [(self.task_metric or "") if self.figure.endswith("metric") else "", self.format or "",
                 f"on {self.device}" if self.device else ""]
        return " ".join(p for p in parts if p) or "model"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unit": self.unit, "higher_is_better": self.better_high}


@dataclass(frozen=True)
class Gate:
    gate: str                          # "max_size_bytes", "min_metric", "reachable", "regression", ...
    figure: str                        # what it judges (a FIGURES key, or "device", "export")
    subject: str                       # for people: "tflite on emulator"
    ok: bool
    actual: float | None = None
    limit: float | None = None
    baseline: float | None = None      # regression gates: the figure they compare with
    skipped: str = ""
    message: str = ""
    format: str | None = None
    device: str | None = None
    fingerprint: str | None = None
    artifact_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Gate":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{int(round(value)):,} B"
    if unit == "ms":
        return f"{value:.4g} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.4f}"


def budget_gates(figures: Iterable[Figure], budgets: Budgets | Mapping[str, Any]) -> list[Gate]:
    """Each figure against its budget: per format for sizes, per device for device figures; or,
    ``budgets`` a mapping, against those limits (``check``: one artifact's)."""
    gates = []
    for f in figures:
        m = METRICS.get(f.figure)
        key = m.budget
        limits = (budgets if isinstance(budgets, Mapping) else
                  budgets.for_artifact(f.format or "") if m.on == "artifact" else
                  budgets.for_device(f.device or "") if m.on == "device" else budgets.limits)
        limit = limits.get(key) if key else None
        if limit is None:
            continue
        ok = f.value >= limit if key.startswith("min_") else f.value <= limit
        relation = "<" if key.startswith("min_") else ">"
        message = "" if ok else (f"{f.subject}: {f.figure} {fmt_value(f.value, f.unit)} {relation} "
                                 f"{key} {fmt_value(limit, f.unit)}")
        gates.append(_gate(key, f, ok, limit=limit, message=message))
    return gates


def _gate(name: str, f: Figure, ok: bool, **kw: Any) -> Gate:
    return Gate(gate=name, figure=f.figure, subject=f.subject, ok=ok, actual=f.value,
                format=f.format, device=f.device, fingerprint=f.fingerprint,
                artifact_sha256=f.artifact_sha256, **kw)


def regression_gates(figures: Iterable[Figure], previous: Mapping[tuple, float] | None,
                     regression: Mapping[str, Any], previous_run: int | str | None = None) -> list[Gate]:
    """Qualify: each figure against the same figure of the last passing run (``previous_run``;
    ``check`` names its "baseline" file instead). Sizes, latency and memory may grow by their
    percentage (``*_pct``); the metric may get worse by ``metric_drop``. A device figure is
    compared only on the same device (same fingerprint)."""
    gates = []
    since = previous_run if isinstance(previous_run, str) else f"run {previous_run}"
    for f in figures:
        allowance_key = METRICS.get(f.figure).regression
        allowance = regression.get(allowance_key) if allowance_key else None
        if allowance is None:
            continue
        base = (previous or {}).get(f.compare_key)
        if base is None:
            why = (f"no {since}" if isinstance(previous_run, str) else "no earlier passing run"
                   if not previous else "not measured in the last passing run")
            gates.append(_gate("regression", f, True, skipped=why))
            continue
        relative = allowance_key.endswith("_pct")
        if not relative:
            limit = base - allowance if f.better_high else base + allowance
        else:
            limit = base * (1 + allowance / 100) if not f.better_high else base * (1 - allowance / 100)
        ok = f.value >= limit if f.better_high else f.value <= limit
        change = (f.value - base) / base * 100 if base else 0.0
        message = "" if ok else (f"{f.subject}: {f.figure} {fmt_value(f.value, f.unit)} vs "
                                 f"{fmt_value(base, f.unit)} in {since} ({change:+.1f}%), "
                                 f"allowed {allowance:g}{'%' if relative else ''}")
        gates.append(_gate("regression", f, ok, limit=limit, baseline=base, message=message))
    return gates


@dataclass(frozen=True)
class Baseline:
    median: float | None
    samples: int
    limit: float | None                # the worst value that still passes


def rolling_baseline(values: list[float], rolling: Rolling, figure: str,
                     higher_is_better: bool) -> Baseline:
    """The median of the last passing nights' values, and the regression threshold around it."""
    values = values[:rolling.window]
    if len(values) < rolling.min_samples:
        return Baseline(statistics.median(values) if values else None, len(values), None)
    median = statistics.median(values)
    allowed = rolling.tolerances[tolerance_key(figure)].allowed(median)
    return Baseline(median, len(values), median - allowed if higher_is_better else median + allowed)


def rolling_gate(f: Figure, baseline: Baseline, rolling: Rolling) -> Gate:
    """Nightly: one figure against the rolling baseline of the last passing nights."""
    if baseline.limit is None:
        return _gate("rolling", f, True, baseline=baseline.median,
                     skipped=f"{baseline.samples} passing night(s) before this one; the baseline "
                             f"needs {rolling.min_samples}")
    ok = f.value >= baseline.limit if f.better_high else f.value <= baseline.limit
    change = (f.value - baseline.median) / baseline.median * 100 if baseline.median else 0.0
    message = "" if ok else (f"{f.subject}: {f.figure} {fmt_value(f.value, f.unit)} vs median "
                             f"{fmt_value(baseline.median, f.unit)} of the last {baseline.samples} "
                             f"passing nights ({change:+.1f}%), threshold "
                             f"{fmt_value(baseline.limit, f.unit)}")
    return _gate("rolling", f, ok, limit=baseline.limit, baseline=baseline.median, message=message)


def failed_gate(gate: str, figure: str, subject: str, message: str, **kw: Any) -> Gate:
    return Gate(gate=gate, figure=figure, subject=subject, ok=False, message=message, **kw)


def passed_gate(gate: str, figure: str, subject: str, **kw: Any) -> Gate:
    return Gate(gate=gate, figure=figure, subject=subject, ok=True, **kw)


def verdict(gates: list[Gate]) -> tuple[bool, str]:
    """(every gate holds, one line for people)."""
    failed = [g for g in gates if not g.ok]
    decided = [g for g in gates if not g.skipped]
    if not failed:
        return True, f"{len(decided)}/{len(decided)} gates hold" + (
            f" ({len(gates) - len(decided)} skipped)" if len(decided) != len(gates) else "")
    first = "; ".join(g.message or f"{g.gate} {g.subject}" for g in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return False, f"{len(failed)}/{len(decided)} gates failed: {first}{more}"
