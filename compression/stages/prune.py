"""The ``prune`` stage: magnitude pruning with retraining (Han et al. 2015/2016).

The cut itself (:func:`compression.prune.magnitude_mask`) and its schedule over rounds live in
``compression/prune.py``; this file is the stage: its config, ``rounds`` x (cut, retrain), the
promise it keeps, and its place in the order (before weight sharing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from dccore.errors import ModelError, RecipeError

from .._config import Int, Num, setting
from .._context import StageContext
from .._train import train
from ..prune import magnitude_mask, round_targets
from ._base import Stage, StageConfig, register_stage


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    """Magnitude pruning with retraining: threshold = quality x std(layer), or a target sparsity.

    With ``rounds`` > 1 the cut grows to its target over the rounds, each followed by
    ``retrain_epochs`` of retraining with the mask enforced (iterative pruning beats one big cut).
    """

    KIND: ClassVar[str] = "prune"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("quality", "sparsity")
    # the paper's quality parameter (x std of the layer)
    quality: float | None = setting(None, Num(0.0, 10.0, lo_open=True))
    # or: the fraction of the layer's weights to zero
    sparsity: float | None = setting(None, Num(0.0, 1.0, hi_open=True))
    rounds: int = setting(3, Int(1, 100))            # iterative: the paper's 5x -> 9x
    retrain_epochs: int = setting(2, Int(0, 1000))   # per round
    # None: baseline lr / 10 (the paper's retraining rate)
    lr: float | None = setting(None, Num(0.0, 10.0, lo_open=True))
    weight_decay: float = setting(0.0, Num(0.0, 1.0))  # extra L2 in retraining; none, as the baseline
    # weight of the dense baseline's soft targets in retraining; 0: labels only (the paper)
    distill: float = setting(0.0, Num(0.0, 1.0))
    temperature: float = setting(4.0, Num(0.0, 100.0, lo_open=True))  # Hinton et al.'s range

    @classmethod
    def _check_layer(cls, settings: Mapping[str, Any], path: str) -> None:
        if settings.get("quality") is not None and settings.get("sparsity") is not None:
            raise RecipeError(f"{path}: give either quality or sparsity, not both")

    def _check(self, path: str) -> None:
        super()._check(path)
        if self.quality is None and self.sparsity is None:
            raise RecipeError(f"{path}: a prune stage needs quality (x std of each layer's "
                              "weights) or sparsity (fraction to zero); neither was given")


def _chosen(config: PruneConfig, ctx: StageContext) -> dict[str, dict]:
    """The layers this stage cuts, with their settings."""
    return {name: s for name, layer in ctx.state.layers.items()
            if (s := config.for_layer(name, layer.type_name)) is not None
            and (s.get("quality") is not None or s.get("sparsity") is not None)}


def run(model: torch.nn.Module, config: PruneConfig, ctx: StageContext) -> None:
    """``rounds`` x (cut, retrain ``retrain_epochs``); masks only ever shrink."""
    chosen = _chosen(config, ctx)
    stds = {name: float(ctx.state.layers[name].weight.detach().std()) for name in chosen}
    spec = ctx.retrain_spec(config.retrain_epochs, config.lr, config.weight_decay,
                            config.distill, config.temperature)
    teacher = ctx.teacher_logits(spec)
    generator = ctx.generator(101)
    history = []
    for r in range(config.rounds):
        for name, settings in chosen.items():
            layer = ctx.state.layers[name]
            target = round_targets(settings, stds[name], r, config.rounds)
            layer.mask = magnitude_mask(layer.weight, previous=layer.mask, **target)
        ctx.state.enforce()
        ctx.state.check()       # mid-stage, before retraining builds on the cut
        ctx.log(f"round {r + 1}/{config.rounds}: sparsity {ctx.state.sparsity():.1%}")
        train(model, ctx.train, spec, ctx.task, after_backward=ctx.state.mask_gradients,
              after_step=ctx.state.enforce, generator=generator, teacher_logits=teacher,
              progress=ctx.progress,
              description=f"prune round {r + 1}/{config.rounds}")
        history.append({"round": r + 1, "sparsity": ctx.state.sparsity()})
    ctx.metrics["rounds"] = history


def ensures(model: torch.nn.Module, config: PruneConfig, ctx: StageContext) -> None:
    """Each chosen layer is masked, its masked weights are 0, and it reached its target sparsity
    (to one weight: the cut is rounded per layer)."""
    for name, settings in _chosen(config, ctx).items():
        layer = ctx.state.layers[name]
        w = layer.weight.detach()
        if layer.mask is None or bool((w[~layer.mask] != 0).any()):
            raise ModelError(f"prune: layer {name} is not masked, or a masked weight is non-zero")
        if settings.get("sparsity") is None:
            continue
        reached = float((w == 0).sum()) / w.numel()
        if reached + 1.0 / w.numel() < settings["sparsity"]:
            raise ModelError(f"prune: layer {name} reached sparsity {reached:.4f}, below its "
                             f"target {settings['sparsity']}")


register_stage(Stage(
    PruneConfig, run, ensures,
    provides=frozenset({"masks"}),
    forbids={"centroids": "pruning must come before weight sharing (the paper's order)"},
    size_row="pruning",
))
