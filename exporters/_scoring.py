"""Scorers: how a caller says what "the artifact computes what PyTorch computes" means for its model.

A scorer is a callable ``score(got, reference) -> Score``: ``got`` the artifact's outputs,
``reference`` PyTorch's, on the same examples (first axis). The exporters never choose one; the
caller does, knowing its task: a classifier with labels is held to its accuracy, a model without
labels (an encoder, a detector's raw head) to the direction of its outputs. The figures come from
``dccore.metrics``; accuracies are fractions (0..1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from dccore import metrics

# The bar: the artifact's accuracy within 0.1 points (0.001 as a fraction) of PyTorch's.
TOLERANCE = 0.001
# Without labels: every example's output within ~2.6 degrees of PyTorch's (cos 0.999).
MIN_COSINE = 0.999
# Fractions are means over examples: 0.8932 - 0.8922 may come out 0.0010000000000000009.
_SLACK = 1e-9


@dataclass(frozen=True)
class Score:
    ok: bool
    figures: Mapping[str, float]                  # e.g. accuracy, torch_accuracy, max_abs_diff
    limits: Mapping[str, float] = field(default_factory=dict)   # what ``ok`` was held to

    def to_dict(self) -> dict[str, Any]:
        return {**self.figures, **self.limits}


Scorer = Callable[[np.ndarray, np.ndarray], Score]


def accuracy_scorer(labels: np.ndarray, tolerance: float = TOLERANCE) -> Scorer:
    """For a classifier: the artifact's accuracy on ``labels`` within ``tolerance`` (a fraction;
    0.001 = 0.1 point) of PyTorch's on the same examples."""
    labels = np.asarray(labels).reshape(-1)
    if not 0 <= tolerance < 1:
        raise ValueError(f"accuracy tolerance {tolerance} is a fraction: 0.001 is 0.1 point")

    def score(got: np.ndarray, reference: np.ndarray) -> Score:
        acc, ref_acc = metrics.accuracy(got, labels), metrics.accuracy(reference, labels)
        figures = {"accuracy": acc, "torch_accuracy": ref_acc,
                   "agreement": metrics.argmax_agreement(got, reference),
                   "max_abs_diff": metrics.max_abs_diff(got, reference)}
        return Score(abs(acc - ref_acc) <= tolerance + _SLACK, figures, {"tolerance": tolerance})
    return score


def cosine_scorer(min_cosine: float = MIN_COSINE) -> Scorer:
    """For a model without labels: every example's output (flattened) at cosine >= ``min_cosine``
    to PyTorch's."""
    if not -1 <= min_cosine <= 1:
        raise ValueError(f"minimum cosine {min_cosine} must be in [-1, 1]")

    def score(got: np.ndarray, reference: np.ndarray) -> Score:
        worst = metrics.min_cosine(got, reference)
        figures = {"min_cosine": worst, "mean_cosine": metrics.mean_cosine(got, reference),
                   "max_abs_diff": metrics.max_abs_diff(got, reference)}
        return Score(bool(worst >= min_cosine), figures, {"min_cosine_required": min_cosine})
    return score
