"""What every stage receives besides the model and its own config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ._state import CompressionState
from ._train import ProgressFn, TrainSpec, no_progress, train
from .recipe import TrainConfig
from .tasks import Examples, Task


@dataclass
class Output:
    """What an output-phase stage (``encode``) needs to write the run's files."""

    folder: Path                      # the run folder: model.dcz goes here, row files in stages/
    meta: dict[str, Any]              # what the file records (model, resolved recipe, accuracy)
    rows: list[tuple[str, str, Path]]  # the paper's size table: (row, stage name, its checkpoint)


@dataclass
class StageOutputs:
    """What a stage hands on to the run besides its figures: typed fields the pipeline acts on,
    never keys of ``metrics`` (which are figures for the report and nothing else)."""

    # the model constructor's kwargs the stage leaves (shrink: its new widths), over the recipe's
    model_kwargs: dict[str, Any] | None = None
    # the stage brought a teacher of its own that later stages distil from; no checkpoint holds
    # it, so a run may not resume after this stage
    brought_teacher: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model_kwargs": self.model_kwargs, "brought_teacher": self.brought_teacher}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "StageOutputs":
        """From a checkpoint's info; checkpoints written before outputs were typed kept them in
        their metrics (``model_kwargs``, and a ``teacher`` section)."""
        given = info.get("outputs")
        if isinstance(given, dict):
            kwargs = given.get("model_kwargs")
            return cls(kwargs if isinstance(kwargs, dict) else None,
                       bool(given.get("brought_teacher")))
        metrics = info.get("metrics") or {}
        kwargs = metrics.get("model_kwargs")
        return cls(kwargs if isinstance(kwargs, dict) else None, "teacher" in metrics)


@dataclass
class StageContext:
    state: CompressionState
    train: Examples
    test: Examples
    baseline: TrainConfig
    task: Task
    batch_size: int = 128
    seed: int = 0
    progress: ProgressFn = no_progress
    log: Callable[[str], None] = lambda msg: None
    metrics: dict = field(default_factory=dict)   # a stage's own figures, saved in the report
    outputs: StageOutputs = field(default_factory=StageOutputs)   # what the run acts on
    teacher: Callable[[], torch.Tensor] | None = None  # the baseline's outputs on the train set
    output: Output | None = None      # set by the pipeline for the output phase only

    def generator(self, salt: int) -> torch.Generator:
        """A generator seeded from the run's seed and the stage, so a resumed run repeats it.
        Torch's global generator is left alone: a stage draws only from its own."""
        return torch.Generator().manual_seed(self.seed * 1000 + salt)

    def train_spec(self, epochs: int, lr: float, weight_decay: float = 0.0,
                   distill: float = 0.0, temperature: float = 4.0) -> TrainSpec:
        """The baseline's optimiser, momentum and schedule at the run's batch size: every
        training in a run (the baseline's own and each retraining) differs only in these args."""
        return TrainSpec(epochs=epochs, lr=lr, optimizer=self.baseline.optimizer,
                         momentum=self.baseline.momentum, weight_decay=weight_decay,
                         schedule=self.baseline.schedule, batch_size=self.batch_size,
                         distill=distill, temperature=temperature)

    def retrain_spec(self, epochs: int, lr: float | None, weight_decay: float = 0.0,
                     distill: float = 0.0, temperature: float = 4.0) -> TrainSpec:
        """Retraining: the baseline optimiser at lr/10 unless the stage says otherwise (paper)."""
        return self.train_spec(epochs, lr if lr is not None else self.baseline.lr / 10,
                               weight_decay, distill, temperature)

    def retrainer(self, model: torch.nn.Module, config: Any, salt: int) -> Callable[[str], None]:
        """Retraining between the cuts of a stage that cuts in rounds (prune, shrink): the
        config's ``retrain_epochs`` at its ``lr``, ``weight_decay`` and distillation, the masks
        held; the teacher's outputs computed once, here. Called with the round's description."""
        spec = self.retrain_spec(config.retrain_epochs, config.lr, config.weight_decay,
                                 config.distill, config.temperature)
        teacher = self.teacher_logits(spec) if config.retrain_epochs > 0 else None
        hidden = self.teacher_model() if config.retrain_epochs > 0 else None   # hidden states
        generator = self.generator(salt)

        def retrain(description: str) -> None:
            train(model, self.train, spec, self.task, after_backward=self.state.mask_gradients,
                  after_step=self.state.enforce, generator=generator, teacher_logits=teacher,
                  teacher_model=hidden, progress=self.progress, description=description)
        return retrain

    def teacher_logits(self, spec: TrainSpec) -> torch.Tensor | None:
        """The dense baseline's outputs on the training set, when the stage distils from it (or
        the task has no labels: then they are its only targets)."""
        if spec.distill <= 0 and self.task.needs_labels:
            return None
        if self.teacher is None:
            raise RuntimeError("no teacher: the pipeline did not provide the baseline")
        return self.teacher()

    def teacher_model(self) -> torch.nn.Module | None:
        """The teacher itself, when the task's loss reads its hidden states (``task.hidden``):
        it runs beside the student on every batch. None otherwise."""
        if self.task.hidden is None:
            return None
        if self.teacher is None or not hasattr(self.teacher, "model"):
            raise RuntimeError("no teacher model: the pipeline did not provide the baseline")
        return self.teacher.model()
