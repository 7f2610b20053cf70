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


def _conv_cases():
    return [
        nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=1),
        nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        nn.Conv2d(3, 4, 4, padding="same", padding_mode="reflect"),
        nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 1), padding=(0, 1, 1), dilation=(2, 1, 1)),
        nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), dilation=(2, 1),
                           groups=2),
        nn.ConvTranspose3d(2, 3, 2, stride=2, padding=(0, 1, 0), output_padding=(1, 0, 0)),
    ]


def test_every_convolution_is_its_features_times_its_weight_matrix():
    """Calibration's view of a layer is exact: the rows of input features (patches; for a
    transposed convolution, of the zero-stuffed input) times the weight matrix per group give
    the module's own output, so Wanda's norms, activation weighting and GPTQ's H are the right
    ones for every conv type (Conv3d and ConvTranspose raised TypeError before)."""
    from compression.calibration import _features, from_weight_matrix, weight_matrix

    torch.manual_seed(0)
    for conv in _conv_cases():
        spatial = (7, 6, 5)[:len(conv.kernel_size)]
        x = torch.randn(2, conv.in_channels, *spatial, dtype=torch.float64)
        conv = conv.double()
        want = conv(x)
        if conv.bias is not None:
            want = want - conv.bias.reshape(1, -1, *([1] * len(spatial)))
        feats = _features(conv, x)                          # (positions, in_channels x taps)
        mats = weight_matrix(conv, conv.weight.detach())    # (groups, out / groups, cols)
        cols = mats.shape[2]
        out = torch.cat([feats[:, g * cols:(g + 1) * cols] @ mats[g].T
                         for g in range(mats.shape[0])], 1)
        got = out.reshape(2, *want.shape[2:], -1).movedim(-1, 1)
        assert got.shape == want.shape, type(conv).__name__
        assert torch.allclose(got, want, atol=1e-10), type(conv).__name__
        back = from_weight_matrix(conv, mats, conv.weight.shape)
        assert torch.equal(back, conv.weight.detach())


def _input_hessian(model: nn.Module, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """H = XᵀX / n of a Linear ``layer``'s input rows in a pass of their own (float64 sums)."""
    seen = []
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(args[0].double()))
    was_training = model.training
    with torch.no_grad():
        model.eval()(ids)
    model.train(was_training)
    handle.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1])
    return (x.T @ x / x.shape[0]).float()


def test_one_pass_sees_each_layer_after_the_ones_before_are_compressed():
    """sequential_hessians in one forward gives each layer the H that measuring it in a pass of
    its own after compressing the layers before it gives (what the share stage did per layer),
    an Embedding its token shares, and a layer the pass never reaches None."""
    import copy

    from compression.calibration import sequential_hessians

    torch.manual_seed(0)
    emb, a, b, dead = nn.Embedding(7, 4), nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 3)
    model = nn.Sequential(emb, a, nn.ReLU(), b)
    ids = torch.tensor([[1, 1, 3], [6, 1, 0]])
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        by_hand[1].weight.copy_(by_hand[1].weight.round())
    expected = _input_hessian(by_hand, by_hand[3], ids)
    unchanged = _input_hessian(model, b, ids)
    seen = {}

    def compress(name, hessian):
        seen[name] = hessian
        if name == "a":
            with torch.no_grad():
                a.weight.copy_(a.weight.round())     # "compressed": changes b's input

    layers = {"emb": emb, "a": a, "b": b, "dead": dead}
    assert sequential_hessians(model, layers, (ids,), compress) == []
    assert torch.allclose(seen["emb"], torch.tensor([1, 3, 0, 1, 0, 0, 1]) / 6.0)
    assert seen["dead"] is None
    assert torch.allclose(seen["b"], expected, atol=1e-6)
    assert not torch.allclose(seen["b"], unchanged, atol=1e-3)
