"""The ``share`` stage: per-layer 1-D k-means weight sharing of the surviving weights
(Han et al. 2016, §3). The clustering itself is ``compression/share.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dccore.errors import ModelError

from .._config import Int, OneOf, setting
from .._context import StageContext
from ..share import share_layer
from ._base import CONV_TYPES, Stage, StageConfig, register_stage


@dataclass(frozen=True)
class ShareConfig(StageConfig):
    """Per-layer 1-D k-means weight sharing of the surviving weights."""

    KIND: ClassVar[str] = "share"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("bits", "init")
    INITS: ClassVar[tuple[str, ...]] = ("linear", "density", "random")
    # None: 8 for conv, 5 for fully connected (the paper's finding)
    bits: int | None = setting(None, Int(1, 16))
    # None: "linear" (keeps the rare large weights; the paper's best)
    init: str | None = setting(None, OneOf(INITS))
    iterations: int = setting(30, Int(1, 10000))   # Lloyd's; stops early once centroids settle

    def defaults_for(self, type_name: str) -> dict[str, Any]:
        return {"bits": 8 if type_name in CONV_TYPES else 5, "init": "linear"}


def run(model: torch.nn.Module, config: ShareConfig, ctx: StageContext) -> None:
    """Cluster each chosen layer; its weights become their centroids."""
    generator = ctx.generator(202)
    for name, layer in ctx.state.layers.items():
        settings = config.for_layer(name, layer.type_name)
        if settings is None:
            continue
        centroids, assign, _ = share_layer(layer.weight, layer.mask, settings["bits"],
                                           settings["init"], config.iterations, generator)
        layer.centroids, layer.assignments, layer.bits = centroids, assign, settings["bits"]
        ctx.log(f"{name}: {centroids.numel()} centroids ({settings['bits']} bits)")
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
