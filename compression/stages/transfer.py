"""The ``transfer`` stage: knowledge transfer from any teacher to the run's model (the student).

Hinton et al. (2015): the student learns from the teacher's outputs softened at ``temperature``
(the soft term scaled by T², so its gradients keep their size as T changes) and, with weight
``1 - soft``, from the labels. The task's loss decides what that means (``compression/tasks/``):
cross-entropy and KL for the image classifier; for the label-free ``distill`` task, its own
output loss against the teacher (labels play no part). The teacher's outputs on the training set
are computed once and cached (no augmentation, so they do not change between epochs).

The teacher is any model: a built-in name or ``package.module:factory`` (the recipe is the
user's file, so it may name code), with its weights from a state_dict or checkpoint (``.pt``) or
a ``.dcz`` file (its tensors only: the recipe names the model). It then stays the teacher of the
later stages: their ``distill`` and a label-free task's scores follow it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from dccore.errors import CheckpointError, RecipeError

from dccore.config import FreeTable, Int, Num, Text, setting
from .._context import StageContext
from .._train import train
from ..models import build_model, load_state_dict_file, load_weights
from ..tasks import predict
from ._base import Stage, StageConfig, register_stage


@dataclass(frozen=True)
class TransferConfig(StageConfig):
    """Train the run's model on ``teacher``'s softened outputs (and the labels, if any)."""

    KIND: ClassVar[str] = "transfer"
    teacher: str = setting("", Text())           # built-in name or "package.module:factory"
    teacher_kwargs: dict[str, Any] = setting(check=FreeTable(), factory=dict,
                                             omit=lambda v: not v)
    weights: str = setting("", Text())           # the teacher's: a .pt state_dict / checkpoint, or .dcz
    epochs: int = setting(10, Int(0, 10000))
    # None: the baseline's lr (the student usually starts untrained, so not lr / 10)
    lr: float | None = setting(None, Num(0.0, 10.0, lo_open=True))
    weight_decay: float = setting(0.0, Num(0.0, 1.0))
    # the soft targets' weight; the labels get 1 - soft (Hinton et al. put most on the soft term)
    soft: float = setting(0.9, Num(0.0, 1.0))
    temperature: float = setting(4.0, Num(0.0, 100.0, lo_open=True))   # Hinton et al.'s range

    def _check(self, path: str) -> None:
        if not self.teacher:
            raise RecipeError(f"{path}.teacher: name the teacher model (a built-in such as "
                              "'lenet5', or 'package.module:factory')")
        if not self.weights:
            raise RecipeError(f"{path}.weights: the teacher's trained weights (a .pt state_dict "
                              "or checkpoint, or a .dcz file)")


def load_model(name: str, kwargs: dict[str, Any], weights: str, what: str) -> nn.Module:
    """A model built by the recipe's choice of code, with weights read as data only."""
    model = build_model(name, kwargs)
    path = Path(weights).expanduser()
    if path.suffix == ".dcz":
        import dcz as container

        if not path.is_file():
            raise CheckpointError(f"{what} {path} does not exist")
        state = container.load(path).state_dict
    else:
        state = load_state_dict_file(path)
    load_weights(model, state, source=f"{what} {path}")
    return model.eval()


def hand_over(teacher: nn.Module, ctx: StageContext) -> torch.Tensor:
    """Make ``teacher`` the teacher of the later stages; its outputs on the training set,
    computed once."""
    use = getattr(ctx.teacher, "use", None)
    if use is None:
        return predict(teacher, ctx.train.inputs)
    use(teacher)
    return ctx.teacher()


def describe_teacher(teacher: nn.Module, name: str, ctx: StageContext) -> dict[str, Any]:
    scores = ctx.task.evaluate(teacher, ctx.test)
    return {"model": name, "parameters": sum(p.numel() for p in teacher.parameters()),
            ctx.task.primary: scores.get(ctx.task.primary), "scores": scores}


def run(model: nn.Module, config: TransferConfig, ctx: StageContext) -> None:
    teacher = load_model(config.teacher, config.teacher_kwargs, config.weights, "teacher weights")
    logits = hand_over(teacher, ctx)
    lr = config.lr if config.lr is not None else ctx.baseline.lr
    spec = ctx.train_spec(config.epochs, lr, config.weight_decay, distill=config.soft,
                          temperature=config.temperature)
    # the task's loss gets the teacher's outputs whenever it uses them (soft > 0 or no labels)
    cached = logits if (config.soft > 0 or not ctx.task.needs_labels) else None
    if cached is None:
        spec.distill = 0.0
    loss = train(model, ctx.train, spec, ctx.task, after_backward=ctx.state.mask_gradients,
                 after_step=ctx.state.enforce, generator=ctx.generator(606),
                 teacher_logits=cached, progress=ctx.progress, description="transfer")
    ctx.outputs.brought_teacher = True    # later stages distil from it
    ctx.metrics.update(teacher=describe_teacher(teacher, config.teacher, ctx),
                       epochs=config.epochs, soft=config.soft, temperature=config.temperature,
                       last_loss=loss)


register_stage(Stage(TransferConfig, run))
