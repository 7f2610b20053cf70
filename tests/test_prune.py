"""Pruning: exact masks on hand-computable weights; masks only shrink; zeros stay zero."""
import torch

from compression.prune import magnitude_mask, round_targets


def test_threshold_mask_is_exact():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.7, 0.05, -0.3]])
    mask = magnitude_mask(w, threshold=0.3)
    assert mask.tolist() == [[True, False, False], [True, False, False]]


def test_sparsity_mask_keeps_exactly_the_largest():
    w = torch.arange(1.0, 11.0)  # 1..10
    mask = magnitude_mask(w, sparsity=0.3)
    assert mask.tolist() == [False] * 3 + [True] * 7


def test_sparsity_ties_broken_by_position():
    w = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert magnitude_mask(w, sparsity=0.5).tolist() == [True, True, False, False]


def test_previous_cut_stays_cut_even_if_weight_grew():
    w = torch.tensor([5.0, 0.2, 3.0, 4.0])
    previous = torch.tensor([False, True, True, True])
    assert magnitude_mask(w, threshold=0.1, previous=previous).tolist() == [False, True, True, True]
    # asking for less sparsity than already reached keeps the earlier cut
    assert magnitude_mask(w, sparsity=0.0, previous=previous).tolist() == [False, True, True, True]


def test_iterative_schedule_reaches_target_geometrically():
    steps = [round_targets({"sparsity": 0.96}, 1.0, r, 2)["sparsity"] for r in range(2)]
    assert abs(steps[0] - 0.8) < 1e-9 and abs(steps[1] - 0.96) < 1e-9
    q = [round_targets({"quality": 1.5}, 2.0, r, 3)["threshold"] for r in range(3)]
    assert q == [1.0, 2.0, 3.0]
