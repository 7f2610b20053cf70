"""Comparisons of model outputs, the ones every validation needs (numpy only).

Conventions, for every function: the first axis holds the examples (``N`` rows); whatever follows
is one example's output, flattened into a row (logits ``(N, classes)``, an encoder's ``(N, seq,
hidden)``, ...). Accuracies and agreements are **fractions** (0..1), never percentages. Two arrays
compared must have the same shape, and there must be at least one example: anything else is a
caller's bug and raises ``ValueError``. A NaN in the outputs propagates (a NaN difference or
cosine fails any threshold), it is never hidden.
"""
from __future__ import annotations

import numpy as np


def _rows(x: np.ndarray, what: str = "outputs") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{what}: no examples to compare (shape {list(x.shape)})")
    return x.reshape(x.shape[0], -1)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"outputs of shape {list(a.shape)} and {list(b.shape)} cannot be compared")
    return _rows(a), _rows(b)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose largest output is at their label's index."""
    rows, labels = _rows(outputs), np.asarray(labels).reshape(-1)
    if labels.shape[0] != rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} outputs for {labels.shape[0]} labels")
    return float(np.mean(rows.argmax(1) == labels))


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of examples where both outputs have their largest value at the same index."""
    a, b = _pair(a, b)
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def top_k_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Fraction of examples whose ``k`` largest outputs are the same set of indices in both (the
    order within the top k may differ: ties and rounding reorder close values)."""
    a, b = _pair(a, b)
    if not 1 <= k <= a.shape[1]:
        raise ValueError(f"top-k agreement: k={k} must be in 1..{a.shape[1]}")
    top_a = np.sort(np.argpartition(-a, k - 1, axis=1)[:, :k], axis=1)
    top_b = np.sort(np.argpartition(-b, k - 1, axis=1)[:, :k], axis=1)
    return float(np.mean(np.all(top_a == top_b, axis=1)))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest ``|a - b|`` over every example and output value."""
    a, b = _pair(a, b)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each example's two outputs (float64, one per example).

    Two all-zero rows are identical (1.0); an all-zero row against a non-zero one has no direction
    in common (0.0)."""
    a, b = _pair(a, b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    both_zero = ~np.any(a, axis=1) & ~np.any(b, axis=1)
    cos[both_zero] = 1.0
    return np.where(np.isnan(dots), np.nan, cos)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cosine_rows(a, b)))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The worst example's cosine (NaN if any example's output holds a NaN)."""
    cos = cosine_rows(a, b)
    return float(np.nan if np.isnan(cos).any() else cos.min())
