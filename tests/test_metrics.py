"""dccore.metrics on outputs whose figures can be worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dccore import metrics

# 4 examples, 3 classes: argmax 0, 1, 2, 2
LOGITS = np.array([[3.0, 1.0, 0.0],
                   [0.0, 2.0, 1.0],
                   [0.0, 1.0, 5.0],
                   [1.0, 0.0, 2.0]])


def test_accuracy_is_a_fraction():
    assert metrics.accuracy(LOGITS, [0, 1, 2, 2]) == 1.0
    assert metrics.accuracy(LOGITS, np.array([0, 1, 0, 0])) == 0.5
    assert metrics.accuracy(LOGITS[:1], [1]) == 0.0


def test_argmax_and_top_k_agreement():
    other = LOGITS.copy()
    other[3] = [2.0, 0.0, 1.0]                 # top-1 moves from 2 to 0; top-2 is still {0, 2}
    assert metrics.argmax_agreement(LOGITS, other) == 0.75
    assert metrics.top_k_agreement(LOGITS, other, 1) == 0.75
    assert metrics.top_k_agreement(LOGITS, other, 2) == 1.0
    assert metrics.top_k_agreement(LOGITS, other, 3) == 1.0


def test_max_abs_diff():
    other = LOGITS.copy()
    other[1, 2] += 0.25
    other[2, 0] -= 0.5
    assert metrics.max_abs_diff(LOGITS, other) == 0.5
    assert metrics.max_abs_diff(LOGITS, LOGITS) == 0.0


def test_cosine_per_row_flattens_each_example():
    a = np.array([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 0.0]], [[0.0, 0.0]]])   # (N, 1, 2)
    b = np.array([[[2.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 3.0]]])
    cos = metrics.cosine_rows(a, b)
    assert cos.tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 1.0, 0.0])
    assert metrics.mean_cosine(a, b) == pytest.approx((2 + 1 / math.sqrt(2)) / 4)
    assert metrics.min_cosine(a, b) == 0.0
    assert metrics.min_cosine(np.array([[1.0, 2.0]]), np.array([[-1.0, -2.0]])) == pytest.approx(-1.0)


def test_nan_is_never_hidden():
    bad = LOGITS.copy()
    bad[2, 1] = np.nan
    assert math.isnan(metrics.max_abs_diff(LOGITS, bad))
    assert math.isnan(metrics.min_cosine(LOGITS, bad))
    assert not metrics.min_cosine(LOGITS, bad) >= 0.999


@pytest.mark.parametrize("call", [
    lambda: metrics.accuracy(np.zeros((0, 3)), []),
    lambda: metrics.accuracy(LOGITS, [0, 1]),
    lambda: metrics.max_abs_diff(LOGITS, LOGITS[:2]),
    lambda: metrics.cosine_rows(LOGITS, LOGITS.T),
    lambda: metrics.top_k_agreement(LOGITS, LOGITS, 4),
])
def test_misuse_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()
