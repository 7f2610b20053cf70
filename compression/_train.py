"""The training loop shared by the baseline and every retraining stage, for any task.

The task says how batches are drawn (by default: slices of a seeded permutation of in-memory
examples; on 2 cores a DataLoader's worker processes cost more than they save), what the loss is
and how the model is scored (``compression/tasks/``).
"""
from __future__ import annotations

import fnmatch
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from dccore.errors import ModelError, RecipeError

from . import distributed
from .tasks import Examples, Task, model_outputs
from .tasks._base import HiddenTerm

from .progress import ProgressFn, ProgressTask, no_progress  # noqa: F401 (re-exported)

@dataclass
class TrainSpec:
    epochs: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    batch_size: int = 128
    distill: float = 0.0          # weight of the soft-target term (Hinton et al. 2015)
    temperature: float = 4.0


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


def _matches(name: str, pattern: str) -> bool:
    """A glob per dotted part: ``encoder.layer.*`` names each layer, not everything inside."""
    parts, globs = name.split("."), pattern.split(".")
    return len(parts) == len(globs) and all(map(fnmatch.fnmatchcase, parts, globs))


def hidden_modules(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, nn.Module]:
    """The modules whose names match ``patterns`` (a glob per dotted part), in the model's order;
    a pattern that matches none is a recipe error naming it."""
    named = {n: m for n, m in model.named_modules() if n}
    for pattern in patterns:
        if not any(_matches(n, pattern) for n in named):
            raise RecipeError(f"task.hidden_modules: {pattern!r} matches no module of the model "
                              f"(it has e.g. {list(named)[:6]})")
    return {n: m for n, m in named.items() if any(_matches(n, p) for p in patterns)}


@contextmanager
def recording(modules: dict[str, nn.Module]):
    """Each module's output (its tensor, via ``model_outputs``) in a dict, refreshed on every
    forward pass while the context is open."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, model_outputs(out)))
        for name, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _fit_mask(mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``mask`` cut to ``hidden``'s positions when the model dropped trailing positions that are
    padding in every example (a wrapper that trims its batch): the cut columns must be all 0."""
    axis = mask.dim() - 1
    if (hidden.dim() > axis and hidden.shape[:axis] == mask.shape[:axis]
            and hidden.shape[axis] < mask.shape[axis]
            and not bool(mask.narrow(axis, hidden.shape[axis],
                                     mask.shape[axis] - hidden.shape[axis]).any())):
        return mask.narrow(axis, 0, hidden.shape[axis])
    return mask


def hidden_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over modules of the squared error relative to the teacher's squared norm, counted at
    the positions where ``mask`` (examples x positions) is non-zero: scale-free across layers."""
    terms = []
    for name, t in teacher.items():
        s = student[name]
        if s.shape != t.shape:
            raise ModelError(f"task.hidden_modules: module {name} gives {tuple(s.shape)} in the "
                             f"student and {tuple(t.shape)} in the teacher")
        err, ref = (s - t).pow(2), t.pow(2)
        if mask is not None:
            mask = _fit_mask(mask, t)
            if t.shape[:mask.dim()] != mask.shape:
                raise ModelError(f"task.hidden_mask: a mask of shape {tuple(mask.shape)} does not "
                                 f"lead module {name}'s output {tuple(t.shape)}")
            m = mask.reshape(mask.shape + (1,) * (t.dim() - mask.dim())).to(t.dtype)
            err, ref = err * m, ref * m
        terms.append(err.sum() / ref.sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def train(model: nn.Module, data: Examples, spec: TrainSpec, task: Task, *,
          params: Iterable[torch.nn.Parameter] | None = None,
          after_backward: Callable[[], None] | None = None,
          after_step: Callable[[], None] | None = None,
          generator: torch.Generator | None = None, teacher_logits: torch.Tensor | None = None,
          teacher_model: nn.Module | None = None,
          progress: ProgressFn = no_progress, description: str = "train") -> float:
    """Train for ``spec.epochs``; hooks enforce masks and codebooks. Returns the last mean loss.

    ``teacher_logits`` (the dense model's outputs, one row per training example) are the soft
    targets used when ``spec.distill`` > 0, and the only targets of a label-free task: with no
    data augmentation they are computed once, not per batch. A task with a hidden-state term
    (``task.hidden``) needs ``teacher_model`` too: it runs beside the student on every batch. The
    model learns in ``task.student_mode`` ("eval": dropout off).
    """
    if spec.epochs <= 0:
        return math.nan
    uses_teacher = spec.distill > 0 or not task.needs_labels
    if uses_teacher and teacher_logits is None:
        raise ValueError("distillation asked for but no teacher outputs were given")
    term: HiddenTerm | None = task.hidden
    if term is not None and teacher_model is None:
        raise RecipeError(f"{description}: the task distils hidden states (task.hidden) but "
                          "this stage has no teacher model to read them from; set hidden = 0")
    taps = {}
    if term is not None:
        taps = {"student": hidden_modules(model, term.patterns),
                "teacher": hidden_modules(teacher_model, term.patterns)}
        if list(taps["student"]) != list(taps["teacher"]):
            raise ModelError(f"task.hidden_modules: the student's matched modules "
                             f"{list(taps['student'])} are not the teacher's "
                             f"{list(taps['teacher'])}")
        teacher_model.eval()
    optimizer = make_optimizer(model.parameters() if params is None else params, spec)
    net = model
    if distributed.world() > 1:   # under torchrun: each rank its share of every batch
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    steps_per_epoch = math.ceil(len(data) / spec.batch_size)
    total_steps = spec.epochs * steps_per_epoch
    scheduler = None
    if spec.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    bar = progress(description, total_steps)
    model.train(task.student_mode == "train")
    mean_loss = math.nan
    try:
        with recording(taps.get("student", {})) as student_h, \
                recording(taps.get("teacher", {})) as teacher_h:
            for epoch in range(spec.epochs):
                running, seen = 0.0, 0
                for idx, inputs, targets in task.batches(data, spec.batch_size, generator):
                    if distributed.world() > 1:
                        idx = distributed.shard(idx)
                        inputs, targets = data.take(idx)
                    # the model's, not only the optimiser's: weights tied to centroids are not in
                    # the optimiser, and a gradient left over from an earlier stage must not leak in
                    model.zero_grad(set_to_none=True)
                    soft = teacher_logits[idx] if uses_teacher else None
                    loss = task.loss(model_outputs(net(*inputs)), targets, soft, spec.distill,
                                     spec.temperature)
                    if term is not None:
                        with torch.no_grad():
                            teacher_model(*inputs)
                        mask = inputs[term.mask] if term.mask is not None else None
                        loss = loss + term.weight * hidden_loss(student_h, teacher_h, mask)
                    if not torch.isfinite(loss):
                        raise ModelError(f"{description}: the loss became {loss.item()} in epoch "
                                         f"{epoch + 1}; lower the learning rate")
                    loss.backward()
                    if after_backward:
                        after_backward()
                    optimizer.step()
                    if scheduler:
                        scheduler.step()
                    if after_step:
                        after_step()
                    running += loss.item() * len(idx)
                    seen += len(idx)
                    bar.advance(1, loss=running / seen, epoch=epoch + 1)
                mean_loss = running / max(seen, 1)
    finally:
        bar.close()
        model.zero_grad(set_to_none=True)
        model.eval()
    return mean_loss
