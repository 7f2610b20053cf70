"""Magnitude pruning with retraining (Han et al. 2015/2016).

Per layer, the weights below a threshold are cut: ``quality x std`` of the layer's weights as they
enter the stage (the paper's rule), or the magnitude that zeroes a target ``sparsity``. With several
rounds the cut grows to its target step by step, each step followed by retraining with the mask
enforced; the survivors keep their trained values (no re-initialisation). Masks only ever shrink.
"""
from __future__ import annotations

import torch

from ._context import StageContext
from ._train import train
from dccore.errors import ModelError
from .recipe import PruneConfig


def magnitude_mask(weight: torch.Tensor, *, threshold: float | None = None,
                   sparsity: float | None = None, previous: torch.Tensor | None = None) -> torch.Tensor:
    """The mask keeping weights with ``|w| > threshold``, or the largest ``1 - sparsity`` share.

    Sparsity is counted over the whole layer; ties are broken by position so the result is exact
    and deterministic. A weight cut earlier (``previous`` False) stays cut.
    """
    magnitude = weight.detach().abs().flatten()
    if previous is not None:
        magnitude = torch.where(previous.flatten(), magnitude, torch.full_like(magnitude, -1.0))
    if threshold is not None:
        keep = magnitude > threshold
    else:
        n_keep = round((1.0 - float(sparsity)) * magnitude.numel())
        keep = torch.zeros_like(magnitude, dtype=torch.bool)
        if n_keep > 0:
            # stable sort: among equal magnitudes the earlier position wins
            order = torch.sort(magnitude, descending=True, stable=True).indices
            keep[order[:n_keep]] = True
        if previous is not None:
            keep &= previous.flatten()
    return keep.view_as(weight)


def _round_targets(settings: dict, std: float, round_index: int, rounds: int) -> dict:
    """Threshold or sparsity for one round of an iterative schedule."""
    frac = (round_index + 1) / rounds
    if settings.get("sparsity") is not None:
        # geometric: the kept share shrinks by the same factor each round
        keep = (1.0 - settings["sparsity"]) ** frac
        return {"sparsity": 1.0 - keep}
    return {"threshold": settings["quality"] * frac * std}


def run(model: torch.nn.Module, config: PruneConfig, ctx: StageContext) -> None:
    """The ``prune`` stage: ``rounds`` x (cut, retrain ``retrain_epochs``)."""
    chosen = {name: s for name, layer in ctx.state.layers.items()
              if (s := config.for_layer(name, layer.type_name)) is not None
              and (s.get("quality") is not None or s.get("sparsity") is not None)}
    stds = {name: float(ctx.state.layers[name].weight.detach().std()) for name in chosen}
    spec = ctx.retrain_spec(config.retrain_epochs, config.lr, config.weight_decay,
                            config.distill, config.temperature)
    teacher = ctx.teacher_logits(spec)
    generator = ctx.generator(101)
    history = []
    for r in range(config.rounds):
        for name, settings in chosen.items():
            layer = ctx.state.layers[name]
            target = _round_targets(settings, stds[name], r, config.rounds)
            layer.mask = magnitude_mask(layer.weight, previous=layer.mask, **target)
        ctx.state.enforce()
        ctx.state.check()
        ctx.log(f"round {r + 1}/{config.rounds}: sparsity {ctx.state.sparsity():.1%}")
        train(model, ctx.train, spec, after_backward=ctx.state.mask_gradients,
              after_step=ctx.state.enforce, generator=generator, teacher_logits=teacher,
              progress=ctx.progress,
              description=f"prune round {r + 1}/{config.rounds}")
        history.append({"round": r + 1, "sparsity": ctx.state.sparsity()})
    ctx.metrics["rounds"] = history
    _ensure_targets(ctx, chosen)


def _ensure_targets(ctx: StageContext, chosen: dict[str, dict]) -> None:
    """The stage's contract: each layer reached its target sparsity (to one weight)."""
    for name, settings in chosen.items():
        if settings.get("sparsity") is None:
            continue
        w = ctx.state.layers[name].weight
        reached = float((w == 0).sum()) / w.numel()
        if reached + 1.0 / w.numel() < settings["sparsity"]:
            raise ModelError(f"prune: layer {name} reached sparsity {reached:.4f}, below its "
                             f"target {settings['sparsity']}")
