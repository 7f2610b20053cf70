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


# ---- weighted and grouped k-means (post-training: SqueezeLLM-style sensitivity, per-group LUTs)

# k-means++ seeds from at most this many values per group (sampled): on an embedding table of
# 11M weights a full D^2 pass per centroid would cost minutes and change nothing measurable
_PLUSPLUS_SAMPLE = 1 << 16


def _plusplus(values: torch.Tensor, weights: torch.Tensor, k: int,
              generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeds per row of ``values`` (G, m): each next seed drawn with probability
    proportional to weight x squared distance to the nearest seed so far (Arthur & Vassilvitskii),
    so rare large weights get a centroid when they matter and empty ranges get none."""
    g, m = values.shape
    if m > _PLUSPLUS_SAMPLE:
        pick = torch.randint(0, m, (g, _PLUSPLUS_SAMPLE), generator=generator)
        values, weights = values.gather(1, pick), weights.gather(1, pick)
    w = weights.double().clamp(min=0)
    alive = w.sum(1) > 0
    w = torch.where(alive[:, None], w, torch.ones_like(w))
    seeds = torch.empty(g, k, dtype=values.dtype)
    seeds[:, 0] = values.gather(1, torch.multinomial(w, 1, generator=generator)).squeeze(1)
    d2 = (values - seeds[:, :1]).double().pow(2)
    for j in range(1, k):
        p = w * d2
        empty = p.sum(1) <= 0          # every value already a seed: repeat one (merged later)
        p = torch.where(empty[:, None], w, p)
        seeds[:, j] = values.gather(1, torch.multinomial(p, 1, generator=generator)).squeeze(1)
        d2 = torch.minimum(d2, (values - seeds[:, j:j + 1]).double().pow(2))
    return seeds


def kmeans_groups(values: torch.Tensor, weights: torch.Tensor, k: int, *, init: str = "kmeans++",
                  iterations: int = 30, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted 1-D k-means in every row of ``values`` (G groups x m values) at once.

    ``weights`` (same shape, >= 0) weigh each value's squared error: a sensitivity (Fisher
    information) or 1, and 0 for padding and pruned weights, which then pull no centroid.
    Returns (centroids (G, k) sorted per group, assignment (G, m) into its group's centroids)."""
    values = values.detach().float()
    weights = weights.detach().float()
    if init == "kmeans++":
        centroids = _plusplus(values, weights, k, generator)
    elif init == "linear":
        big = torch.finfo(torch.float32).max
        lo = torch.where(weights > 0, values, torch.full_like(values, big)).amin(1)
        hi = torch.where(weights > 0, values, torch.full_like(values, -big)).amax(1)
        lo, hi = torch.where(lo > hi, 0.0, lo), torch.where(lo > hi, 0.0, hi)
        steps = torch.linspace(0, 1, k)
        centroids = lo[:, None] + (hi - lo)[:, None] * steps[None, :]
    else:
        raise ValueError(f"grouped or weighted k-means starts from 'kmeans++' or 'linear', "
                         f"not {init!r}")
    centroids = centroids.sort(dim=1).values.contiguous()
    w64, wx = weights.double(), (weights.double() * values.double())
    for _ in range(iterations):
        assign = torch.searchsorted((centroids[:, 1:] + centroids[:, :-1]).contiguous() / 2,
                                    values.contiguous())
        sums = torch.zeros(centroids.shape, dtype=torch.float64).scatter_add_(1, assign, wx)
        mass = torch.zeros(centroids.shape, dtype=torch.float64).scatter_add_(1, assign, w64)
        updated = torch.where(mass > 0, (sums / mass.clamp(min=1e-300)).float(), centroids)
        updated = updated.sort(dim=1).values.contiguous()
        if torch.equal(updated, centroids):
            break
        centroids = updated
    assign = torch.searchsorted((centroids[:, 1:] + centroids[:, :-1]).contiguous() / 2,
                                values.contiguous())
    return centroids, assign


def share_grouped(weight: torch.Tensor, mask: torch.Tensor | None, bits: int, *, init: str,
                  iterations: int, group_size: int | None = None,
                  sensitivity: torch.Tensor | None = None,
                  generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`share_layer`, with a codebook per group of ``group_size`` rows (axis 0; None:
    one for the tensor) and each weight's error weighed by ``sensitivity`` (None: equally).

    The codebooks come back flat, group after group (G x 2**bits centroids), and each weight's
    assignment indexes that flat table, so ``centroids[assignments]`` is the weight as for one
    codebook, and training a centroid sums its own group's gradients."""
    k = 2 ** bits
    if mask is None:
        mask = torch.ones_like(weight, dtype=torch.bool)
    rows = weight.shape[0]
    gs = rows if group_size is None else min(group_size, rows)
    groups = -(-rows // gs)
    flat_w = weight.detach().float().reshape(rows, -1)
    per_row = flat_w.shape[1]
    pad = groups * gs - rows
    sens = (torch.ones_like(flat_w) if sensitivity is None
            else sensitivity.detach().float().reshape(rows, -1).clamp(min=0))
    keep = mask.reshape(rows, -1)
    weights = torch.where(keep, sens, torch.zeros_like(sens))
    if sensitivity is not None:
        # a survivor the calibration data never exercised still deserves a centroid near it
        floor = weights[keep].mean() * 1e-3 if bool(keep.any()) else 1.0
        weights = torch.where(keep, weights.clamp(min=float(floor)), weights)
    if pad:
        flat_w = torch.cat([flat_w, torch.zeros(pad, per_row)])
        weights = torch.cat([weights, torch.zeros(pad, per_row)])
    centroids, assign = kmeans_groups(flat_w.reshape(groups, gs * per_row),
                                      weights.reshape(groups, gs * per_row), k, init=init,
                                      iterations=iterations, generator=generator)
    offset = (torch.arange(groups) * k)[:, None]
    full = (assign + offset).reshape(groups * gs, per_row)[:rows].reshape(weight.shape)
    full = torch.where(mask, full, torch.zeros_like(full))
    return centroids.reshape(-1), full, mask


def share_layer(weight: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str,
                iterations: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centroids, assignments shaped like the weight, mask) for one layer."""
    if mask is None:
        mask = torch.ones_like(weight, dtype=torch.bool)
    if init == "kmeans++":
        return share_grouped(weight, mask, bits, init=init, iterations=iterations,
                             generator=generator)
    survivors = weight.detach()[mask]
    centroids, assign = kmeans_1d(survivors, 2 ** bits, init=init, iterations=iterations,
                                  generator=generator)
    full = torch.zeros_like(weight, dtype=torch.long)
    full[mask] = assign
    if centroids.numel() == 0:          # a fully pruned layer: one unused centroid
        centroids = torch.zeros(1)
    return centroids, full, mask


def compensated_assignments(weight: torch.Tensor, mask: torch.Tensor | None,
                            centroids: torch.Tensor, bits: int, group_size: int | None,
                            hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Assign each weight of a 2-D layer (rows = outputs, columns = input features) to a centroid
    of its rows' codebook column by column, pushing each column's rounding error onto the columns
    not yet assigned through the inverse of the input curvature H = XᵀX (GPTQ, Frantar et al.
    2022; with a mask, pruned weights round to exactly 0 the same way, as SparseGPT does).

    Returns flat-table assignments like :func:`share_grouped`'s. The codebooks stay as given;
    what changes is which entry each weight takes, so the layer's *outputs* on data like the
    calibration data stay close, not each weight on its own."""
    rows, cols = weight.shape[0], weight[0].numel()
    k = 2 ** bits
    groups = centroids.numel() // k
    gs = rows if group_size is None else group_size
    book = centroids.reshape(groups, k).double()
    row_group = torch.arange(rows) // gs
    mids = ((book[:, 1:] + book[:, :-1]) / 2)[row_group].contiguous()      # (rows, k-1)
    w = weight.detach().double().reshape(rows, cols).clone()
    keep = (mask.reshape(rows, cols) if mask is not None
            else torch.ones(rows, cols, dtype=torch.bool))
    h = hessian.double().clone()
    dead = torch.diag(h) == 0          # an input never seen: nothing to compensate with
    h[dead, dead] = 1.0
    w[:, dead] = torch.where(keep[:, dead], w[:, dead], torch.zeros_like(w[:, dead]))
    h += torch.eye(cols, dtype=torch.float64) * damp * float(torch.diag(h).mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    assign = torch.zeros(rows, cols, dtype=torch.long)
    offset = row_group * k
    block = 128       # GPTQ's lazy batch updates: exact, and a matmul per block instead of a
    for b0 in range(0, cols, block):   # rank-1 update of every later column per column
        b1 = min(b0 + block, cols)
        wb = w[:, b0:b1].clone()
        errors = torch.zeros_like(wb)
        for j in range(b1 - b0):
            col = wb[:, j]
            idx = torch.searchsorted(mids, col[:, None].contiguous()).squeeze(1)
            q = book[row_group, idx]
            q = torch.where(keep[:, b0 + j], q, torch.zeros_like(q))
            assign[:, b0 + j] = idx + offset
            err = (col - q) / u[b0 + j, b0 + j]
            wb[:, j + 1:] -= err[:, None] * u[b0 + j, b0 + j + 1:b1][None, :]
            errors[:, j] = err
        if b1 < cols:
            w[:, b1:] -= errors @ u[b0:b1, b1:]
    assign = torch.where(keep, assign, torch.zeros_like(assign))
    return assign.reshape(weight.shape)
