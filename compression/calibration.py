"""What calibration data tells about each weight, for compressing without retraining.

Post-training compression (REFERENCE §9) decides which weights to cut and where to put the
centroids from a few hundred calibration examples instead of from retraining:

- ``input_norms``: ‖X_j‖₂ of every input feature j of a layer over the calibration data, for
  Wanda's score |W_ij|·‖X_j‖ (Sun et al. 2023): a small weight on a loud input matters;
- ``fisher_diagonal``: the mean squared gradient of the loss per weight (the diagonal of the
  empirical Fisher information), for sensitivity-weighted k-means (SqueezeLLM; coremltools' SKM):
  centroids go where output error is costly.

Both run the model in eval mode and leave its weights and gradients as they found them.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ._recurrent import recurrent_hooks
from .models import RECURRENT_TYPES


def _features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of input features: (tokens, in_features) for Linear, (positions,
    in_channels x kernel) for Conv (each kernel tap is a feature, as in Wanda's conv variant),
    (tokens,) of ids for Embedding (each row of the table is a 'feature')."""
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):   # attention: its query input
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, RECURRENT_TYPES):    # rows of one gate matrix's input (_recurrent.py)
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        conv2d = isinstance(module, nn.Conv2d)
        x4 = x if conv2d else x.unsqueeze(-2)
        k = module.kernel_size if conv2d else (1, module.kernel_size[0])
        pad = module.padding if conv2d else (0, module.padding[0])
        dil = module.dilation if conv2d else (1, module.dilation[0])
        st = module.stride if conv2d else (1, module.stride[0])
        if isinstance(pad, str):
            raise ValueError("padding='same'/'valid' convolutions are not supported here")
        cols = nn.functional.unfold(x4, k, dilation=dil, padding=pad, stride=st)  # N, C*k, L
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])   # groups: see wanda_mask
    raise TypeError(f"no input features for {type(module).__name__}")


