"""Trained quantization (Han et al. 2016, §3.3): the gradient of a shared centroid.

The gradient of a centroid is the sum of the gradients of the weights assigned to it; centroids
move, assignments and masks stay fixed. The ``finetune_centroids`` stage (the training loop around
this) is ``compression/stages/finetune.py``.
"""
from __future__ import annotations

import torch

from ._state import CompressionState


def centroid_gradients(state: CompressionState, params: dict[str, torch.nn.Parameter]) -> None:
    """Move each shared weight's gradient onto its centroids (summed per cluster)."""
    for name, centroids in params.items():
        layer = state.layers[name]
        grad = layer.weight.grad
        if grad is None:
            centroids.grad = torch.zeros_like(centroids)
            continue
        centroids.grad = layer.cluster_sums(grad)
        layer.weight.grad = None
