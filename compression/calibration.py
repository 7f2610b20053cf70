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

from ._recurrent import gate_inputs, recurrent_hooks
from .models import RECURRENT_TYPES, weight_param
from .progress import ProgressFn, no_progress
from .prune import keep_largest
from .tasks import model_outputs


CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# rows x columns of float64 features formed at once: a convolution's patches of a whole
# calibration batch would not fit (256 images x 1024 positions x 576 taps is 1.2 GB)
_FEATURE_CHUNK = 1 << 22


def _patches(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...]) -> torch.Tensor:
    """Every kernel window of an already padded (N, C, *spatial) input as rows of
    (C x taps) features, channel-major then taps in the weight's order: for any number of
    spatial dims (``unfold`` alone only does 2)."""
    dims = len(kernel)
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]
    # (N, C, L1..Ld, k1..kd) -> (N, L1..Ld, C, k1..kd)
    order = [0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims)]
    x = x.permute(order)
    return x.reshape(-1, x.shape[1 + dims:].numel())


def _conv_features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A convolution's input as its patches (positions, in_channels x kernel): each kernel tap
    is a feature, as in Wanda's conv variant. A transposed convolution is the convolution of its
    input with zeros inserted between samples (stride), padded by dilation x (kernel - 1) -
    padding (+ output_padding at the end), with its kernel flipped: see :func:`weight_matrix`."""
    dims = x.dim() - 2
    if dims != len(module.kernel_size):      # unbatched input
        x = x.unsqueeze(0)
        dims = x.dim() - 2
    if isinstance(module, TRANSPOSED_MODULES):
        n, c, *size = x.shape
        up = x.new_zeros(n, c, *[(length - 1) * s + 1 for length, s in
                                 zip(size, module.stride)])
        up[(slice(None), slice(None), *[slice(None, None, s) for s in module.stride])] = x
        pad = []
        for k, d, p, extra in reversed(list(zip(module.kernel_size, module.dilation,
                                                module.padding, module.output_padding))):
            pad += [d * (k - 1) - p, d * (k - 1) - p + extra]
        return _patches(nn.functional.pad(up, pad), module.kernel_size, (1,) * dims,
                        module.dilation)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    # torch's own padding, 'same' included (the extra tap of an even kernel on the right)
    padded = nn.functional.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    return _patches(padded, module.kernel_size, module.stride, module.dilation)


def _features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of input features: (tokens, in_features) for Linear, (positions,
    in_channels x kernel) for every convolution, transposed ones included (each kernel tap is a
    feature, as in Wanda's conv variant). Columns are in :func:`weight_matrix`'s order."""
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):   # attention: its query input
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, RECURRENT_TYPES):    # rows of one gate matrix's input (_recurrent.py)
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, CONV_MODULES + TRANSPOSED_MODULES):
        return _conv_features(module, x)
    raise TypeError(f"no input features for {type(module).__name__}")


def has_features(module: nn.Module) -> bool:
    """Whether calibration measures the layer's inputs (:func:`sequential_hessians`): every
    layer type we compress; an Embedding's (ids, one-hot rows) as each row's share of tokens."""
    return isinstance(module, (nn.Linear, nn.MultiheadAttention, nn.Embedding, *RECURRENT_TYPES,
                               *CONV_MODULES, *TRANSPOSED_MODULES))


def conv_groups(module: nn.Module) -> int:
    return module.groups if isinstance(module, CONV_MODULES + TRANSPOSED_MODULES) else 1


