"""Weight sharing: per-layer 1-D k-means over the surviving weights (Han et al. 2016, §3).

Each layer gets ``2**bits`` centroids; every surviving weight is replaced by its nearest centroid.
Linear initialisation (evenly spaced between the smallest and largest weight) is the default: the
paper found it beats density and random initialisation because it keeps the rare large weights.
The ``share`` stage is ``compression/stages/share.py``.
"""
from __future__ import annotations

from typing import Callable

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
#
# In one dimension a cluster is a run of consecutive values once they are sorted, so each group
# is sorted once and everything after works on prefix sums of w and w*x (and w*x^2 for the
# seeding): a Lloyd iteration finds each cluster's boundaries by bisection and its weighted mean
# by two differences, O(k log m) per group instead of O(m); k-means++ draws each seed from the
# D^2 distribution exactly (not from a sample), by a segment's D^2 mass from the prefix sums and a
# bisection inside it, O(k log m) per seed. Groups go through in chunks of about this many values,
# so the float64 prefix sums of an embedding table never sit in memory all at once.
_CHUNK_VALUES = 1 << 19


def _prefix(x: torch.Tensor, w: torch.Tensor, power: int) -> list[torch.Tensor]:
    """[sum w, sum w x, (sum w x^2)] up to each position, a leading 0 column (float64)."""
    zero = torch.zeros(x.shape[0], 1, dtype=torch.float64)
    terms, out = w, []
    for _ in range(power + 1):
        out.append(torch.cat([zero, terms.cumsum(1)], 1))
        terms = terms * x
    return out


