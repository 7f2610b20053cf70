"""The task abstraction: everything that differs between an image classifier, a sentence encoder
and a keyword spotter lives in one object, so no stage, loop or exporter assumes images or
cross-entropy.

A task owns:

- its data: train / validation / test :class:`Examples` (any number of input tensors of any
  dtype and shape, targets or none); post-training methods measure on the first training ones;
- its loss: ``loss(outputs, targets, teacher, weight, temperature)``; ``teacher`` holds the dense
  model's outputs for the same examples when the stage distils (or when the task is label-free);
- its metrics: ``metrics(outputs, targets, reference)`` -> {name: value}, with one of them the
  ``primary`` figure that budgets and reports lead with;
- its example inputs, for exports and tracing.

Tasks register by kind (``[task] kind = "..."`` in a recipe) in :data:`TASKS`; a new one is one
file that calls :func:`register_task`. Data stays in memory and is batched by slicing a seeded
permutation (on 2 cores a DataLoader's workers cost more than they save); a task whose data does
not fit in memory overrides :meth:`Task.batches`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch

from dccore.errors import DataError, RecipeError
from dccore.registry import Registry

from dccore.config import Check, Config, below, fail, table

BUILTIN_TASKS = tuple(f"compression.tasks.{m}" for m in ("classification", "distill", "factory"))


@dataclass(frozen=True)
class Examples:
    """One split: ``inputs`` (a tuple of tensors sharing their first axis) and ``targets``."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.inputs or not all(isinstance(t, torch.Tensor) for t in self.inputs):
            raise DataError("examples need at least one input tensor")
        n = self.inputs[0].shape[0] if self.inputs[0].dim() else 0
        if any(t.dim() == 0 or t.shape[0] != n for t in self.inputs) or (
                self.targets is not None and self.targets.shape[0] != n):
            raise DataError("every input (and the targets) must hold one row per example; got "
                            f"{[tuple(t.shape) for t in self.inputs]}"
                            + (f" and targets {tuple(self.targets.shape)}"
                               if self.targets is not None else ""))

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def take(self, index: torch.Tensor | slice) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        return (tuple(t[index] for t in self.inputs),
                self.targets[index] if self.targets is not None else None)

    def subset(self, n: int | None) -> "Examples":
        if n is None or n >= len(self):
            return self
        inputs, targets = self.take(slice(0, n))
        return Examples(inputs, targets)

    def split_off(self, fraction: float, seed: int) -> tuple["Examples", "Examples"]:
        """(rest, held out): ``fraction`` of the examples drawn with ``seed`` (its own generator;
        torch's global one is untouched); both keep the examples' order."""
        n_out = round(fraction * len(self))
        if not 0 < n_out < len(self):
            raise DataError(f"holding out {fraction} of {len(self)} examples leaves an empty split")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        held = torch.zeros(len(self), dtype=torch.bool)
        held[order[:n_out]] = True
        rest_in, rest_t = self.take(~held)
        out_in, out_t = self.take(held)
        return Examples(rest_in, rest_t), Examples(out_in, out_t)


@dataclass(frozen=True)
class HiddenTerm:
    """A loss term on hidden states: the outputs of the modules ``patterns`` name (globs over
    module names), the student's against the dense teacher's, counted at the positions where input
    ``mask`` (an index into the inputs; None: every position) is non-zero, times ``weight``."""

    weight: float
    patterns: tuple[str, ...]
    mask: int | None = None


@dataclass(frozen=True)
class TaskData:
    train: Examples
    val: Examples | None
    test: Examples


