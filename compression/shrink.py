"""Neuron and filter shrinking: remove whole output units of a layer and rebuild the layers with
the smaller shapes (no masks), so the model itself gets smaller and faster.

Which layers' inputs a unit feeds is read from the model's graph (``torch.fx``): a unit of a
Linear or Conv2d may flow through element-wise activations, pooling, dropout, BatchNorm (sliced
with it) and a ``flatten`` (then it feeds a block of the next Linear's columns) into Linear or
Conv2d layers, which lose the matching inputs. A unit that reaches anything else (an addition, a
concatenation, the model's output) cannot be removed: its layer is *fixed*.

Scores (lowest removed first):

- ``norm``: ``‖w_in‖ · ‖w_out‖``, the norms of the unit's incoming weights (its row or filter) and
  of the outgoing weights that read it; a unit with either near zero contributes little.
- ``effect``: the increase in the task's loss on calibration examples when the unit's output is
  held at zero, measured one unit at a time (the task's metric moves in steps of one example on a
  calibration batch; its loss sees every change).

The stage (``compression/stages/shrink.py``) chooses the layers, the fraction and the retraining.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from dccore.errors import ModelError

from .tasks import model_outputs

_PASS_FUNCTIONS = {torch.relu, nn.functional.relu, torch.max_pool2d, nn.functional.max_pool2d,
                   nn.functional.avg_pool2d, nn.functional.dropout, torch.tanh,
                   torch.sigmoid, nn.functional.gelu, nn.functional.silu, nn.functional.relu6,
                   nn.functional.leaky_relu}
_PASS_METHODS = {"relu", "tanh", "sigmoid", "contiguous"}
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                 nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
UNIT_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class Link:
    """Where one layer's output units go."""

    layer: str
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (layer, inputs per unit)
    norms: list[str] = field(default_factory=list)                  # BatchNorms sliced with it
    fixed: str | None = None                                        # why it cannot shrink


def units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _inputs(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def trace_links(model: nn.Module) -> dict[str, Link]:
    """For every Linear / Conv2d (groups 1) of ``model``: the layers its units feed, or why it
    is fixed."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds for data-dependent control flow
        raise ModelError(f"{type(model).__name__}: shrinking reads the model's graph with "
                         f"torch.fx, which cannot trace it ({type(exc).__name__}: {exc})") from exc
    modules = dict(model.named_modules())
    links = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], UNIT_LAYERS):
            mod = modules[node.target]
            link = Link(node.target)
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                link.fixed = "a grouped convolution"
            else:
                _follow(node, link, modules, flat=False, width=units(mod))
            links[node.target] = link
    return links


def _follow(node: torch.fx.Node, link: Link, modules: dict[str, nn.Module], flat: bool,
            width: int) -> None:
    for user in node.users:
        if link.fixed:
            return
        kind = _kind(user, modules)
        if kind == "pass":
            _follow(user, link, modules, flat, width)
        elif kind == "norm":
            link.norms.append(user.target)
            _follow(user, link, modules, flat, width)
        elif kind == "flatten":
            _follow(user, link, modules, True, width)
        elif kind == "consumer":
            consumer = modules[user.target]
            if user.args[0] is not node or len(user.args) != 1:
                link.fixed = f"{user.target} reads it other than as its input"
            elif isinstance(consumer, nn.Conv2d) and (flat or consumer.groups != 1):
                link.fixed = f"{user.target} is a grouped convolution or reads it flattened"
            elif isinstance(consumer, nn.Linear) and _inputs(consumer) % width:
                link.fixed = f"{user.target}'s {_inputs(consumer)} inputs are not {width} blocks"
            elif isinstance(consumer, nn.Linear) and not flat and _inputs(consumer) != width:
                link.fixed = f"{user.target} reads it along another axis"
            else:
                link.consumers.append((user.target, _inputs(consumer) // width))
        else:
            link.fixed = f"its output reaches {_describe(user)}"


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, _PASS_MODULES):
            return "pass"
        if isinstance(mod, _NORMS):
            return "norm"
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            return "flatten"
        if isinstance(mod, UNIT_LAYERS):
            return "consumer"
        return "other"
    if node.op == "call_function":
        if node.target in _PASS_FUNCTIONS:
            return "pass"
        if node.target is torch.flatten and _flatten_from_1(node):
            return "flatten"
    if node.op == "call_method":
        if node.target in _PASS_METHODS:
            return "pass"
        if node.target == "flatten" and _flatten_from_1(node):
            return "flatten"
    return "other"


def _flatten_from_1(node: torch.fx.Node) -> bool:
    """``flatten(x, 1)`` / ``x.flatten(1)``: everything but the batch axis."""
    args = list(node.args[1:])
    start = args[0] if args else node.kwargs.get("start_dim", 0)
    end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _describe(node: torch.fx.Node) -> str:
    if node.op == "output":
        return "the model's output"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"


# ------------------------------------------------------------------------------------------
# Scores

def _blocks(keep: torch.Tensor, per_unit: int) -> torch.Tensor:
    """The input columns of the units ``keep`` when each unit feeds ``per_unit`` of them."""
    return (keep[:, None] * per_unit + torch.arange(per_unit)[None, :]).reshape(-1)


def norm_scores(model: nn.Module, link: Link) -> torch.Tensor:
    """‖w_in‖ · ‖w_out‖ per unit (see the module docstring)."""
    modules = dict(model.named_modules())
    w = modules[link.layer].weight.detach()
    w_in = w.reshape(w.shape[0], -1).norm(dim=1)
    out_sq = torch.zeros_like(w_in)
    for name, per_unit in link.consumers:
        c = modules[name].weight.detach()
        cols = c.transpose(0, 1).reshape(c.shape[1], -1)      # one row per input (channel)
        out_sq += (cols ** 2).sum(1).reshape(-1, per_unit).sum(1)
    return w_in * out_sq.sqrt()


@torch.no_grad()
def effect_scores(model: nn.Module, link: Link, loss: Callable[[torch.Tensor], torch.Tensor],
                  inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The task loss's increase, on ``inputs``, with each unit's output held at zero."""
    layer = model.get_submodule(link.layer)
    model.eval()
    base = float(loss(model_outputs(model(*inputs))))
    silenced: list[int] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, silenced[0]] = 0.0
        return out

    handle = layer.register_forward_hook(hook)
    scores = torch.empty(units(layer))
    try:
        for u in range(units(layer)):
            silenced[:] = [u]
            scores[u] = float(loss(model_outputs(model(*inputs)))) - base
    finally:
        handle.remove()
    return scores


