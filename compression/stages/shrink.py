"""The ``shrink`` stage: remove whole neurons and filters, rebuild the layers smaller, retrain.

Unlike pruning, which zeroes weights behind a mask, shrinking gives the layers smaller shapes
(``compression/shrink.py`` does the surgery), so the dense model, its exports and its latency all
shrink. The new widths are recorded in the run's ``model_kwargs`` (the model's ``width_kwargs()``
says which constructor argument sets each layer's width), so ``model.dcz`` records them as plain
numbers and is rebuilt from the zoo with them; a model that does not say is refused before any
cut. Runs ``rounds`` x (score, cut, retrain ``retrain_epochs``). Comes before weight sharing;
after pruning, the masks are cut with the layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dccore.errors import ModelError, RecipeError

from dccore.config import Int, Num, OneOf, setting
from .._context import StageContext
from ..models import module_name
from ..shrink import (Link, effect_scores, lowest, norm_scores, shrink_layer, target_width,
                      trace_links, units)
from ._base import Stage, StageConfig, register_stage

CRITERIA = ("norm", "effect")


@dataclass(frozen=True)
class ShrinkConfig(StageConfig):
    """Remove ``fraction`` of each chosen layer's units (neurons of a Linear, filters of a
    Conv2d), lowest score first, over ``rounds`` with retraining after each."""

    KIND: ClassVar[str] = "shrink"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("fraction",)
    # of the layer's units to remove; a layer without one (global, by_type or by_name) is kept
    fraction: float | None = setting(None, Num(0.0, 1.0, hi_open=True))
    # "norm": ‖w_in‖·‖w_out‖, free; "effect": the task loss's rise without the unit, measured
    criterion: str = setting("norm", OneOf(CRITERIA))
    rounds: int = setting(2, Int(1, 100))            # gradual, as pruning: cut, retrain, cut
    retrain_epochs: int = setting(2, Int(0, 1000))   # per round
    # None: the baseline's lr / 10, as every retraining
    lr: float | None = setting(None, Num(0.0, 10.0, lo_open=True))
    weight_decay: float = setting(0.0, Num(0.0, 1.0))
    distill: float = setting(0.0, Num(0.0, 1.0))    # weight of the teacher's soft targets
    temperature: float = setting(4.0, Num(0.0, 100.0, lo_open=True))
    calibration: int = setting(1024, Int(1, 1 << 20))   # examples "effect" measures on

    def _check(self, path: str) -> None:
        super()._check(path)
        if self.fraction is None and not any(
                isinstance(v, dict) and v.get("fraction") is not None
                for v in (*self.by_type.values(), *self.by_name.values())):
            raise RecipeError(f"{path}: a shrink stage needs fraction (of each layer's neurons or "
                              "filters to remove), globally, by_type or by_name")


def chosen_layers(model: nn.Module, config: ShrinkConfig, ctx: StageContext,
                  links: dict[str, Link]) -> dict[str, float]:
    """Layer -> fraction to remove. A layer a global or by_type setting reaches but that cannot
    shrink (it feeds the output) is left alone; one named by_name must be able to."""
    out = {}
    for name, layer in ctx.state.layers.items():
        settings = config.for_layer(name, layer.type_name)
        if settings is None or settings.get("fraction") is None or name not in links:
            continue
        if links[name].fixed:
            if config._name_override(name):
                raise RecipeError(f"shrink: by_name.{name}: this layer cannot shrink "
                                  f"({links[name].fixed})")
            continue
        out[name] = settings["fraction"]
    if not out:
        raise RecipeError("shrink: no layer can shrink with these settings; layers that can: "
                          f"{sorted(n for n, link in links.items() if not link.fixed)}")
    widths = _width_kwargs(model)
    missing = [n for n in out if n not in widths]
    if missing:
        raise ModelError(f"shrink: {type(model).__name__} does not say which constructor argument "
                         f"sets the width of {missing} (width_kwargs()); a shrunk model could not "
                         "be rebuilt from its file")
    return out


def _width_kwargs(model: nn.Module) -> dict[str, tuple[str, int | None]]:
    fn = getattr(model, "width_kwargs", None)
    return fn() if callable(fn) else {}


def width_kwargs(model: nn.Module) -> dict[str, Any]:
    """The constructor kwargs that give ``model`` its current widths (read from its layers)."""
    modules = dict(model.named_modules())
    out: dict[str, Any] = {}
    lists: dict[str, dict[int, int]] = {}
    for layer, (kwarg, index) in _width_kwargs(model).items():
        if index is None:
            out[kwarg] = units(modules[layer])
        else:
            lists.setdefault(kwarg, {})[index] = units(modules[layer])
    for kwarg, by_index in lists.items():
        out[kwarg] = [by_index[i] for i in sorted(by_index)]
    return out


def _scores(model: nn.Module, link: Link, config: ShrinkConfig, ctx: StageContext) -> torch.Tensor:
    if config.criterion == "norm":
        return norm_scores(model, link)
    inputs, targets = ctx.train.take(slice(0, config.calibration))
    teacher = None if ctx.task.needs_labels else ctx.teacher()[:config.calibration]
    return effect_scores(model, link, lambda out: ctx.task.loss(out, targets, teacher, 0.0, 1.0),
                         inputs)


def run(model: nn.Module, config: ShrinkConfig, ctx: StageContext) -> None:
    links = trace_links(model)
    modules = dict(model.named_modules())
    fractions = chosen_layers(model, config, ctx, links)
    start = {name: units(modules[name]) for name in fractions}
    retrain = ctx.retrainer(model, config, 505)
    history = []
    for r in range(config.rounds):
        for name, fraction in fractions.items():
            keep = target_width(start[name], fraction, r, config.rounds)
            if keep < units(model.get_submodule(name)):
                _cut(model, links[name], lowest(_scores(model, links[name], config, ctx), keep),
                     ctx)
        widths = {n: units(model.get_submodule(n)) for n in fractions}
        ctx.log(f"shrink round {r + 1}/{config.rounds}: {widths}")
        retrain(f"shrink round {r + 1}/{config.rounds}")
        history.append({"round": r + 1, "widths": widths})
    modules = dict(model.named_modules())
    ctx.metrics.update(
        rounds=history, criterion=config.criterion,
        widths={n: [start[n], units(modules[n])] for n in fractions},
        parameters=sum(p.numel() for p in model.parameters()),
        model_kwargs=width_kwargs(model))     # a figure of the report; the run acts on outputs
    ctx.outputs.model_kwargs = width_kwargs(model)


def _cut(model: nn.Module, link: Link, keep: torch.Tensor, ctx: StageContext) -> None:
    """Shrink one layer and keep the compression state in step: masks cut with the weights,
    each changed layer's state pointing at its new module."""
    state = ctx.state
    names = [link.layer, *(n for n, _ in link.consumers)]
    masks = {n: state.layers[n].mask for n in names if n in state.layers}
    new = shrink_layer(model, link, keep, masks)
    for name, module in new.items():
        if name in state.layers:
            state.layers[name].module = module
            state.layers[name].mask = masks.get(name)
    state.enforce()


def ensures(model: nn.Module, config: ShrinkConfig, ctx: StageContext) -> None:
    """Each chosen layer has its target width, the model runs on an example, and the state's
    layers are the model's modules."""
    modules = dict(model.named_modules())
    for name, (before, after) in ctx.metrics["widths"].items():
        want = target_width(before, config.for_layer(name, ctx.state.layers[name].type_name)
                            ["fraction"], config.rounds - 1, config.rounds)
        if after != want or units(modules[name]) != want:
            raise ModelError(f"shrink: layer {name} has {after} units, not {want}")
    for name, layer in ctx.state.layers.items():
        if modules.get(module_name(name, layer.module)) is not layer.module:
            raise ModelError(f"shrink: the compression state's layer {name} is not the model's")
    inputs, _ = ctx.test.take(slice(0, 1))
    with torch.no_grad():
        model.eval()(*inputs)


register_stage(Stage(
    ShrinkConfig, run, ensures,
    forbids={"centroids": "shrinking comes before weight sharing: a codebook is per layer "
                          "shape, and retraining after the cut would untie it"},
))
