"""The ``finetune_centroids`` stage: trained quantization (Han et al. 2016, §3.3).

Centroids move by the summed gradients of their weights (:func:`compression.finetune.
centroid_gradients`); assignments and masks stay fixed. Uncompressed parameters (biases, norms)
train as usual. Needs a ``share`` stage before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dccore.config import Int, Num, setting
from .._context import StageContext
from .._train import train
from ..finetune import centroid_gradients
from ._base import Stage, StageConfig, register_stage
from .share import ensures_tied


@dataclass(frozen=True)
class FinetuneCentroidsConfig(StageConfig):
    """Trained quantization: centroids move by the summed gradients of their weights."""

    KIND: ClassVar[str] = "finetune_centroids"
    epochs: int = setting(3, Int(0, 1000))   # a few: the codebooks are small and start close
    # None: baseline lr / 10 (the paper's retraining rate)
    lr: float | None = setting(None, Num(0.0, 10.0, lo_open=True))
    # weight of the dense baseline's soft targets; 0: labels only (the paper)
    distill: float = setting(0.0, Num(0.0, 1.0))
    temperature: float = setting(4.0, Num(0.0, 100.0, lo_open=True))  # Hinton et al.'s range


def run(model: torch.nn.Module, config: FinetuneCentroidsConfig, ctx: StageContext) -> None:
    state = ctx.state
    shared = {name: torch.nn.Parameter(layer.centroids.clone())
              for name, layer in state.layers.items() if layer.centroids is not None}
    # a grid codebook (share's grid) trains its scales, so its centroids stay scale x integer
    # levels: the levels are what LiteRT stores, and they do not move
    scales = {name: torch.nn.Parameter(state.layers[name].scales.clone())
              for name in shared if state.layers[name].grid is not None}
    shared_weights = {id(state.layers[name].weight) for name in shared}
    params = ([p for p in model.parameters() if id(p) not in shared_weights]
              + [p for n, p in shared.items() if n not in scales] + list(scales.values()))

    def after_step() -> None:
        for name, centroids in shared.items():
            layer = state.layers[name]
            if name in scales:
                with torch.no_grad():      # a scale stays positive: the codebook stays sorted
                    scales[name].clamp_(min=torch.finfo(torch.float32).tiny)
                layer.scales = scales[name].detach().clone()
                centroids.data.copy_(layer.grid_centroids())
            layer.centroids = centroids.detach()
        state.enforce()

    def after_backward() -> None:
        state.mask_gradients()
        centroid_gradients(state, shared)
        for name, scale in scales.items():     # d loss / d scale = sum of grad x level
            layer = state.layers[name]
            per_level = shared[name].grad * layer.levels.float()
            scale.grad = per_level.reshape(scale.numel(), -1).sum(1)

    spec = ctx.retrain_spec(config.epochs, config.lr, distill=config.distill,
                            temperature=config.temperature)
    train(model, ctx.train, spec, ctx.task, params=params, after_backward=after_backward,
          after_step=after_step, generator=ctx.generator(303),
          teacher_logits=ctx.teacher_logits(spec), teacher_model=ctx.teacher_model(),
          progress=ctx.progress,
          description="fine-tune centroids")
    for name, centroids in shared.items():
        state.layers[name].centroids = centroids.detach().clone()
        if name in scales:
            state.layers[name].scales = scales[name].detach().clone()
    state.enforce()


def ensures(model: torch.nn.Module, config: FinetuneCentroidsConfig, ctx: StageContext) -> None:
    """Every shared layer is still its codebook read through its (unchanged) assignments."""
    ensures_tied([n for n, layer in ctx.state.layers.items() if layer.centroids is not None],
                 ctx, "finetune_centroids")


def schedule(config: FinetuneCentroidsConfig):
    """In a user's own loop: every shared weight's gradient becomes its cluster's summed
    gradient for ``epochs`` of their training."""
    yield lambda loop: loop.train_centroids(True)
    yield config.epochs
    yield lambda loop: loop.train_centroids(False)


register_stage(Stage(
    FinetuneCentroidsConfig, run, ensures,
    schedule=schedule,
    requires={"centroids": "there are no centroids to fine-tune yet"},
    size_row="pruning + sharing",
))