def lowest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The indices of the ``keep`` highest-scoring units, in their original order (ties go to
    the lower index, so hand-made cases are deterministic)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


# ------------------------------------------------------------------------------------------
# Surgery

def _rebuilt(module: nn.Module, n_in: int, n_out: int, weight: torch.Tensor,
             bias: torch.Tensor | None) -> nn.Module:
    """A Linear or Conv2d like ``module`` with ``n_in`` inputs and ``n_out`` output units,
    holding ``weight`` and ``bias``."""
    if isinstance(module, nn.Linear):
        new = nn.Linear(n_in, n_out, bias=bias is not None)
    else:
        new = nn.Conv2d(n_in, n_out, module.kernel_size, module.stride, module.padding,
                        module.dilation, 1, bias is not None, module.padding_mode)
    new = new.to(device=module.weight.device, dtype=module.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _norm(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(module)(len(keep), module.eps, module.momentum, module.affine,
                       module.track_running_stats)
    like = next(iter(module.buffers()), None)
    new = new.to(device=like.device if like is not None else keep.device)
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(module, key, None)
            if value is not None:
                getattr(new, key).copy_(value[keep])
        if module.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(module.num_batches_tracked)
    return new


def shrink_layer(model: nn.Module, link: Link, keep: torch.Tensor,
                 masks: dict[str, torch.Tensor | None] | None = None) -> dict[str, nn.Module]:
    """Keep only the units ``keep`` (sorted indices) of ``link.layer``: rebuild it, the
    BatchNorms after it and the layers that read it. ``masks`` (layer -> pruning mask or None)
    are sliced in place the same way. Returns the new modules by name."""
    if link.fixed:
        raise ModelError(f"layer {link.layer} cannot shrink: {link.fixed}")
    modules = dict(model.named_modules())
    keep = keep.to(torch.long)
    layer = modules[link.layer]
    new = {link.layer: _rebuilt(layer, _inputs(layer), len(keep), layer.weight[keep],
                                None if layer.bias is None else layer.bias[keep])}
    if masks is not None and masks.get(link.layer) is not None:
        masks[link.layer] = masks[link.layer][keep]
    for name in link.norms:
        new[name] = _norm(modules[name], keep)
    for name, per_unit in link.consumers:
        cols = _blocks(keep, per_unit)
        consumer = modules[name]
        new[name] = _rebuilt(consumer, len(cols), units(consumer), consumer.weight[:, cols],
                             consumer.bias)
        if masks is not None and masks.get(name) is not None:
            masks[name] = masks[name][:, cols]
    for name, module in new.items():
        module.train(modules[name].training)      # a BatchNorm in eval mode stays in it
        model.set_submodule(name, module)
    return new


def target_width(start: int, fraction: float, round_index: int, rounds: int) -> int:
    """Units left after round ``round_index`` (0-based) of ``rounds`` removing ``fraction``
    of the ``start`` units in equal steps; at least one."""
    return max(1, start - math.floor(start * fraction * (round_index + 1) / rounds + 1e-9))