def weight_matrix(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight (or anything shaped like it) as (conv groups, outputs, input features): the
    matrix that multiplies :func:`_features`' rows, one per group of a grouped convolution
    (group g's columns are features [g x cols, (g + 1) x cols)). A transposed convolution's
    weight (in, out / groups, *kernel) becomes (groups, out / groups, in / groups x taps) with
    its kernel flipped, the convolution it equals."""
    g = conv_groups(module)
    if isinstance(module, TRANSPOSED_MODULES):
        dims = weight.dim() - 2
        w = weight.reshape(g, weight.shape[0] // g, *weight.shape[1:])
        w = w.flip(list(range(3, 3 + dims))).transpose(1, 2)
        return w.reshape(g, w.shape[1], -1)
    return weight.reshape(g, weight.shape[0] // g, -1)


def from_weight_matrix(module: nn.Module, matrix: torch.Tensor, shape: torch.Size
                       ) -> torch.Tensor:
    """The inverse of :func:`weight_matrix`: back to the weight's own layout."""
    if isinstance(module, TRANSPOSED_MODULES):
        g, dims = conv_groups(module), len(shape) - 2
        w = matrix.reshape(g, shape[1], shape[0] // g, *shape[2:]).transpose(1, 2)
        return w.flip(list(range(3, 3 + dims))).reshape(shape)
    return matrix.reshape(shape)


def _run_hooked(model: nn.Module, hooks: list, batches: Iterable[tuple[torch.Tensor, ...]],
                forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], object] | None) -> None:
    """Run the calibration batches through ``forward`` (default: the model's call) in eval mode
    without gradients, for ``hooks`` to watch; the hooks are removed and the model's mode
    restored whatever happens."""
    forward = forward or (lambda m, inputs: m(*inputs))
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

    hooks = [module.register_forward_hook(
        lambda _m, args, _out, name=name, module=module: take(name, module, args[0].detach()))
        for name, module in layers.items() if not isinstance(module, RECURRENT_TYPES)]
    hooks += recurrent_hooks(layers, take)     # each matrix of an LSTM/GRU/RNN: its own input
    _run_hooked(model, hooks, batches, forward)
    return {name: s.sqrt().float() for name, s in sums.items()}


def fisher_diagonal(model: nn.Module, params: Mapping[str, torch.Tensor],
                    batches: Iterable[tuple[torch.Tensor, ...]],
                    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
                    progress: ProgressFn = no_progress) -> dict[str, torch.Tensor]:
    """Mean over calibration batches of the squared gradient of ``loss`` for each tensor in
    ``params`` (name -> the parameter). Gradients are restored to what they were."""
    saved = {n: (p.grad.clone() if p.grad is not None else None) for n, p in params.items()}
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    batches = list(batches)
    bar = progress("calibration (Fisher)", len(batches))
    was_training = model.training
    model.eval()
    # only the tensors asked for need their gradient: the backward pass skips the rest's
    wanted = {id(p) for p in params.values()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in wanted]
    try:
        for p in frozen:
            p.requires_grad_(False)
        for inputs in batches:
            model.zero_grad(set_to_none=True)
            loss(model, inputs).backward()
            for n, p in params.items():
                if p.grad is not None:
                    totals[n] += p.grad.detach().pow(2)
            count += 1
            bar.advance(1)
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.grad = saved[n]
        model.train(was_training)
    return {n: (t / max(count, 1)).float() for n, t in totals.items()}


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float,
               previous: torch.Tensor | None = None, module: nn.Module | None = None
               ) -> torch.Tensor:
    """Keep, in every output row, the ``1 - sparsity`` share of weights with the largest
    |W_ij|·‖X_j‖ (Wanda prunes per output, which keeps every neuron alive). ``norms`` has one
    entry per input feature (for an Embedding: per row, and rows are pruned whole-table-wise by
    the same score). Ties go to the earlier position; a weight cut before stays cut. A
    transposed convolution (``module``) is scored on the matrix it multiplies its features by
    (:func:`weight_matrix`): its outputs are the weight's second axis."""
    if isinstance(module, TRANSPOSED_MODULES):
        matrix = weight_matrix(module, weight.detach().abs().float())
        rows = (matrix * norms.reshape(matrix.shape[0], 1, -1)).reshape(-1, matrix.shape[2])
        before = None if previous is None else weight_matrix(module, previous).reshape(rows.shape)
        keep = keep_largest(rows, sparsity, before)
        return from_weight_matrix(module, keep.reshape(matrix.shape), weight.shape)
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
    before = None if previous is None else previous.reshape(rows.shape)
    return keep_largest(rows, sparsity, before).reshape(weight.shape)


def task_sensitivity(model: nn.Module, task, examples, params: Mapping[str, torch.Tensor], *,
                     batch_size: int = 8, seed: int = 0, progress: ProgressFn = no_progress
                     ) -> dict[str, torch.Tensor]:
    """The Fisher diagonal of ``params`` on ``examples`` (compression.tasks.Examples) for the
    task's own loss, or, for a label-free task, of the outputs themselves: the squared gradient
    of a random projection ``v . f(x)`` (v ~ N(0, 1) per batch) estimates diag(JᵀJ), how far the
    outputs move per unit of each weight's error (Hutchinson; Gauss-Newton)."""
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

    return fisher_diagonal(model, params, batches, loss, progress)