def _between(p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sums over [lo, hi) per row from a prefix-sum table."""
    return p.gather(1, hi) - p.gather(1, lo)


def _runs(xs: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sorted centroid's run [lo, hi) of the sorted values ``xs`` that are nearest to it
    (a value on a midpoint goes to the lower centroid, as bucketize/searchsorted assign it)."""
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
    cut = torch.searchsorted(xs, mids.contiguous(), right=True)
    edge = torch.zeros(xs.shape[0], 1, dtype=torch.long)
    return torch.cat([edge, cut], 1), torch.cat([cut, edge + xs.shape[1]], 1)


def _plusplus_sorted(xs: torch.Tensor, w: torch.Tensor, k: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Exact k-means++ seeds (Arthur & Vassilvitskii) per row of sorted ``xs`` (G, m): each next
    seed is drawn with probability proportional to weight x squared distance to the nearest seed
    so far, so rare large weights get a centroid when they matter and empty ranges get none."""
    g, m = xs.shape
    x64 = xs.double()
    w = w.double().clamp(min=0)
    alive = w.sum(1) > 0
    w = torch.where(alive[:, None], w, torch.ones_like(w))     # no weight at all: all alike
    p0, p1, p2 = _prefix(x64, w, 2)
    rows = torch.arange(g)
    seeds = torch.empty(g, k, dtype=torch.float64)

    def draw(cum: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
             target: torch.Tensor) -> torch.Tensor:
        """The first position t in [lo, hi) where cum(t + 1) - cum(lo) > target, by bisection
        (``cum``, a cumulative mass at given positions per row, only grows)."""
        base = cum(lo)
        lo, hi = lo.clone(), hi - 1
        while bool((lo < hi).any()):
            mid = (lo + hi) // 2
            right = cum(mid + 1) - base <= target
            lo = torch.where(right & (lo < hi), mid + 1, lo)
            hi = torch.where(~right & (lo < hi), mid, hi)
        return lo

    def weight_mass(pos: torch.Tensor) -> torch.Tensor:
        return p0[rows, pos]

    full_lo, full_hi = torch.zeros(g, dtype=torch.long), torch.full((g,), m)
    first = draw(weight_mass, full_lo, full_hi,
                 torch.rand(g, generator=generator, dtype=torch.float64) * p0[:, -1])
    seeds[:, 0] = x64[rows, first]
    for j in range(1, k):
        s = seeds[:, :j].sort(1).values
        lo, hi = _runs(x64, s)
        d2 = (_between(p2, lo, hi) - 2 * s * _between(p1, lo, hi)
              + s * s * _between(p0, lo, hi)).clamp(min=0)
        total = d2.sum(1)
        u = torch.rand(g, generator=generator, dtype=torch.float64)
        cum = d2.cumsum(1)
        run = torch.searchsorted(cum, (u * total)[:, None], right=True).clamp(max=j - 1)
        run = run.squeeze(1)
        c = s[rows, run]
        target = u * total - (cum[rows, run] - d2[rows, run])
        # inside the run: the cumulative D^2 mass from prefix sums, bisected (it only grows)
        def d2_mass(pos: torch.Tensor, c: torch.Tensor = c) -> torch.Tensor:
            return p2[rows, pos] - 2 * c * p1[rows, pos] + c * c * p0[rows, pos]

        pick = draw(d2_mass, lo[rows, run], hi[rows, run], target)
        done = total <= 0      # every value already a seed: repeat one (merged or left empty)
        if bool(done.any()):
            again = draw(weight_mass, full_lo, full_hi, u * p0[:, -1])
            pick = torch.where(done, again, pick)
        seeds[:, j] = x64[rows, pick.clamp(max=m - 1)]
    return seeds.float()


def _lloyd_sorted(xs: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, centroids: torch.Tensor,
                  iterations: int) -> torch.Tensor:
    """Weighted Lloyd iterations on sorted values: the same updates as assigning every value and
    summing per cluster, from the runs' bounds and prefix sums. Empty clusters keep their place."""
    for _ in range(iterations):
        lo, hi = _runs(xs, centroids)
        mass, sums = _between(p0, lo, hi), _between(p1, lo, hi)
        updated = torch.where(mass > 0, (sums / mass.clamp(min=1e-300)).float(), centroids)
        updated = updated.sort(dim=1).values.contiguous()
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def _linear_seeds(values: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    big = torch.finfo(torch.float32).max
    lo = torch.where(weights > 0, values, torch.full_like(values, big)).amin(1)
    hi = torch.where(weights > 0, values, torch.full_like(values, -big)).amax(1)
    lo, hi = torch.where(lo > hi, 0.0, lo), torch.where(lo > hi, 0.0, hi)
    steps = torch.linspace(0, 1, k)
    return lo[:, None] + (hi - lo)[:, None] * steps[None, :]


def kmeans_groups(values: torch.Tensor, weights: torch.Tensor, k: int, *, init: str = "kmeans++",
                  iterations: int = 30, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted 1-D k-means in every row of ``values`` (G groups x m values) at once.

    ``weights`` (same shape, >= 0) weigh each value's squared error: a sensitivity (Fisher
    information) or 1, and 0 for padding and pruned weights, which then pull no centroid.
    Returns (centroids (G, k) sorted per group, assignment (G, m) into its group's centroids)."""
    if init not in ("kmeans++", "linear"):
        raise ValueError(f"grouped or weighted k-means starts from 'kmeans++' or 'linear', "
                         f"not {init!r}")
    values = values.detach().float()
    weights = weights.detach().float()
    g, m = values.shape
    centroids = torch.empty(g, k)
    step = max(1, _CHUNK_VALUES // max(m, 1))
    for a in range(0, g, step):
        v, w = values[a:a + step], weights[a:a + step]
        xs, order = v.sort(dim=1)
        ws = w.gather(1, order).double()
        del order
        if init == "kmeans++":
            seeds = _plusplus_sorted(xs, ws, k, generator)
        else:
            seeds = _linear_seeds(v, w, k)
        p0, p1 = _prefix(xs.double(), ws, 1)
        centroids[a:a + step] = _lloyd_sorted(xs, p0, p1, seeds.sort(dim=1).values.contiguous(),
                                              iterations)
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
    flat_w = weight.detach().float().reshape(rows, -1)
    keep = mask.reshape(rows, -1)
    weights = _value_weights(keep, sensitivity)
    # the full groups, then the last shorter one on its own: views, no padded copies (an
    # embedding table's copies would be as large as the model)
    whole = rows // gs
    parts = [(0, whole * gs, whole)] if whole else []
    if rows % gs:
        parts.append((whole * gs, rows, 1))
    books, assigns = [], []
    for r0, r1, g in parts:
        c, a = kmeans_groups(flat_w[r0:r1].reshape(g, -1), weights[r0:r1].reshape(g, -1), k,
                             init=init, iterations=iterations, generator=generator)
        a.add_(((torch.arange(g) + r0 // gs) * k)[:, None])     # into the flat table
        books.append(c)
        assigns.append(a.reshape(r1 - r0, -1))
    del weights
    full = assigns[0] if len(assigns) == 1 else torch.cat(assigns)
    full.masked_fill_(~keep, 0)
    return torch.cat(books).reshape(-1), full.reshape(weight.shape), mask


def _value_weights(keep: torch.Tensor, sensitivity: torch.Tensor | None) -> torch.Tensor:
    """Each value's weight in the squared error: its sensitivity (>= 0) or 1, and 0 where
    pruned. A survivor the calibration data never exercised still gets a floor of 1e-3 x the
    mean, so it still deserves a centroid near it."""
    if sensitivity is None:
        return keep.float()
    weights = sensitivity.detach().float().reshape(keep.shape).clamp(min=0)
    weights.masked_fill_(~keep, 0.0)
    kept = int(keep.sum())
    if kept:
        weights.clamp_(min=float(weights.sum()) / kept * 1e-3).masked_fill_(~keep, 0.0)
    return weights


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
    gs = rows if group_size is None else group_size
    group_of = (torch.arange(rows) // gs)[:, None].expand(rows, cols)
    keep = mask.reshape(rows, cols) if mask is not None else None
    return gptq_assign(weight.reshape(rows, cols), keep, centroids.reshape(-1, 2 ** bits),
                       group_of, hessian, damp).reshape(weight.shape)


def gptq_assign(weight: torch.Tensor, keep: torch.Tensor | None, book: torch.Tensor,
                group_of: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01
                ) -> torch.Tensor:
    """:func:`compensated_assignments` on a (rows, cols) matrix whose entry (r, c) takes a centroid
    of codebook ``group_of[r, c]`` (a row of ``book``, sorted): the codebooks of a transposed
    convolution's weight run across its matrix's columns. Returns indices into ``book`` read
    flat."""
    rows, cols = weight.shape
    k = book.shape[1]
    book = book.double()
    mid_book = (book[:, 1:] + book[:, :-1]) / 2
    by_row = bool((group_of == group_of[:, :1]).all())
    row_group = group_of[:, 0]
    mids = mid_book[row_group].contiguous() if by_row else None      # (rows, k-1)
    w = weight.detach().double().clone()
    if keep is None:
        keep = torch.ones(rows, cols, dtype=torch.bool)
    h = hessian.double().clone()
    dead = torch.diag(h) == 0          # an input never seen: nothing to compensate with
    h[dead, dead] = 1.0
    w[:, dead] = torch.where(keep[:, dead], w[:, dead], torch.zeros_like(w[:, dead]))
    h += torch.eye(cols, dtype=torch.float64) * damp * float(torch.diag(h).mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    assign = torch.zeros(rows, cols, dtype=torch.long)
    block = 128       # GPTQ's lazy batch updates: exact, and a matmul per block instead of a
    for b0 in range(0, cols, block):   # rank-1 update of every later column per column
        b1 = min(b0 + block, cols)
        wb = w[:, b0:b1].clone()
        errors = torch.zeros_like(wb)
        for j in range(b1 - b0):
            col = wb[:, j]
            groups = row_group if by_row else group_of[:, b0 + j]
            col_mids = mids if by_row else mid_book[groups].contiguous()
            idx = torch.searchsorted(col_mids, col[:, None].contiguous()).squeeze(1)
            q = book[groups, idx]
            q = torch.where(keep[:, b0 + j], q, torch.zeros_like(q))
            assign[:, b0 + j] = idx + groups * k
            err = (col - q) / u[b0 + j, b0 + j]
            wb[:, j + 1:] -= err[:, None] * u[b0 + j, b0 + j + 1:b1][None, :]
            errors[:, j] = err
        if b1 < cols:
            w[:, b1:] -= errors @ u[b0:b1, b1:]
    return torch.where(keep, assign, torch.zeros_like(assign))


# ---- codebooks on an integer grid (LiteRT's int8 / int4 weights hold them exactly)
#
# TFLite's quantized weights are scale x q with q an integer and zero point 0: int8 per channel
# in [-127, 127] (narrow range, what ai-edge-quantizer writes for symmetric int8), int4 in
# [-8, 7]. A grid codebook is such a tensor: each group's centroids are its scale times 2**bits
# integer levels (all of them when 2**bits covers the range), so the exporter writes q and the
# scale, and the runtime multiplies back exactly the weights we trained.
GRIDS = {"int4": (-8, 7), "int8": (-127, 127)}
GRID_BITS = {"int4": 4, "int8": 8}


def _grid_error(values: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor, lo: int,
                hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted squared error per group, float64; codes) of rounding ``values`` (G, m) to
    ``scale`` (G,) x integers in [lo, hi]."""
    q = torch.clamp(torch.round(values / scale[:, None]), lo, hi)
    err = (weights * (values - scale[:, None] * q) ** 2).sum(1, dtype=torch.float64)
    return err, q


def least_squares_scale(values: torch.Tensor, weights: torch.Tensor, q: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """Per group (row), the scale s minimising sum w (x - s q)^2 for the levels ``q`` chosen:
    sum w x q / sum w q^2 (float64 sums), float32; ``scale`` (G,) where that is not positive."""
    num = (weights * values * q).sum(1, dtype=torch.float64)
    den = (weights * q * q).sum(1, dtype=torch.float64)
    return torch.where((den > 0) & (num > 0), num / den.clamp(min=1e-300), scale.double()).float()


def fit_grid_scale(values: torch.Tensor, weights: torch.Tensor, lo: int, hi: int,
                   steps: int = 40, refinements: int = 10) -> torch.Tensor:
    """The scale per group (G,) whose grid scale x [lo..hi] has the least weighted squared error
    on ``values`` (G, m): a search over scales from the one that clips nothing down to a fifth of
    it (clipping the rare large weights buys resolution for the many), then least-squares
    refinement (the best scale for the codes chosen, s = sum w x q / sum w q^2, re-rounded).
    Groups go in chunks (an embedding table's temporaries stay small)."""
    values, weights = values.float(), weights.float()
    step = max(1, _CHUNK_VALUES // max(values.shape[1], 1))
    return torch.cat([_fit_scale(values[a:a + step], weights[a:a + step], lo, hi, steps,
                                 refinements) for a in range(0, values.shape[0], step)])


def _fit_scale(values: torch.Tensor, weights: torch.Tensor, lo: int, hi: int, steps: int,
               refinements: int) -> torch.Tensor:
    live = weights > 0
    top = torch.where(live, values, torch.zeros_like(values)).amax(1) / hi
    bottom = torch.where(live, values, torch.zeros_like(values)).amin(1) / lo
    full = torch.maximum(top, bottom)
    full = torch.where(full > 0, full, torch.ones_like(full))     # nothing to fit: any scale
    best_err = torch.full(full.shape, float("inf"), dtype=torch.float64)
    best = full.clone()
    for t in torch.linspace(1.0, 0.2, steps):
        err, _ = _grid_error(values, weights, full * t, lo, hi)
        better = err < best_err
        best, best_err = torch.where(better, full * t, best), torch.where(better, err, best_err)
    for _ in range(refinements):
        _, q = _grid_error(values, weights, best, lo, hi)
        fitted = least_squares_scale(values, weights, q, best)
        err, _ = _grid_error(values, weights, fitted, lo, hi)
        better = err < best_err
        if not bool(better.any()):
            break
        best, best_err = torch.where(better, fitted, best), torch.where(better, err, best_err)
    return best


def share_on_grid(weight: torch.Tensor, mask: torch.Tensor | None, bits: int, grid: str, *,
                  group_size: int | None = None, sensitivity: torch.Tensor | None = None,
                  iterations: int = 30, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A codebook per group of ``group_size`` rows (None: per row, TFLite's per-channel scale)
    on the integer grid ``grid``: (centroids flat as :func:`share_grouped`'s, assignments,
    scales (G,), levels (G x 2**bits) int8) with ``centroids == scales[g] * levels`` exactly
    in float32 for every group g.

    With 2**bits at least the grid's size the levels are the whole grid and only the scale is
    fitted (:func:`fit_grid_scale`); with fewer bits the 2**bits levels per group are weighted
    1-D k-means centroids in units of the scale, rounded to integers (a palette of the int8
    grid: the file keeps ``bits``-bit indices, LiteRT the int8 values)."""
    lo, hi = GRIDS[grid]
    k = 2 ** bits
    rows = weight.shape[0]
    gs = 1 if group_size is None else min(group_size, rows)
    groups = -(-rows // gs)
    if mask is None:
        mask = torch.ones_like(weight, dtype=torch.bool)
    flat = weight.detach().float().reshape(rows, -1)
    per_row = flat.shape[1]
    keep = mask.reshape(rows, -1)
    wts = _value_weights(keep, sensitivity)
    pad = groups * gs - rows
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, per_row)])
        wts = torch.cat([wts, torch.zeros(pad, per_row)])
    values, wts = flat.reshape(groups, -1), wts.reshape(groups, -1)
    if k >= hi - lo + 1:
        scales = fit_grid_scale(values, wts, lo, hi)
        levels = torch.arange(lo, hi + 1).expand(groups, -1)
        levels = torch.cat([levels, levels[:, -1:].expand(groups, k - levels.shape[1])], 1)
    else:      # in chunks of groups, as k-means itself: float64 temporaries stay small
        step = max(1, _CHUNK_VALUES // max(values.shape[1], 1))
        parts = []
        for a in range(0, groups, step):
            lv, sc = _grid_levels(values[a:a + step], wts[a:a + step], k, lo, hi, iterations,
                                  generator)
            parts.append((lv, _refit_scale(values[a:a + step], wts[a:a + step], sc, lv)))
        levels = torch.cat([lv for lv, _ in parts])
        scales = torch.cat([sc for _, sc in parts])
    levels = levels.to(torch.int8).contiguous()
    centroids = scales[:, None] * levels.float()
    assign = torch.searchsorted((centroids[:, 1:] + centroids[:, :-1]).contiguous() / 2,
                                values.contiguous())
    full = (assign + (torch.arange(groups) * k)[:, None]).reshape(groups * gs, per_row)[:rows]
    full = torch.where(mask, full.reshape(weight.shape), torch.zeros_like(full.reshape(weight.shape)))
    return centroids.reshape(-1), full, scales, levels.reshape(-1)


def _grid_levels(values: torch.Tensor, weights: torch.Tensor, k: int, lo: int, hi: int,
                 iterations: int, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(k integer levels per group, sorted (G, k); the scale (G,)): weighted k-means centroids,
    the finest grid that holds them all (the outermost centroid on the grid's edge), each
    rounded to it, then Lloyd on the grid; a level two centroids round to is kept once and the
    spare slots repeat the top level (never the nearest of anything new)."""
    centroids, _ = kmeans_groups(values, weights, k, init="kmeans++", iterations=iterations,
                                 generator=generator)
    scales = torch.maximum(centroids[:, -1] / hi, centroids[:, 0] / lo)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    units = (values / scales[:, None]).clamp(lo, hi)
    levels = torch.round(centroids / scales[:, None]).clamp(lo, hi).long().sort(1).values
    for _ in range(iterations):      # Lloyd on the grid: each level the rounded mean of its own
        mids = ((levels[:, 1:] + levels[:, :-1]).double() / 2).contiguous()
        assign = torch.searchsorted(mids, units.double().contiguous())
        mass = torch.zeros(levels.shape, dtype=torch.float64).scatter_add_(1, assign,
                                                                           weights.double())
        sums = torch.zeros(levels.shape, dtype=torch.float64).scatter_add_(
            1, assign, weights.double() * units.double())
        moved = torch.where(mass > 0, torch.round(sums / mass.clamp(min=1e-300)).long(), levels)
        moved = moved.clamp(lo, hi).sort(1).values
        if torch.equal(moved, levels):
            break
        levels = moved
    # duplicates (two centroids on one integer) carry no information: the top level repeats
    first = torch.ones_like(levels, dtype=torch.bool)
    first[:, 1:] = levels[:, 1:] != levels[:, :-1]
    filled = torch.where(first, levels, torch.full_like(levels, hi + 1)).sort(1).values
    top = torch.where(filled <= hi, filled, torch.full_like(filled, lo - 1)).amax(1, keepdim=True)
    return torch.where(filled <= hi, filled, top.expand_as(filled)), scales


def _refit_scale(values: torch.Tensor, weights: torch.Tensor, scales: torch.Tensor,
                 levels: torch.Tensor, rounds: int = 5) -> torch.Tensor:
    """Alternate nearest-level assignment and the least-squares scale for it, keeping a scale
    only where it lowers the weighted error."""
    values, weights = values.double(), weights.double()
    lv = levels.double()

    def error(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = s.double()[:, None] * lv
        idx = torch.searchsorted(((c[:, 1:] + c[:, :-1]) / 2).contiguous(), values.contiguous())
        q = lv.gather(1, idx)
        return (weights * (values - s.double()[:, None] * q) ** 2).sum(1), q

    best_err, q = error(scales)
    for _ in range(rounds):
        fitted = least_squares_scale(values, weights, q, scales)
        err, q_new = error(fitted)
        better = err < best_err
        if not bool(better.any()):
            break
        scales = torch.where(better, fitted, scales)
        best_err = torch.where(better, err, best_err)
        q = torch.where(better[:, None], q_new, q)
    return scales