def model_outputs(raw: Any) -> torch.Tensor:
    """The tensor a model's forward returned: itself; the first of a tuple or list; for a dict or
    a Hugging Face ModelOutput its ``logits``, ``sentence_embedding``, ``last_hidden_state`` or
    first tensor value."""
    if isinstance(raw, torch.Tensor):
        return raw
    if isinstance(raw, Mapping) or hasattr(raw, "keys"):
        for key in ("logits", "sentence_embedding", "last_hidden_state"):
            if key in raw and isinstance(raw[key], torch.Tensor):
                return raw[key]
        for value in raw.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], torch.Tensor):
        return raw[0]
    raise DataError(f"the model returned {type(raw).__name__}, which holds no output tensor; "
                    "wrap it so that forward returns a tensor")


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: Sequence[torch.Tensor], batch_size: int = 1000
            ) -> torch.Tensor:
    """The model's outputs on every example, in eval mode, ``batch_size`` at a time."""
    model.eval()
    n = inputs[0].shape[0]
    outs = [model_outputs(model(*(t[i:i + batch_size] for t in inputs)))
            for i in range(0, n, batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


class Task:
    """Base of every task; see the module docstring. Subclasses set ``KIND`` and ``primary``."""

    KIND: ClassVar[str] = ""
    primary: str = "accuracy"           # the figure reports and budgets lead with
    higher_is_better: bool = True
    needs_labels: bool = True           # False: the loss compares with the teacher only
    trains_baseline: bool = True        # False: the model as given is the baseline (a teacher)
    primary_reason: str = ""            # why ``primary`` leads, when the task chose it itself
    student_mode: str = "train"         # the mode a model learns in ("eval": dropout off)
    hidden: HiddenTerm | None = None    # a loss term on hidden states (needs a teacher model)

    def __init__(self, config: Any, *, seed: int = 0, data_root: str | None = None,
                 data: Any = None) -> None:
        self.config, self.seed, self.data_root, self.data_config = config, seed, data_root, data
        self._data: TaskData | None = None

    # -- data -----------------------------------------------------------------------------------
    def load(self) -> TaskData:
        """Read the splits (subclasses); called once, then cached by :meth:`data`."""
        raise NotImplementedError

    def data(self) -> TaskData:
        if self._data is None:
            self._data = self.load()
        return self._data

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        inputs, _ = self.data().test.take(slice(0, 1))
        return inputs

    def batches(self, split: Examples, batch_size: int, generator: torch.Generator | None
                ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]]:
        """(example index, inputs, targets) per batch, in a seeded random order."""
        order = torch.randperm(len(split), generator=generator)
        for start in range(0, len(split), batch_size):
            idx = order[start:start + batch_size]
            inputs, targets = split.take(idx)
            yield idx, inputs, targets

    def bind(self, model: torch.nn.Module) -> None:
        """See the model before any figure is read (the pipeline calls it once): a task that
        chooses its leading figure from the outputs (label-free ``distill``) decides here."""

    # -- loss and figures -----------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor | None,
             teacher: torch.Tensor | None, weight: float, temperature: float) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor | None,
                reference: torch.Tensor | None) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, split: Examples,
                 reference: torch.Tensor | None = None) -> dict[str, float]:
        return self.metrics(predict(model, split.inputs), split.targets, reference)

    def describe(self) -> str:
        return self.KIND


@dataclass(frozen=True)
class TaskConfig(Config):
    """Base of every task's config (the recipe's ``[task]`` table); ``KIND`` is its ``kind``."""

    KIND: ClassVar[str] = ""


@dataclass(frozen=True)
class RegisteredTask:
    config: type[TaskConfig]
    make: Callable[..., Task]     # make(config, seed=, data_root=, data=) -> Task


TASKS: Registry[RegisteredTask] = Registry("task", builtins=BUILTIN_TASKS)


def register_task(config: type[TaskConfig], make: Callable[..., Task]) -> RegisteredTask:
    """Add a task kind: one file that calls this, nothing else to edit."""
    if not (isinstance(config, type) and issubclass(config, TaskConfig) and config.KIND):
        raise ValueError(f"{config!r}: a task's config derives TaskConfig and sets KIND")
    entry = RegisteredTask(config, make)
    TASKS.register(config.KIND, entry)
    return entry


DEFAULT_TASK = "idx-classification"


class TaskSection(Check):
    """The recipe's ``[task]``: built by the config its ``kind`` registered (default: the IDX
    image classification the project started with)."""

    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> TaskConfig:
        data = dict(table(path, value))
        kind = data.get("kind", DEFAULT_TASK)
        if not isinstance(kind, str) or kind not in TASKS:
            raise fail(f"{path}.kind", f"one of {sorted(TASKS.names())}", kind)
        data["kind"] = kind
        return TASKS.get(kind).config.from_dict(data, path)

    def child(self, key: str, data: Any, owner: type) -> Any:
        kind = data.get("kind", DEFAULT_TASK) if isinstance(data, Mapping) else DEFAULT_TASK
        if not (isinstance(kind, str) and kind in TASKS):
            raise RecipeError(f"task.kind: unknown task {kind!r}")
        cls = TASKS.get(kind).config
        return below(cls, key, data, cls)


def default_task_config() -> TaskConfig:
    return TASKS.get(DEFAULT_TASK).config()


def make_task(config: TaskConfig, **kwargs: Any) -> Task:
    return TASKS.get(config.KIND).make(config, **kwargs)
