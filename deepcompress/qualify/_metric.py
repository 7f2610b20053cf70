"""The task's figure of merit: read from a run's report.json (or, as a claim, a .dcz's
metadata), and measured per shipped format (:class:`Measured`).

Two report shapes exist: today's image classifier writes ``accuracy: {baseline, final, stages}``
(fractions); the task abstraction adds ``primary_metric: {name, baseline, final,
higher_is_better, stages}`` and every figure per stage (``scores``, or ``metrics``, as
``{stage: {name: value}}``; the label-free task's primary metric is ``cosine_mean``). :func:`primary_metric` prefers the latter and falls back to
the former, so qualification reads both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from dccore.errors import UsageError

BASELINE_STAGE = "0_baseline"


@dataclass(frozen=True)
class Metric:
    name: str                        # "accuracy", "cosine_mean", ...
    final: float | None              # the compressed model's figure
    baseline: float | None = None    # the dense model's
    higher_is_better: bool = True
    stages: Mapping[str, float] = field(default_factory=dict)   # stage name -> figure, baseline first

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "final": self.final, "baseline": self.baseline,
                "higher_is_better": self.higher_is_better, "stages": dict(self.stages)}


@dataclass(frozen=True)
class Measured:
    """The task's metric of one shipped format, measured in this run on held-out examples
    through what ships: ``dcz`` the model decoded from the file (PyTorch), ``tflite`` the LiteRT
    interpreter on this host, ``coreml`` Core ML (macOS only). ``value`` None: not measured,
    ``note`` says why. These gate ``min_metric``; a file's own figures (:func:`primary_metric`
    of its metadata) are claims and never do."""

    format: str
    name: str                        # "accuracy", "cosine_mean"
    value: float | None
    higher_is_better: bool = True
    on: str = ""                     # the examples and the runtime, for people
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def primary_metric(report: Mapping[str, Any], source: str = "report.json") -> Metric:
    """The primary metric of a report: ``primary_metric`` when present, else ``accuracy``."""
    pm = report.get("primary_metric")
    if isinstance(pm, Mapping) and isinstance(pm.get("name"), str):
        name = pm["name"]
        stages = {str(k): float(v) for k, v in (pm.get("stages") or {}).items()
                  if _number(v) is not None} if isinstance(pm.get("stages"), Mapping) else {}
        for key in ("scores", "metrics"):   # per stage, every figure: {stage: {name: value}}
            per_stage = report.get(key)
            if isinstance(per_stage, Mapping):
                for stage, figures in per_stage.items():
                    value = _number(figures.get(name)) if isinstance(figures, Mapping) else None
                    if value is not None:
                        stages.setdefault(str(stage), value)
        baseline = _number(pm.get("baseline"))
        if baseline is not None:
            stages.setdefault(BASELINE_STAGE, baseline)
        return Metric(name, _number(pm.get("final")), baseline,
                      bool(pm.get("higher_is_better", True)), _ordered(stages))
    acc = report.get("accuracy")
    if isinstance(acc, Mapping):
        stages = {str(k): v for k, v in (acc.get("stages") or {}).items()
                  if _number(v) is not None}
        baseline = _number(acc.get("baseline"))
        if baseline is not None:
            stages[BASELINE_STAGE] = baseline
        return Metric("accuracy", _number(acc.get("final")), baseline, True, _ordered(stages))
    raise UsageError(f"{source} has neither 'primary_metric' nor 'accuracy': it is not the report "
                     "of a deepcompress run")


def _ordered(stages: Mapping[str, float]) -> dict[str, float]:
    """Baseline first, then the stages in the report's (the recipe's) order."""
    first = {BASELINE_STAGE: stages[BASELINE_STAGE]} if BASELINE_STAGE in stages else {}
    return {**first, **{k: v for k, v in stages.items() if k != BASELINE_STAGE}}
