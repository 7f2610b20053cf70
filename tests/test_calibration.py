"""Calibration statistics on inputs whose answers can be computed by hand."""
from __future__ import annotations

import torch
from torch import nn

from compression.calibration import fisher_diagonal, input_norms, wanda_mask


def test_input_norms_of_a_linear_layer_are_the_feature_norms():
    layer = nn.Linear(3, 2)
    model = nn.Sequential(layer)
    x1 = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    x2 = torch.tensor([[0.0, 2.0, 4.0]])
    norms = input_norms(model, {"0": layer}, [(x1,), (x2,)])["0"]
    assert torch.allclose(norms, torch.tensor([10.0, 8.0, 16.0]).sqrt())


def test_embedding_rows_score_by_how_often_the_data_uses_them():
    emb = nn.Embedding(5, 2)
    norms = input_norms(emb, {"": emb}, [(torch.tensor([[1, 1, 3]]),), (torch.tensor([[1]]),)])[""]
    assert torch.allclose(norms, torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0]).sqrt())


def test_a_depthwise_conv_keeps_each_channels_own_norms():
    conv = nn.Conv2d(2, 2, 1, groups=2, bias=False)
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0] = 1.0     # channel 0 loud, channel 1 silent
    norms = input_norms(conv, {"c": conv}, [(x,)])["c"]
    assert torch.allclose(norms, torch.tensor([2.0, 0.0]))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 5.0]).reshape(2, 1, 1, 1))
    # one weight per output channel: per-row pruning keeps both rows' only weight at 0% ...
    assert wanda_mask(conv.weight, norms, 0.0).all()


def test_wanda_keeps_the_largest_weight_times_norm_in_every_row():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-4.0, 3.0, 2.0, 1.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 0.1])
    mask = wanda_mask(w, norms, 0.5)
    # scores row 0: 10, 2, 3, 0.4 -> keep 0 and 2; row 1: 40, 3, 2, 0.1 -> keep 0 and 1
    assert mask.tolist() == [[True, False, True, False], [True, True, False, False]]
    # magnitude alone would have kept positions 2, 3 in row 0
    again = wanda_mask(w, norms, 0.75, previous=mask)
    assert again.tolist() == [[True, False, False, False], [True, False, False, False]]


def test_fisher_diagonal_is_the_mean_squared_gradient_and_restores_grads():
    layer = nn.Linear(2, 1, bias=False)
    layer.weight.grad = torch.full((1, 2), 7.0)
    batches = [(torch.tensor([[1.0, 2.0]]),), (torch.tensor([[3.0, 0.0]]),)]
    fisher = fisher_diagonal(layer, {"w": layer.weight}, batches,
                             lambda m, inputs: m(*inputs).sum())
    # d(sum(w . x))/dw = x: mean of x^2 over the two batches
    assert torch.allclose(fisher["w"], torch.tensor([[5.0, 2.0]]))
    assert torch.equal(layer.weight.grad, torch.full((1, 2), 7.0))
