"""Weight sharing: per-layer 1-D k-means over the surviving weights (Han et al. 2016, §3).

Each layer gets ``2**bits`` centroids; every surviving weight is replaced by its nearest centroid.
Linear initialisation (evenly spaced between the smallest and largest weight) is the default: the
paper found it beats density and random initialisation because it keeps the rare large weights.
The ``share`` stage is ``compression/stages/share.py``.
"""
from __future__ import annotations

import torch


def _linear_init(values: torch.Tensor, k: int) -> torch.Tensor:
    """Evenly spaced between min and max, skipping the empty band that pruning leaves around 0.

    Spread over [min, max] alone, a pruned layer would put many centroids in that band where no
    weight lives; they would stay empty and the layer would use far fewer than 2**bits values.
    """
    neg, pos = values[values < 0], values[values > 0]
    if neg.numel() == 0 or pos.numel() == 0 or k < 2:
        return torch.linspace(float(values.min()), float(values.max()), k)
    neg_len = float(neg.max() - neg.min())
    pos_len = float(pos.max() - pos.min())
    k_neg = min(k - 1, max(1, round(k * neg_len / max(neg_len + pos_len, 1e-30))))
    return torch.cat([torch.linspace(float(neg.min()), float(neg.max()), k_neg),
                      torch.linspace(float(pos.min()), float(pos.max()), k - k_neg)])


def init_centroids(values: torch.Tensor, k: int, method: str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    if method == "linear":
        return _linear_init(values, k)
    if method == "density":   # evenly spaced on the CDF: crowded where weights are crowded
        return torch.quantile(values.double(), torch.linspace(0, 1, k, dtype=torch.float64)).float()
    if method == "random":
        pick = torch.randperm(values.numel(), generator=generator)[:k]
        return values[pick].sort().values
    raise ValueError(f"unknown centroid initialisation {method!r}")


def kmeans_1d(values: torch.Tensor, k: int, *, init: str = "linear", iterations: int = 30,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in one dimension. Returns (sorted centroids (k',), assignment per value).

    In 1-D the nearest centroid is found by bisection on the midpoints between sorted centroids,
    so an iteration is O(n log k). Empty clusters keep their place. Centroids that coincide are
    merged, so k' <= k.
    """
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    k = max(1, min(k, values.numel()))
    centroids = init_centroids(values, k, init, generator).sort().values
    assign = torch.zeros_like(values, dtype=torch.long)
    for _ in range(iterations):
        assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, values.double())
        counts = torch.bincount(assign, minlength=k)
        updated = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated.sort().values
    assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    used, assign = torch.unique(assign, return_inverse=True)   # drop empty clusters
    centroids = centroids[used]
    centroids, inverse = torch.unique(centroids, return_inverse=True)  # merge equal centroids
    return centroids, inverse[assign]


def share_layer(weight: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str,
                iterations: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centroids, assignments shaped like the weight, mask) for one layer."""
    if mask is None:
        mask = torch.ones_like(weight, dtype=torch.bool)
    survivors = weight.detach()[mask]
    centroids, assign = kmeans_1d(survivors, 2 ** bits, init=init, iterations=iterations,
                                  generator=generator)
    full = torch.zeros_like(weight, dtype=torch.long)
    full[mask] = assign
    if centroids.numel() == 0:          # a fully pruned layer: one unused centroid
        centroids = torch.zeros(1)
    return centroids, full, mask
