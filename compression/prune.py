"""Magnitude pruning (Han et al. 2015/2016): the cut and its schedule.

Per layer, the weights below a threshold are cut: ``quality x std`` of the layer's weights as they
enter the stage (the paper's rule), or the magnitude that zeroes a target ``sparsity``. With several
rounds the cut grows to its target step by step; the survivors keep their trained values (no
re-initialisation). Masks only ever shrink. The ``prune`` stage (rounds of cut and retraining) is
``compression/stages/prune.py``.
"""
from __future__ import annotations

import torch


def magnitude_mask(weight: torch.Tensor, *, threshold: float | None = None,
                   sparsity: float | None = None, previous: torch.Tensor | None = None) -> torch.Tensor:
    """The mask keeping weights with ``|w| > threshold``, or the largest ``1 - sparsity`` share.

    Sparsity is counted over the whole layer; ties are broken by position so the result is exact
    and deterministic. A weight cut earlier (``previous`` False) stays cut.
    """
    magnitude = weight.detach().abs().reshape(1, -1)
    before = None if previous is None else previous.reshape(1, -1)
    if threshold is None:
        return keep_largest(magnitude, float(sparsity), before).view_as(weight)
    if before is not None:
        magnitude = torch.where(before, magnitude, torch.full_like(magnitude, -1.0))
    return (magnitude > threshold).view_as(weight)


def keep_largest(rows: torch.Tensor, sparsity: float, previous: torch.Tensor | None
                 ) -> torch.Tensor:
    """In each row of scores, the ``1 - sparsity`` share with the largest scores (ties to the
    earlier position: a stable sort); a position cut before (``previous`` False) stays cut."""
    if previous is not None:
        rows = torch.where(previous, rows, torch.full_like(rows, -1.0))
    n_keep = round((1.0 - sparsity) * rows.shape[1])
    keep = torch.zeros_like(rows, dtype=torch.bool)
    if n_keep > 0:
        order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :n_keep]
        keep.scatter_(1, order, True)
    if previous is not None:
        keep &= previous
    return keep


def round_targets(settings: dict, std: float, round_index: int, rounds: int) -> dict:
    """Threshold or sparsity for one round of an iterative schedule."""
    frac = (round_index + 1) / rounds
    if settings.get("sparsity") is not None:
        # geometric: the kept share shrinks by the same factor each round
        keep = (1.0 - settings["sparsity"]) ** frac
        return {"sparsity": 1.0 - keep}
    return {"threshold": settings["quality"] * frac * std}
