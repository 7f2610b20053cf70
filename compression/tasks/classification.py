"""``idx-classification``: labelled images in IDX (MNIST) files, cross-entropy, top-1 accuracy.

What the project started with, unchanged: the ``[data]`` table says where the files are (``root``,
``--data``, ``$DEEPCOMPRESS_DATA`` or Debian's Fashion-MNIST) and how many to use; retraining may
add the dense baseline's soft targets (``distill`` on a stage, Hinton et al. 2015).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from dccore import metrics

from ..data import load_split
from ._base import Examples, Task, TaskConfig, TaskData, register_task


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


@dataclass(frozen=True)
class IdxClassificationConfig(TaskConfig):
    """No settings of its own: the data comes from the recipe's ``[data]`` table."""

    KIND: ClassVar[str] = "idx-classification"


class IdxClassification(Task):
    KIND = "idx-classification"
    primary = "accuracy"

    def load(self) -> TaskData:
        d = self.data_config
        root = self.data_root or (d.root if d is not None else None)
        train_split = load_split("train", root, d.train_limit if d is not None else None)
        test_split = load_split("test", root, d.test_limit if d is not None else None)
        train = Examples((train_split.images,), train_split.labels)
        val = None
        if d is not None and d.val_fraction > 0:
            train, val = train.split_off(d.val_fraction, self.seed)
        return TaskData(train, val, Examples((test_split.images,), test_split.labels))

    def loss(self, outputs, targets, teacher, weight, temperature):
        return distillation_loss(outputs, targets, teacher, weight, temperature)

    def metrics(self, outputs, targets, reference):
        if len(targets) == 0:
            return {"accuracy": float("nan")}
        # torch's own argmax, as the pipeline always scored: the figures stay what they were
        out = {"accuracy": float((outputs.argmax(1) == targets).float().mean())}
        if reference is not None:
            out["agreement"] = metrics.argmax_agreement(outputs.numpy(), reference.numpy())
        return out


register_task(IdxClassificationConfig, IdxClassification)
