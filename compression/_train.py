"""Training and evaluation loops shared by the baseline and every retraining stage.

Data stays in memory as tensors and is batched by slicing a permutation: on 2 cores a DataLoader's
worker processes cost more than they save for 28x28 images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .data import Split
from dccore.errors import ModelError

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


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None,
                      weight: float, temperature: float) -> torch.Tensor:
    """(1 - w) * CE(labels) + w * T^2 * KL(teacher_T || student_T); plain CE when w == 0."""
    hard = nn.functional.cross_entropy(logits, labels)
    if teacher is None or weight == 0.0:
        return hard
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1),
                                nn.functional.log_softmax(teacher / t, dim=1),
                                reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * t * t * soft


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


def train(model: nn.Module, data: Split, spec: TrainSpec, *,
          params: Iterable[torch.nn.Parameter] | None = None,
          after_backward: Callable[[], None] | None = None,
          after_step: Callable[[], None] | None = None,
          generator: torch.Generator | None = None, teacher_logits: torch.Tensor | None = None,
          progress: ProgressFn = no_progress, description: str = "train") -> float:
    """Train for ``spec.epochs``; hooks enforce masks and codebooks. Returns the last mean loss.

    ``teacher_logits`` (one row per training example) are the soft targets used when
    ``spec.distill`` > 0: with no data augmentation they are computed once, not per batch.
    """
    if spec.distill > 0 and teacher_logits is None:
        raise ValueError("distillation asked for but no teacher logits were given")
    if spec.epochs <= 0:
        return math.nan
    optimizer = make_optimizer(model.parameters() if params is None else params, spec)
    steps_per_epoch = math.ceil(len(data) / spec.batch_size)
    total_steps = spec.epochs * steps_per_epoch
    scheduler = None
    if spec.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    task = progress(description, total_steps)
    model.train()
    mean_loss = math.nan
    try:
        for epoch in range(spec.epochs):
            order = torch.randperm(len(data), generator=generator)
            running, seen = 0.0, 0
            for start in range(0, len(data), spec.batch_size):
                idx = order[start:start + spec.batch_size]
                x, y = data.images[idx], data.labels[idx]
                # the model's, not only the optimiser's: weights tied to centroids are not in the
                # optimiser, and a gradient left over from an earlier stage must not leak in
                model.zero_grad(set_to_none=True)
                soft = teacher_logits[idx] if spec.distill > 0 else None
                loss = distillation_loss(model(x), y, soft, spec.distill, spec.temperature)
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
                task.advance(1, loss=running / seen, epoch=epoch + 1)
            mean_loss = running / max(seen, 1)
    finally:
        task.close()
        model.zero_grad(set_to_none=True)
        model.eval()
    return mean_loss


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    outs = [model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, data: Split, batch_size: int = 1000) -> float:
    """Top-1 accuracy as a fraction of ``data``."""
    if len(data) == 0:
        return math.nan
    logits = predict(model, data.images, batch_size)
    return float((logits.argmax(1) == data.labels).float().mean())
