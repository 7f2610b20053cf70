"""The ``projection`` stage: train a ProjectionNet jointly with a trainer network (Ravi 2017).

The run's model is the projection network (the built-in ``projectionnet``: LSH bits regenerated
from a seed, then small FC layers; ``compression/projection.py``); it is what ships. The stage
builds the trainer (any model; a built-in name or ``package.module:factory``) and trains both on
one loss per batch::

    λ1 · L(trainer, labels) + λ2 · distill(projection <- trainer) + λ3 · L(projection, labels)

where L and distill are the task's own loss (cross-entropy; T²-scaled KL at ``temperature`` for
the image classifier). ``distill_trains_trainer`` chooses whether the distillation term's
gradient also reaches the trainer (false: the trainer learns from the labels alone and the
projection follows it). The trainer then stays the teacher of later stages (their ``distill``).
The report gains a ``projection`` section: the shipped model's bits next to the trainer's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dccore.errors import ModelError, RecipeError

from dccore.config import Flag, FreeTable, Int, Num, Text, setting
from .._context import StageContext
from .._train import make_optimizer
from ..projection import describe, hyperplanes, projection_modules
from ..models import build_model
from ..tasks import model_outputs
from ._base import Stage, StageConfig, register_stage
from .transfer import describe_teacher, hand_over, load_model


@dataclass(frozen=True)
class ProjectionConfig(StageConfig):
    """Joint training of the trainer and the run's projection network."""

    KIND: ClassVar[str] = "projection"
    trainer: str = setting("lenet300", Text())     # built-in name or "package.module:factory"
    trainer_kwargs: dict[str, Any] = setting(check=FreeTable(), factory=dict,
                                             omit=lambda v: not v)
    trainer_weights: str | None = setting(None, Text())   # start the trainer from these
    epochs: int = setting(20, Int(0, 10000))       # both networks converge in ~20 on Fashion-MNIST
    lr: float | None = setting(None, Num(0.0, 10.0, lo_open=True))   # None: the baseline's
    weight_decay: float = setting(0.0, Num(0.0, 1.0))
    # the paper's λ1, λ2, λ3: trainer on labels, projection on the trainer, projection on labels
    trainer_loss: float = setting(1.0, Num(0.0, 100.0))
    distill: float = setting(1.0, Num(0.0, 100.0))
    projection_loss: float = setting(1.0, Num(0.0, 100.0))
    temperature: float = setting(1.0, Num(0.0, 100.0, lo_open=True))
    # false: the distillation term moves only the projection network (the trainer is not
    # pulled towards a model 40x smaller than itself)
    distill_trains_trainer: bool = setting(False, Flag())

    def _check(self, path: str) -> None:
        if self.trainer_loss + self.distill + self.projection_loss <= 0:
            raise RecipeError(f"{path}: trainer_loss, distill and projection_loss are all 0; "
                              "nothing would train")


def _trainer(config: ProjectionConfig) -> nn.Module:
    if config.trainer_weights is not None:
        return load_model(config.trainer, config.trainer_kwargs, config.trainer_weights,
                          "trainer_weights")
    return build_model(config.trainer, config.trainer_kwargs)


