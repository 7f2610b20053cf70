"""The training loop shared by the baseline and every retraining stage, for any task.

The task says how batches are drawn (by default: slices of a seeded permutation of in-memory
examples; on 2 cores a DataLoader's worker processes cost more than they save), what the loss is
and how the model is scored (``compression/tasks/``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from dccore.errors import ModelError

from . import distributed
from .tasks import Examples, Task, model_outputs

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


def train(model: nn.Module, data: Examples, spec: TrainSpec, task: Task, *,
          params: Iterable[torch.nn.Parameter] | None = None,
          after_backward: Callable[[], None] | None = None,
          after_step: Callable[[], None] | None = None,
          generator: torch.Generator | None = None, teacher_logits: torch.Tensor | None = None,
          progress: ProgressFn = no_progress, description: str = "train") -> float:
    """Train for ``spec.epochs``; hooks enforce masks and codebooks. Returns the last mean loss.

    ``teacher_logits`` (the dense model's outputs, one row per training example) are the soft
    targets used when ``spec.distill`` > 0, and the only targets of a label-free task: with no
    data augmentation they are computed once, not per batch.
    """
    if spec.epochs <= 0:
        return math.nan
    uses_teacher = spec.distill > 0 or not task.needs_labels
    if uses_teacher and teacher_logits is None:
        raise ValueError("distillation asked for but no teacher outputs were given")
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
    model.train()
    mean_loss = math.nan
    try:
        for epoch in range(spec.epochs):
            running, seen = 0.0, 0
            for idx, inputs, targets in task.batches(data, spec.batch_size, generator):
                if distributed.world() > 1:
                    idx = distributed.shard(idx)
                    inputs, targets = data.take(idx)
                # the model's, not only the optimiser's: weights tied to centroids are not in the
                # optimiser, and a gradient left over from an earlier stage must not leak in
                model.zero_grad(set_to_none=True)
                soft = teacher_logits[idx] if uses_teacher else None
                loss = task.loss(model_outputs(net(*inputs)), targets, soft, spec.distill,
                                 spec.temperature)
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
