"""What sensitivity and autotune share: the trained dense baseline, the held-out validation split,
and one layer's stage run on a copy of the baseline.

Every decision here is made on the validation split (``data.val_fraction`` of the training
examples, held out with the recipe's seed and never trained on); the test split is not touched.
The dense baseline is trained once, by the pipeline itself (a recipe with no stages, in
``OUT/baseline``), or taken from a finished run whose baseline saw the same training examples.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dccore.errors import RecipeError

from .._context import StageContext
from .._state import CompressionState
from .._train import ProgressFn, no_progress
from ..models import build_model, load_state_dict_file, load_weights
from ..pipeline import BASELINE, TRAINED_WITH, checkpoint_path, load_task, run_recipe, saved_recipe
from ..recipe import Recipe
from ..stages import STAGES, StageConfig
from ..tasks import Examples, Task, predict

DEFAULT_VAL_FRACTION = 0.1   # 6,000 of Fashion-MNIST's 60,000: ~0.2-point resolution on a drop


def with_validation(recipe: Recipe, val_fraction: float | None = None) -> Recipe:
    """The recipe with a held-out validation split: ``val_fraction`` if given, else the recipe's
    own, else :data:`DEFAULT_VAL_FRACTION`."""
    fraction = val_fraction if val_fraction is not None else (
        recipe.data.val_fraction or DEFAULT_VAL_FRACTION)
    if not 0.0 < fraction <= 0.5:
        raise RecipeError(f"validation fraction {fraction}: expected a number in (0, 0.5]; the "
                          "tuning needs held-out examples that are not the test set")
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data,
                                                                val_fraction=fraction))


def baseline_recipe(recipe: Recipe) -> Recipe:
    """The recipe with no stages: what the pipeline runs to train (only) the dense baseline."""
    return dataclasses.replace(recipe, stages=())


def baseline_mismatch(folder: Path, recipe: Recipe) -> str | None:
    """Why the baseline checkpoint in run folder ``folder`` cannot serve ``recipe`` (None: it
    can)."""
    if not checkpoint_path(folder, BASELINE).is_file():
        return f"{folder} holds no {checkpoint_path('', BASELINE)}"
    saved = saved_recipe(folder)
    if saved is None:
        return f"{folder} has no readable recipe.json"
    now = recipe.to_dict()
    for key in TRAINED_WITH:   # else its weights saw other examples, or are another model
        if saved.get(key) != now.get(key):
            if key == "data" and (saved.get(key) or {}).get("val_fraction") != \
                    now["data"].get("val_fraction"):
                return (f"its baseline was trained with data.val_fraction = "
                        f"{(saved.get(key) or {}).get('val_fraction', 0.0)}, this needs "
                        f"{now['data']['val_fraction']}: with another split it has trained on "
                        "the examples that are held out to judge it")
            return f"the recipe's [{key}] differs from the one that trained it"
    return None


def ensure_baseline(recipe: Recipe, out: Path, *, from_run: Path | None = None,
                    data_root: str | None = None, progress: ProgressFn = no_progress,
                    log: Callable[[str], None] = lambda m: None) -> Path:
    """The run folder whose ``checkpoints/0_baseline.pt`` is the dense baseline for ``recipe``.

    ``from_run``: a finished run's folder, used as it is (RecipeError if its baseline was trained
    differently). Otherwise ``out`` (a folder of its own), trained there by the pipeline unless an
    earlier call left a matching baseline."""
    if from_run is not None:
        why = baseline_mismatch(from_run, recipe)
        if why:
            raise RecipeError(f"--from-run {from_run}: cannot reuse its baseline: {why}. Run "
                              "without --from-run to train one, or pass the recipe it was made "
                              "with (and its data.val_fraction)")
        log(f"dense baseline: {checkpoint_path(from_run, BASELINE)}")
        return from_run
    if baseline_mismatch(out, recipe) is None:
        log(f"dense baseline: reusing {checkpoint_path(out, BASELINE)}")
        return out
    log("dense baseline: training it (once; later calls reuse it)")
    run_recipe(baseline_recipe(recipe), out, data_root=data_root, progress=progress, log=log)
    return out


def show_drop(drop: float) -> str:
    """A drop (positive: worse) as the change in percentage points: 0.012 -> "-1.20 pt"."""
    return f"{-100 * drop:+.2f} pt"


def seed_run_folder(folder: Path, baseline: Path) -> None:
    """Put the baseline's checkpoint (and its figures) into a fresh run folder, so the pipeline
    resumes from it (``--resume-from`` the first stage) instead of training it again."""
    import shutil

    checkpoint_path(folder, BASELINE).parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".pt", ".json"):
        src = checkpoint_path(baseline, BASELINE).with_suffix(suffix)
        if src.is_file():
            shutil.copyfile(src, checkpoint_path(folder, BASELINE).with_suffix(suffix))


@dataclass
class Workbench:
    """The baseline model, its data and scores: each experiment starts from a fresh copy."""

    recipe: Recipe
    task: Task
    train: Examples
    val: Examples
    baseline_state: dict[str, torch.Tensor]
    baseline_metric: float
    progress: ProgressFn = no_progress
    log: Callable[[str], None] = lambda m: None
    _teacher: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def open(cls, recipe: Recipe, baseline_folder: Path, *, data_root: str | None = None,
             train_examples: int | None = None, progress: ProgressFn = no_progress,
             log: Callable[[str], None] = lambda m: None) -> "Workbench":
        task, data = load_task(recipe, data_root)
        if data.val is None:
            raise RecipeError("the tuning needs a validation split: set data.val_fraction > 0")
        state = load_state_dict_file(checkpoint_path(baseline_folder, BASELINE))
        bench = cls(recipe, task, data.train.subset(train_examples), data.val, state, 0.0,
                    progress, log)
        task.bind(bench.fresh_model())     # the leading metric, decided as the pipeline does
        bench.baseline_metric = bench.evaluate(bench.fresh_model())
        return bench

    # -- the model ----------------------------------------------------------------------------
    def fresh_model(self) -> nn.Module:
        torch.manual_seed(self.recipe.seed)
        model = build_model(self.recipe.model.name, self.recipe.model.kwargs)
        load_weights(model, self.baseline_state, source="the dense baseline")
        return model.eval()

    def evaluate(self, model: nn.Module) -> float:
        """The task's primary metric on the validation split."""
        return float(self.task.evaluate(model, self.val)[self.task.primary])

    def drop(self, value: float) -> float:
        """How much worse than the dense baseline ``value`` is, in the metric's units (positive:
        worse), whichever way the metric points."""
        diff = self.baseline_metric - value
        return diff if self.task.higher_is_better else -diff

    @property
    def metric(self) -> str:
        return self.task.primary

    # -- running one stage ----------------------------------------------------------------------
    def teacher(self) -> torch.Tensor:
        """The dense baseline's outputs on the training examples (distillation's soft targets)."""
        if self._teacher is None:
            self._teacher = predict(self.fresh_model(), self.train.inputs)
        return self._teacher

    def context(self, state: CompressionState) -> StageContext:
        r = self.recipe
        return StageContext(state=state, train=self.train, test=self.val, baseline=r.baseline,
                            task=self.task, batch_size=r.data.batch_size, seed=r.seed,
                            progress=self.progress, log=lambda m: None, teacher=self.teacher)

    def run_stage(self, model: nn.Module, state: CompressionState, config: StageConfig) -> float:
        """Run one stage on ``model`` (its handler, then the state's and the stage's checks, as
        the pipeline does); the seconds it took."""
        t0 = time.perf_counter()
        STAGES.get(config.KIND).apply(model, config, self.context(state))
        return time.perf_counter() - t0