def run(model: nn.Module, config: ProjectionConfig, ctx: StageContext) -> None:
    task = ctx.task
    if not task.needs_labels:
        raise RecipeError(f"projection: the {task.describe()} task has no labels; the joint "
                          "loss needs them (use a transfer stage for a label-free task)")
    if not projection_modules(model):
        raise ModelError(f"projection: {type(model).__name__} has no LSH projection; the run's "
                         "model is the projection network (model.name = 'projectionnet')")
    trainer = _trainer(config)
    lr = config.lr if config.lr is not None else ctx.baseline.lr
    spec = ctx.train_spec(config.epochs, lr, config.weight_decay)
    params = list(model.parameters()) + list(trainer.parameters())
    optimizer = make_optimizer(params, spec)
    steps = config.epochs * math.ceil(len(ctx.train) / spec.batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
                 if spec.schedule == "cosine" else None)
    generator = ctx.generator(707)
    bar = ctx.progress("projection (joint)", steps)
    history = []
    model.train()
    trainer.train()
    try:
        for epoch in range(config.epochs):
            sums, seen = [0.0, 0.0, 0.0], 0
            for idx, inputs, targets in task.batches(ctx.train, spec.batch_size, generator):
                optimizer.zero_grad(set_to_none=True)
                terms = _losses(model, trainer, inputs, targets, config, task)
                loss = (config.trainer_loss * terms[0] + config.distill * terms[1]
                        + config.projection_loss * terms[2])
                if not torch.isfinite(loss):
                    raise ModelError(f"projection: the loss became {loss.item()} in epoch "
                                     f"{epoch + 1}; lower the learning rate")
                loss.backward()
                ctx.state.mask_gradients()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                ctx.state.enforce()
                for i, t in enumerate(terms):
                    sums[i] += float(t.detach()) * len(idx)
                seen += len(idx)
                bar.advance(1, loss=float(loss.detach()), epoch=epoch + 1)
            history.append({"epoch": epoch + 1, **{k: s / max(seen, 1) for k, s in zip(
                ("trainer_loss", "distill", "projection_loss"), sums)}})
    finally:
        bar.close()
        model.eval()
        trainer.eval()
        model.zero_grad(set_to_none=True)
    hand_over(trainer, ctx)
    ctx.outputs.brought_teacher = True    # later stages distil from it
    ctx.metrics.update(teacher=describe_teacher(trainer, config.trainer, ctx),
                       projection=describe(model), losses=history)


def _losses(model: nn.Module, trainer: nn.Module, inputs: tuple, targets: torch.Tensor,
            config: ProjectionConfig, task: Any) -> list[torch.Tensor]:
    """L(trainer, labels), distill(projection <- trainer), L(projection, labels)."""
    t = config.temperature
    trainer_out = model_outputs(trainer(*inputs))
    proj_out = model_outputs(model(*inputs))
    soft = trainer_out if config.distill_trains_trainer else trainer_out.detach()
    return [task.loss(trainer_out, targets, None, 0.0, t),
            task.loss(proj_out, targets, soft, 1.0, t),
            task.loss(proj_out, targets, None, 0.0, t)]


def ensures(model: nn.Module, config: ProjectionConfig, ctx: StageContext) -> None:
    """The hyperplanes are still the ones the seed regenerates (nothing trained or stored them)."""
    for m in projection_modules(model):
        planes = torch.from_numpy((hyperplanes(m.seeds, m.in_features) / 2.0**63)
                                  .astype("float32"))
        if not torch.equal(m.planes, planes):
            raise ModelError("projection: the hyperplanes differ from those the seed regenerates")
        if any(k.endswith("planes") for k in model.state_dict()):
            raise ModelError("projection: the hyperplanes are in the state_dict (they must cost "
                             "no stored parameters)")


def report(config: ProjectionConfig, metrics: dict, rep: dict) -> dict[str, Any]:
    """report.json's ``projection``: the shipped model's accuracy and bits (its model.dcz),
    next to the trainer's (float32, as it would ship uncompressed)."""
    primary = rep["primary_metric"]["name"]
    teacher, proj = metrics.get("teacher", {}), metrics.get("projection", {})
    model_bits = 8 * rep["compressed_bytes"] if "compressed_bytes" in rep else None
    trainer_bits = 32 * teacher["parameters"] if "parameters" in teacher else None
    out = {primary: rep["primary_metric"]["final"],
           f"trainer_{primary}": teacher.get(primary),
           "model_bits": model_bits, "trainer_bits": trainer_bits,
           "float32_bits": proj.get("float32_bits"),
           "ratio": trainer_bits / model_bits if model_bits and trainer_bits else None,
           "trainer": teacher.get("model"), "trainer_parameters": teacher.get("parameters"),
           **{k: proj[k] for k in ("T", "d", "bits", "hidden", "seed", "parameters")
              if k in proj}}
    return {"projection": out}


register_stage(Stage(
    ProjectionConfig, run, ensures,
    forbids={"masks": "the projection network is trained before it is pruned",
             "centroids": "the projection network is trained before it is shared"},
    report=report,
))
