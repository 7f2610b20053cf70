"""The ``share`` stage: per-layer 1-D k-means weight sharing of the surviving weights
(Han et al. 2016, §3). The clustering itself is ``compression/share.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dccore.errors import ModelError, RecipeError

from .._config import Int, OneOf, setting
from .._context import StageContext
from ..share import compensated_assignments, share_grouped, share_layer
from ._base import CONV_TYPES, RNN_TYPES, Stage, StageConfig, register_stage


@dataclass(frozen=True)
class ShareConfig(StageConfig):
    """Per-layer 1-D k-means weight sharing of the surviving weights."""

    KIND: ClassVar[str] = "share"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("bits", "init", "group_size", "weighting",
                                                "compensate")
    INITS: ClassVar[tuple[str, ...]] = ("kmeans++", "linear", "density", "random")
    WEIGHTINGS: ClassVar[tuple[str, ...]] = ("none", "fisher", "activation")
    COMPENSATIONS: ClassVar[tuple[str, ...]] = ("none", "gptq")
    # None: 8 for conv, 5 for fully connected (the paper's finding)
    bits: int | None = setting(None, Int(1, 16))
    # None: "kmeans++": seeds where weights are (linear init, the paper's, leaves most of an 8-bit
    # codebook empty on a pretrained transformer's bell-shaped weights)
    init: str | None = setting(None, OneOf(INITS))
    # rows per codebook (Core ML iOS 18's per-grouped-channel LUTs); None: one per tensor
    group_size: int | None = setting(None, Int(1, 1 << 20))
    # "fisher": each weight's error weighed by its sensitivity on calibration data (SqueezeLLM,
    # coremltools' SKM): centroids go where output error is costly; "activation": by the
    # squared norm of its input (the layer's own output error); "none": all alike
    weighting: str | None = setting(None, OneOf(WEIGHTINGS))
    # "gptq": assign weights to centroids column by column, pushing each column's error onto the
    # later columns through the inverse input curvature (GPTQ/SparseGPT; Linear and attention
    # layers), so the layer's outputs stay close without retraining; "none": nearest centroid
    compensate: str | None = setting(None, OneOf(COMPENSATIONS))
    iterations: int = setting(30, Int(1, 10000))   # Lloyd's; stops early once centroids settle
    # calibration examples for weighting = "fisher" (the first of the training split)
    calibration: int = setting(256, Int(1, 1 << 20))

    def defaults_for(self, type_name: str) -> dict[str, Any]:
        return {"bits": 8 if type_name in CONV_TYPES else 5, "init": "kmeans++",
                "group_size": None, "weighting": "none", "compensate": "none"}

    @classmethod
    def _check_layer(cls, settings, path: str) -> None:
        plain = settings.get("init") in ("density", "random")
        if plain and (settings.get("group_size") is not None
                      or settings.get("weighting") in ("fisher", "activation")
                      or settings.get("compensate") == "gptq"):
            raise RecipeError(f"{path}: group_size, weighting and compensate work with init "
                              "'kmeans++' or 'linear'")


def _calibration(ctx: StageContext, n: int) -> list[tuple[torch.Tensor, ...]]:
    calib = ctx.train.subset(n)
    return [calib.take(slice(i, i + 64))[0] for i in range(0, len(calib), 64)]


def run(model: torch.nn.Module, config: ShareConfig, ctx: StageContext) -> None:
    """Cluster each chosen layer; its weights become their centroids."""
    generator = ctx.generator(202)
    chosen = {name: s for name, layer in ctx.state.layers.items()
              if (s := config.for_layer(name, layer.type_name)) is not None}
    weighted = [n for n, s in chosen.items() if s["weighting"] == "fisher"]
    sensitivity = {}
    if weighted:
        from ..calibration import task_sensitivity

        sensitivity = task_sensitivity(
            model, ctx.task, ctx.train.subset(config.calibration),
            {n: ctx.state.layers[n].weight for n in weighted}, seed=ctx.seed)
        ctx.metrics["calibration_examples"] = min(config.calibration, len(ctx.train))
    curved = {n: ctx.state.layers[n].module for n, s in chosen.items()
              if (s["weighting"] == "activation" or s["compensate"] == "gptq")
              and ctx.state.layers[n].weight.dim() == 2
              and ctx.state.layers[n].type_name in ("Linear", "MultiheadAttention", *RNN_TYPES)}
    batches = _calibration(ctx, config.calibration) if curved else []
    if curved:
        ctx.metrics["calibration_examples"] = min(config.calibration, len(ctx.train))
    for name, settings in chosen.items():     # in the model's order: GPTQ goes layer by layer
        layer = ctx.state.layers[name]
        hessian = None
        if name in curved:   # measured on the model as compressed so far (sequential GPTQ)
            from ..calibration import input_hessians

            hessian = input_hessians(model, {name: curved[name]}, batches)[name]
        if settings["weighting"] == "activation" and hessian is not None:
            sensitivity[name] = torch.diag(hessian)[None, :].expand_as(layer.weight)
        if (settings["group_size"] is None and name not in sensitivity
                and settings["init"] != "kmeans++"):
            centroids, assign, _ = share_layer(layer.weight, layer.mask, settings["bits"],
                                               settings["init"], config.iterations, generator)
        else:
            centroids, assign, _ = share_grouped(
                layer.weight, layer.mask, settings["bits"], init=settings["init"],
                iterations=config.iterations, group_size=settings["group_size"],
                sensitivity=sensitivity.get(name), generator=generator)
            if settings["compensate"] == "gptq" and hessian is not None:
                assign = compensated_assignments(layer.weight, layer.mask, centroids,
                                                 settings["bits"], settings["group_size"],
                                                 hessian)
        layer.centroids, layer.assignments, layer.bits = centroids, assign, settings["bits"]
        layer.group_size = settings["group_size"]
        notes = [f"{settings['bits']} bits"]
        if layer.group_size:
            notes.append(f"{layer.group_size} rows per codebook")
        if name in sensitivity:
            notes.append(f"{settings['weighting']}-weighted")
        if settings["compensate"] == "gptq" and hessian is not None:
            notes.append("GPTQ-compensated")
        layer.enforce()     # later layers' calibration inputs see this layer compressed
        ctx.log(f"{name}: {centroids.numel()} centroids ({', '.join(notes)})")
    ctx.state.enforce()


def ensures_tied(names: list[str], ctx: StageContext, stage: str) -> None:
    """Each named layer's weight is its codebook read through its assignments (0 where masked),
    so it holds at most 2**bits distinct non-zero values."""
    for name in names:
        layer = ctx.state.layers[name]
        if layer.centroids is None:
            raise ModelError(f"{stage}: layer {name} has no codebook")
        w = layer.weight.detach()
        expected = layer.centroids[layer.assignments]
        if layer.mask is not None:
            expected = torch.where(layer.mask, expected, torch.zeros_like(expected))
        if not torch.equal(w, expected):
            raise ModelError(f"{stage}: layer {name} is not tied to its centroids")
        if layer.group_size is not None:   # the state's check covers the groups
            continue
        distinct = torch.unique(w[w != 0]).numel()
        if distinct > 2 ** layer.bits:
            raise ModelError(f"{stage}: layer {name} holds {distinct} distinct non-zero values, "
                             f"more than 2**{layer.bits}")


def ensures(model: torch.nn.Module, config: ShareConfig, ctx: StageContext) -> None:
    """Every chosen layer has a codebook of the bits asked for, and its weights hold at most
    2**bits distinct non-zero values."""
    chosen = []
    for name, layer in ctx.state.layers.items():
        settings = config.for_layer(name, layer.type_name)
        if settings is None:
            continue
        if layer.bits != settings["bits"]:
            raise ModelError(f"share: layer {name} has {layer.bits} bits, asked for "
                             f"{settings['bits']}")
        chosen.append(name)
    ensures_tied(chosen, ctx, "share")


register_stage(Stage(
    ShareConfig, run, ensures,
    provides=frozenset({"centroids"}),
    size_row="pruning + sharing",
))
