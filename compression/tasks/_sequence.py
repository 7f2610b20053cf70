"""Comparing decisions, not numbers: what a label-free task leads with when the outputs are logits.

A user reads a classifier's argmax and a recogniser's decoded text, not the logits: two outputs at
cosine 0.9999 can still decode to different text (issue 20: 61% of an OCR model's lines changed
at cosine 0.99993). So the distill task compares

- per position: the share of positions (an example's row, or every step of a sequence) whose
  top-1 class is the same (``top1_agreement``);
- per example: the share whose decoded sequence is identical (``sequence_agreement``), and the
  edit distance between the sequences over the reference's length (``token_error_rate``: the
  character error rate against the dense model when a token is a character).

Decoders turn outputs (examples first, classes last) into one sequence per example: ``argmax``
(the path of per-step argmaxes), ``ctc_greedy`` (the argmax path with repeats collapsed and the
blank, class 0, dropped: CTC's greedy decoding), or the user's own ``package.module:function``
named in the recipe, called with the outputs tensor and returning one sequence per example.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import torch

from dccore.errors import DataError

Decoder = Callable[[torch.Tensor], Sequence[Any]]


def argmax_paths(outputs: torch.Tensor) -> list[tuple[int, ...]]:
    """Each example's per-step argmax classes."""
    best = outputs.argmax(-1).reshape(outputs.shape[0], -1)
    return [tuple(row) for row in best.tolist()]


def ctc_greedy(outputs: torch.Tensor, blank: int = 0) -> list[tuple[int, ...]]:
    """CTC greedy decoding: the argmax path, repeats collapsed, blanks dropped."""
    return [tuple(c for c, _ in itertools.groupby(path) if c != blank)
            for path in argmax_paths(outputs)]


BUILTIN_DECODERS: dict[str, Decoder] = {"argmax": argmax_paths, "ctc_greedy": ctc_greedy}


def decode(decoder: Decoder, outputs: torch.Tensor, what: str) -> list[Any]:
    seqs = decoder(outputs)
    if isinstance(seqs, (str, bytes)) or not hasattr(seqs, "__len__") or len(seqs) != len(outputs):
        raise DataError(f"{what}: a decoder returns one sequence per example ({len(outputs)}), "
                        f"got {type(seqs).__name__}")
    return list(seqs)


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def position_agreement(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The share of positions (every step of every example) whose top-1 class is the same."""
    return float((got.argmax(-1) == ref.argmax(-1)).double().mean())


def sequence_figures(got: list[Any], ref: list[Any]) -> dict[str, float]:
    """``sequence_agreement`` (identical sequences) and ``token_error_rate`` (edit distance over
    the reference's length, summed over the examples)."""
    same = [list(a) == list(b) for a, b in zip(got, ref)]
    errors = sum(edit_distance(list(a), list(b)) for a, b, s in zip(got, ref, same) if not s)
    length = sum(len(b) for b in ref)
    return {"sequence_agreement": sum(same) / max(len(same), 1),
            "token_error_rate": errors / length if length else float(errors > 0)}
