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

from dccore.config import Int, Num, OneOf, setting
from .._context import StageContext
from ..calibration import input_norms, wanda_mask, weight_matrix
from ..prune import magnitude_mask, round_targets
from ._base import Stage, StageConfig, register_stage


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    """Magnitude pruning with retraining: threshold = quality x std(layer), or a target sparsity.

    With ``rounds`` > 1 the cut grows to its target over the rounds, each followed by
    ``retrain_epochs`` of retraining with the mask enforced (iterative pruning beats one big cut).
    """

    KIND: ClassVar[str] = "prune"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("quality", "sparsity", "method")
    METHODS: ClassVar[tuple[str, ...]] = ("magnitude", "wanda")
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
    # None: "magnitude" (|w|, the paper's); "wanda": |w| x the norm of its input on calibration
    # data, per output row (Sun et al. 2023): with retrain_epochs = 0, pruning without retraining
    method: str | None = setting(None, OneOf(METHODS))
    calibration: int = setting(256, Int(1, 1 << 20))   # examples Wanda measures its inputs on

    @classmethod
    def _check_layer(cls, settings: Mapping[str, Any], path: str) -> None:
        if settings.get("quality") is not None and settings.get("sparsity") is not None:
            raise RecipeError(f"{path}: give either quality or sparsity, not both")
        if settings.get("method") == "wanda" and settings.get("quality") is not None:
            raise RecipeError(f"{path}: method 'wanda' cuts a sparsity per output row; give "
                              "sparsity, not quality")

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


def layer_stds(config: PruneConfig, ctx: StageContext) -> dict[str, float]:
    """Each chosen layer's weight std as the stage starts (the paper's quality x std rule)."""
    return {name: float(ctx.state.layers[name].weight.detach().std())
            for name in _chosen(config, ctx)}


def cut_round(model: torch.nn.Module, config: PruneConfig, ctx: StageContext, round_index: int,
              stds: dict[str, float]) -> None:
    """Round ``round_index`` of the cut (masks only ever shrink); no retraining."""
    chosen = _chosen(config, ctx)
    norms = _input_norms(model, config, ctx, chosen)
    for name, settings in chosen.items():
        layer = ctx.state.layers[name]
        target = round_targets(settings, stds[name], round_index, config.rounds)
        if name in norms:
            layer.mask = wanda_mask(layer.weight, norms[name], target["sparsity"],
                                    previous=layer.mask, module=layer.module)
        else:
            layer.mask = magnitude_mask(layer.weight, previous=layer.mask, **target)
    ctx.state.enforce()
    ctx.state.check()       # mid-stage, before retraining builds on the cut
    ctx.log(f"round {round_index + 1}/{config.rounds}: sparsity {ctx.state.sparsity():.1%}")


def run(model: torch.nn.Module, config: PruneConfig, ctx: StageContext) -> None:
    """``rounds`` x (cut, retrain ``retrain_epochs``); masks only ever shrink."""
    stds = layer_stds(config, ctx)
    retrain = ctx.retrainer(model, config, 101)
    history = []
    for r in range(config.rounds):
        cut_round(model, config, ctx, r, stds)
        retrain(f"prune round {r + 1}/{config.rounds}")
        history.append({"round": r + 1, "sparsity": ctx.state.sparsity()})
    ctx.metrics["rounds"] = history


def _input_norms(model: torch.nn.Module, config: PruneConfig, ctx: StageContext,
                 chosen: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Wanda's input-feature norms for the layers cut that way, on the calibration examples."""
    wanda = {n: ctx.state.layers[n].module for n, s in chosen.items()
             if s.get("method") == "wanda"}
    if not wanda:
        return {}
    calib = ctx.train.subset(config.calibration)
    batches = [calib.take(slice(i, i + 64))[0] for i in range(0, len(calib), 64)]
    return input_norms(model, wanda, batches)


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
        # the cut is rounded per layer, or per output row for Wanda (and per round)
        rows = weight_matrix(layer.module, w).shape[:2].numel() if w.dim() > 1 else 1
        slack = (config.rounds * rows if settings.get("method") == "wanda" else 1.0) / w.numel()
        if reached + slack < settings["sparsity"]:
            raise ModelError(f"prune: layer {name} reached sparsity {reached:.4f}, below its "
                             f"target {settings['sparsity']}")


def schedule(config: PruneConfig):
    """In a user's own loop: ``rounds`` x (cut, ``retrain_epochs`` of their training)."""
    stds: dict[str, float] = {}

    def cut(loop, round_index: int) -> None:
        ctx = loop.context()
        if round_index == 0:
            stds.update(layer_stds(config, ctx))
        cut_round(loop.model, config, ctx, round_index, stds)
        if round_index == config.rounds - 1:
            ensures(loop.model, config, ctx)

    for r in range(config.rounds):
        yield lambda loop, r=r: cut(loop, r)
        yield config.retrain_epochs


register_stage(Stage(
    PruneConfig, run, ensures,
    schedule=schedule,
    provides=frozenset({"masks"}),
    forbids={"centroids": "pruning must come before weight sharing (the paper's order)"},
    size_row="pruning",
))