def _each_input(model: nn.Module, layers: Mapping[str, nn.Module],
                batches: Iterable[tuple[torch.Tensor, ...]],
                forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], object] | None,
                take: Callable[[str, nn.Module, torch.Tensor], None]) -> None:
    """Run the calibration batches in eval mode; ``take(name, layer, input)`` sees each layer's
    input as it goes by. Hooks and the model's mode are restored whatever happens."""
    forward = forward or (lambda m, inputs: m(*inputs))
    hooks = [module.register_forward_hook(
        lambda _m, args, _out, name=name, module=module: take(name, module, args[0].detach()))
        for name, module in layers.items() if not isinstance(module, RECURRENT_TYPES)]
    hooks += recurrent_hooks(layers, take)     # each matrix of an LSTM/GRU/RNN: its own input
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in batches:
                forward(model, inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def input_norms(model: nn.Module, layers: Mapping[str, nn.Module],
                batches: Iterable[tuple[torch.Tensor, ...]],
                forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], object] | None = None,
                ) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ over every calibration row, per input feature of each layer (float64 sums).

    For an Embedding, the 'input feature' of row r is how often token r occurs: its norm is the
    square root of its count, so rows the data never uses score 0."""
    sums: dict[str, torch.Tensor] = {}

    def take(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if isinstance(module, nn.Embedding):
            add = torch.bincount(x.reshape(-1).long(), minlength=module.num_embeddings).double()
        else:
            add = _features(module, x.double()).pow(2).sum(0)
        sums[name] = sums[name] + add if name in sums else add

    _each_input(model, layers, batches, forward, take)
    return {name: s.sqrt().float() for name, s in sums.items()}


def fisher_diagonal(model: nn.Module, params: Mapping[str, torch.Tensor],
                    batches: Iterable[tuple[torch.Tensor, ...]],
                    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
                    ) -> dict[str, torch.Tensor]:
    """Mean over calibration batches of the squared gradient of ``loss`` for each tensor in
    ``params`` (name -> the parameter). Gradients are restored to what they were."""
    saved = {n: (p.grad.clone() if p.grad is not None else None) for n, p in params.items()}
    totals = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            model.zero_grad(set_to_none=True)
            loss(model, inputs).backward()
            for n, p in params.items():
                if p.grad is not None:
                    totals[n] += p.grad.detach().double().pow(2)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.grad = saved[n]
        model.train(was_training)
    return {n: (t / max(count, 1)).float() for n, t in totals.items()}


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float,
               previous: torch.Tensor | None = None) -> torch.Tensor:
    """Keep, in every output row, the ``1 - sparsity`` share of weights with the largest
    |W_ij|·‖X_j‖ (Wanda prunes per output, which keeps every neuron alive). ``norms`` has one
    entry per input feature (for an Embedding: per row, and rows are pruned whole-table-wise by
    the same score). Ties go to the earlier position; a weight cut before stays cut."""
    w = weight.detach().abs().float()
    if w.dim() == 2 and norms.numel() == w.shape[0] and norms.numel() != w.shape[1]:
        score = w * norms.reshape(-1, 1)        # Embedding: a row's use scales its weights
        rows = score.reshape(1, -1)             # one pool: cut the least-used rows' weights
    else:
        rows = w.reshape(w.shape[0], -1)
        per_row = rows.shape[1]
        groups = norms.numel() // per_row if norms.numel() % per_row == 0 else 0
        if groups < 1 or rows.shape[0] % groups:
            raise ValueError(f"{norms.numel()} input norms do not fit a weight of shape "
                             f"{tuple(w.shape)}")
        # a grouped conv's output rows see only their group's channels (depthwise: one each)
        row_norms = norms.reshape(groups, 1, per_row).expand(groups, rows.shape[0] // groups,
                                                              per_row).reshape(rows.shape)
        rows = rows * row_norms
    if previous is not None:
        rows = torch.where(previous.reshape(rows.shape), rows, torch.full_like(rows, -1.0))
    n_keep = round((1.0 - sparsity) * rows.shape[1])
    keep = torch.zeros_like(rows, dtype=torch.bool)
    if n_keep > 0:
        order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :n_keep]
        keep.scatter_(1, order, True)
    if previous is not None:
        keep &= previous.reshape(rows.shape)
    return keep.reshape(weight.shape)


def task_sensitivity(model: nn.Module, task, examples, params: Mapping[str, torch.Tensor], *,
                     batch_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """The Fisher diagonal of ``params`` on ``examples`` (compression.tasks.Examples) for the
    task's own loss, or, for a label-free task, of the outputs themselves: the squared gradient
    of a random projection ``v . f(x)`` (v ~ N(0, 1) per batch) estimates diag(JᵀJ), how far the
    outputs move per unit of each weight's error (Hutchinson; Gauss-Newton)."""
    from .tasks import model_outputs

    generator = torch.Generator().manual_seed(seed)
    n = len(examples)
    batches = [examples.take(slice(i, i + batch_size)) for i in range(0, n, batch_size)]

    def loss(m: nn.Module, batch) -> torch.Tensor:
        inputs, targets = batch
        out = model_outputs(m(*inputs))
        if task.needs_labels and targets is not None:
            return task.loss(out, targets, None, 0.0, 1.0)
        probe = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        return (out * probe).sum()

    return fisher_diagonal(model, params, batches, loss)


def input_hessians(model: nn.Module, layers: Mapping[str, nn.Module],
                   batches: Iterable[tuple[torch.Tensor, ...]],
                   forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], object] | None = None,
                   ) -> dict[str, torch.Tensor]:
    """H = XᵀX / n over the calibration rows of each layer's input features (float64 sums): the
    curvature of the layer's output error, what GPTQ-style compensation steers by."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def take(name: str, module: nn.Module, x: torch.Tensor) -> None:
        x = _features(module, x.double())
        sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
        counts[name] = counts.get(name, 0) + x.shape[0]

    _each_input(model, layers, batches, forward, take)
    return {name: (s / max(counts[name], 1)).float() for name, s in sums.items()}