def _hessian_sum(module: nn.Module, x: torch.Tensor, rows_given: bool = False
                 ) -> tuple[torch.Tensor, int]:
    """(XᵀX in float64, rows) of a layer's input features, formed a chunk of the batch at a time
    so a convolution's patches never sit in memory whole. ``rows_given``: ``x`` is already the
    (rows, features) matrix (a recurrent layer's gate input)."""
    x = x.detach()
    if rows_given or x.dim() < 2:
        feats = [x.reshape(-1, x.shape[-1])] if rows_given else [_features(module, x)]
        chunks = [c for f in feats for c in f.split(max(1, _FEATURE_CHUNK // max(f.shape[1], 1)))]
    else:
        per_example = _features(module, x[:1]).numel()
        chunks = (_features(module, c) for c in x.split(max(1, _FEATURE_CHUNK // per_example)))
    total, count = None, 0
    for rows in chunks:      # float32 products (half a float64's time), summed in float64
        rows = rows.float()
        part = (rows.T @ rows).double()
        total = part if total is None else total.add_(part)
        count += rows.shape[0]
    return total, count


def _feature_key(module: nn.Module) -> tuple:
    """What besides its input decides a layer's features (two Linears on one input share H)."""
    if isinstance(module, CONV_MODULES + TRANSPOSED_MODULES):
        return (type(module), module.kernel_size, module.stride, module.dilation,
                module.padding, getattr(module, "output_padding", None), module.padding_mode)
    return (nn.Linear,)


def sequential_hessians(model: nn.Module, layers: Mapping[str, nn.Module],
                        inputs: tuple[torch.Tensor, ...],
                        on_layer: Callable[[str, torch.Tensor | None], None],
                        forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], object]
                        | None = None) -> list[str]:
    """Sequential GPTQ in one forward pass: ``inputs`` (every calibration example, one batch) run
    through the model in eval mode, and the first time a layer is reached its H = XᵀX / n is
    handed to ``on_layer(name, H)``, which compresses it before the pass goes on, so each later
    layer is measured on the model as compressed so far (what measuring each layer in a pass of
    its own gave, at the cost of one forward instead of one per layer). A recurrent module's
    matrices go one after another, each measured after the previous one is compressed. A layer
    the pass never reaches gets ``on_layer(name, None)`` at the end. An Embedding's H (its
    inputs are one-hot rows) is diagonal: it comes as that diagonal, each row's share of the
    tokens, shape (num_embeddings,). Returns the layers whose
    module ran more than once in the pass (measured on their first call only)."""
    by_module: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, module in layers.items():
        by_module.setdefault(id(module), (module, []))[1].append(name)
    done: set[int] = set()
    again: list[str] = []
    last: dict[str, object] = {}    # the input measured last: attention's q, k, v share one

    def pre(module: nn.Module, args: tuple, kwargs: dict, names: list[str]) -> None:
        if id(module) in done:
            again.extend(n for n in names if n not in again)
            return
        done.add(id(module))
        x = args[0] if args else next(iter(kwargs.values()))
        for name in names:
            if isinstance(module, nn.Embedding):     # one-hot inputs: H is diagonal, the counts
                ids = x.detach().reshape(-1).long()
                counts = torch.bincount(ids, minlength=module.num_embeddings).double()
                on_layer(name, (counts / max(ids.numel(), 1)).float())
                continue
            if isinstance(module, RECURRENT_TYPES):
                out = module.forward(*args, **kwargs)     # with the matrices compressed so far
                rows = gate_inputs(module, args, out, name)[weight_param(module, name)]
                total, count = _hessian_sum(module, rows, rows_given=True)
            else:
                key = (x.data_ptr(), tuple(x.shape), x._version, _feature_key(module))
                if last.get("key") != key:
                    total, count = _hessian_sum(module, x)
                    last.update(key=key, hessian=(total / max(count, 1)).float())
                on_layer(name, last["hessian"])
                continue
            on_layer(name, (total / max(count, 1)).float())

    hooks = [module.register_forward_pre_hook(
        lambda m, args, kwargs, names=names: pre(m, args, kwargs, names), with_kwargs=True)
        for module, names in by_module.values()]
    _run_hooked(model, hooks, [inputs], forward)
    for module, names in by_module.values():
        if id(module) not in done:
            for name in names:
                on_layer(name, None)
    return again
