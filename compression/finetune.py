"""Trained quantization (Han et al. 2016, §3.3): fine-tune the shared centroids.

The gradient of a centroid is the sum of the gradients of the weights assigned to it; centroids
move, assignments and masks stay fixed. Uncompressed parameters (biases, norms) train as usual.
"""
from __future__ import annotations

import torch

from ._context import StageContext
from ._state import CompressionState
from ._train import train
from .recipe import FinetuneCentroidsConfig


def centroid_gradients(state: CompressionState, params: dict[str, torch.nn.Parameter]) -> None:
    """Move each shared weight's gradient onto its centroids (summed per cluster)."""
    for name, centroids in params.items():
        layer = state.layers[name]
        grad = layer.weight.grad
        if grad is None:
            centroids.grad = torch.zeros_like(centroids)
            continue
        keep = layer.mask if layer.mask is not None else torch.ones_like(grad, dtype=torch.bool)
        centroids.grad = torch.zeros_like(centroids).index_add_(
            0, layer.assignments[keep], grad[keep])
        layer.weight.grad = None


def run(model: torch.nn.Module, config: FinetuneCentroidsConfig, ctx: StageContext) -> None:
    state = ctx.state
    shared = {name: torch.nn.Parameter(layer.centroids.clone())
              for name, layer in state.layers.items() if layer.centroids is not None}
    shared_weights = {id(state.layers[name].weight) for name in shared}
    params = [p for p in model.parameters() if id(p) not in shared_weights] + list(shared.values())

    def after_step() -> None:
        for name, centroids in shared.items():
            state.layers[name].centroids = centroids.detach()
        state.enforce()

    def after_backward() -> None:
        state.mask_gradients()
        centroid_gradients(state, shared)

    spec = ctx.retrain_spec(config.epochs, config.lr, distill=config.distill,
                            temperature=config.temperature)
    train(model, ctx.train, spec, params=params, after_backward=after_backward,
          after_step=after_step, generator=ctx.generator(303),
          teacher_logits=ctx.teacher_logits(spec), progress=ctx.progress,
          description="fine-tune centroids")
    for name, centroids in shared.items():
        state.layers[name].centroids = centroids.detach().clone()
    state.enforce()
