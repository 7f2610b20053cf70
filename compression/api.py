"""The Python API: Deep Compression in your own training loop, or in one call.

Training-time lifecycle (the shape coremltools.optimize.torch users know)::

    comp = Compressor(model, "my_recipe.toml")        # or a Recipe, or a dict of [[stages]]
    model = comp.prepare(steps_per_epoch=len(loader))
    for epoch in range(epochs):
        for ids, mask in loader:
            loss = my_loss(model(ids, mask)); loss.backward()
            optimizer.step(); optimizer.zero_grad()
            comp.step()                                # masks, codebooks, the schedule
    comp.finalize()                                    # every stage done, invariants checked
    comp.save("model.dcz")                             # rank 0 only, under torchrun

The recipe's stages become a schedule in optimizer steps: each prune round cuts, then leaves
``retrain_epochs`` epochs to your loop; ``share`` clusters; ``finetune_centroids`` leaves
``epochs`` epochs in which every shared weight's gradient is its cluster's summed gradient (the
paper's centroid gradient, applied through any optimizer: all members move alike, and
``step()`` ties them back to one value). Pruned weights get zero gradients. Post-training stages
(``retrain_epochs = 0``) happen at once. Wanda and Fisher-weighted sharing measure on the
``calibration`` inputs you give (or the task's training split).

One call, post-training (no retraining) or with the built-in trainer::

    comp = compress(model, recipe, calibration=(ids, mask))     # prepare + finalize
    comp.save("model.dcz")
    result = run(recipe, "runs/mine")        # what `deepcompress run` does: identical files
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from dccore.errors import ModelError, RecipeError

from . import distributed
from ._context import StageContext
from ._state import CompressionState
from .progress import no_progress
from .recipe import Recipe, load_recipe
from .share import least_squares_scale
from .stages import STAGES, StageConfig
from .stages.encode import EncodeConfig, write_model_file
from .tasks import Examples, Task, TaskData


def _recipe(config: Recipe | Mapping[str, Any] | str | os.PathLike[str]) -> Recipe:
    if isinstance(config, Recipe):
        return config
    if isinstance(config, Mapping):
        return Recipe.from_dict(dict(config))
    return load_recipe(config)


class _Calibration(Task):
    """Inputs only: what post-training methods measure on when the caller gives no task."""

    KIND = "calibration"
    needs_labels = False

    def __init__(self, inputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__(None)
        self._data_inputs = inputs

    def load(self):
        ex = Examples(self._data_inputs)
        return TaskData(ex, None, ex)


class Compressor:
    """See the module docstring. ``task`` (a compression.tasks.Task) or ``calibration`` (input
    tensors, one row per example) feeds the stages that measure on data."""

    def __init__(self, model: nn.Module, config: Recipe | Mapping[str, Any] | str | os.PathLike[str],
                 *, task: Task | None = None,
                 calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) \
            else model
        self.recipe = _recipe(config)
        if task is None and calibration is not None:
            inputs = (calibration,) if isinstance(calibration, torch.Tensor) else tuple(calibration)
            task = _Calibration(inputs)
        self.task = task
        self.log = log
        self.state: CompressionState | None = None
        self._events: list[tuple[int, Callable[[], None]]] = []
        self._hooks: list[Any] = []
        self._step = 0
        self._training_shared: set[str] = set()
        self._finalized = False

    # -- lifecycle ------------------------------------------------------------------------------
    def prepare(self, *, steps_per_epoch: int | None = None) -> nn.Module:
        """Insert the compression: state, gradient rules and the schedule (in optimizer steps;
        ``steps_per_epoch`` turns the recipe's epochs into steps). Returns the model."""
        if self.state is not None:
            raise RuntimeError("prepare() was called already")
        self.state = CompressionState.for_model(self.model)
        for note in self.recipe.check_against_model(
                {n: l.type_name for n, l in self.state.layers.items()}):
            self.log(note)
        trains = [c for c in self.recipe.stages if STAGES.get(c.KIND).phase == "train"]
        needs_steps = any(_epochs(c) > 0 for c in trains)
        if needs_steps and not steps_per_epoch:
            raise RecipeError("prepare(steps_per_epoch=N): the recipe retrains between stages, "
                              "so the schedule needs to know how many steps an epoch is")
        spe = steps_per_epoch or 0
        at = 0
        for config in trains:
            at = self._schedule(config, at, spe)
        for param_name, layer in self.state.layers.items():
            self._hooks.append(layer.weight.register_hook(self._gradient_rule(param_name)))
        self._fire(0)
        return self.model

    def step(self) -> None:
        """After each optimizer step: tie weights to their masks and codebooks, then run what
        the schedule says is due."""
        self._need_state()
        self._tie_shared()
        self.state.enforce()
        self._step += 1
        self._fire(self._step)

    def finalize(self) -> nn.Module:
        """Run every stage not reached yet, check the invariants, remove the hooks."""
        self._need_state()
        self._tie_shared()
        self._fire(math.inf)
        self.state.enforce()
        distributed.broadcast_state(self.state)
        self.state.check()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._finalized = True
        return self.model

    def report(self) -> dict[str, Any]:
        """Per-layer sparsity, bits and distinct values, and where the schedule is."""
        self._need_state()
        return {"step": self._step, "pending_events": len(self._events),
                "sparsity": self.state.sparsity(), "layers": self.state.layer_rows()}

    def save(self, path: str | os.PathLike[str], *, meta: Mapping[str, Any] | None = None):
        """Write the ``.dcz`` (the recipe's encode settings); rank 0 only (others get None)."""
        if not self._finalized:
            raise RuntimeError("save() after finalize(): the stages must be done first")
        encode = next((c for c in self.recipe.stages if isinstance(c, EncodeConfig)),
                      EncodeConfig())
        report = None
        with distributed.main_first() as main:
            if main:
                report = write_model_file(
                    self.model.state_dict(), self.state, Path(path), encode,
                    {"recipe": self.recipe.to_dict(), "recipe_sha256": self.recipe.sha256(),
                     **(meta or {})})
        return report

    # -- the schedule ---------------------------------------------------------------------------
    def _schedule(self, config: StageConfig, at: int, spe: int) -> int:
        stage = STAGES.get(config.KIND)
        if stage.schedule is None:      # a post-training stage: run it whole
            self._events.append((at, lambda: stage.apply(self.model, config, self.context())))
            return at
        for item in stage.schedule(config):
            if isinstance(item, int):
                at += item * spe
            else:
                self._events.append((at, lambda item=item: item(self)))
        return at

    def _fire(self, upto: float) -> None:
        while self._events and self._events[0][0] <= upto:
            _, event = self._events.pop(0)
            event()
            distributed.broadcast_state(self.state)

    def context(self) -> StageContext:
        """What a stage's schedule measures with (the task's data, the state, the seed)."""
        data = self.task.data() if self.task is not None else None
        empty = Examples((torch.zeros(0, 1),))
        return StageContext(state=self.state, train=data.train if data else empty,
                            test=data.test if data else empty, baseline=self.recipe.baseline,
                            task=self.task, seed=self.recipe.seed, progress=no_progress,
                            log=self.log)

    def train_centroids(self, on: bool) -> None:
        """From a stage's schedule: shared weights train as their clusters (on) or stay frozen."""
        self._training_shared = {n for n, l in self.state.layers.items()
                                 if on and l.centroids is not None}

    # -- gradients ------------------------------------------------------------------------------
    def _gradient_rule(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def rule(grad: torch.Tensor) -> torch.Tensor:
            layer = self.state.layers[name]
            if layer.centroids is not None:
                if name not in self._training_shared:
                    return torch.zeros_like(grad)     # shared, not fine-tuned: frozen
                # every member moves by its cluster's sum
                grad = layer.cluster_sums(grad)[layer.assignments]
            if layer.mask is not None:
                grad = torch.where(layer.mask, grad, torch.zeros_like(grad))
            return grad
        return rule

    def _tie_shared(self) -> None:
        """Each fine-tuned cluster becomes the mean of its members (they moved alike)."""
        for name in self._training_shared:
            layer = self.state.layers[name]
            w = layer.weight.detach()
            sums = layer.cluster_sums(w.double())
            counts = layer.cluster_sums(torch.ones_like(w, dtype=torch.long))
            layer.centroids = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(),
                                          layer.centroids)
            if layer.grid is not None:     # a grid codebook keeps its levels: the best scales
                groups = layer.scales.numel()
                layer.scales = least_squares_scale(
                    layer.centroids.double().reshape(groups, -1), counts.reshape(groups, -1),
                    layer.levels.double().reshape(groups, -1), layer.scales)
                layer.centroids = layer.grid_centroids()

    def _need_state(self) -> None:
        if self.state is None:
            raise RuntimeError("call prepare() first")


def _epochs(config: StageConfig) -> int:
    """Epochs the stage leaves to the user's loop (its schedule's ints)."""
    schedule = STAGES.get(config.KIND).schedule
    if schedule is not None:
        return sum(i for i in schedule(config) if isinstance(i, int))
    # a stage run whole that trains inside itself (shrink, transfer, projection)
    return getattr(config, "retrain_epochs", 0) or getattr(config, "epochs", 0) or 0


def compress(model: nn.Module, config: Recipe | Mapping[str, Any] | str | os.PathLike[str], *,
             task: Task | None = None,
             calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
             log: Callable[[str], None] = lambda message: None) -> Compressor:
    """Post-training compression in one call: every stage at once, no retraining (a recipe
    whose stages retrain is refused; use :func:`run` or your own loop with Compressor)."""
    comp = Compressor(model, config, task=task, calibration=calibration, log=log)
    if any(_epochs(c) > 0 for c in comp.recipe.stages):
        raise RecipeError("compress() does not train: set retrain_epochs = 0 (and no "
                          "finetune_centroids epochs), or use run() / Compressor.step()")
    comp.prepare()
    comp.finalize()
    return comp


def run(config: Recipe | Mapping[str, Any] | str | os.PathLike[str], out_dir: str | os.PathLike[str],
        **options: Any):
    """The whole recipe with the built-in trainer (baseline, stages, files): what
    ``deepcompress run`` calls, so both give identical files."""
    from .pipeline import run_recipe

    return run_recipe(_recipe(config), out_dir, **options)


__all__ = ["Compressor", "compress", "run", "ModelError"]
