"""``factory``: a task the user wrote: ``factory = "package.module:name"`` returns a
:class:`~compression.tasks.Task` (their data, loss and metric), called with ``kwargs``.

The recipe is the user's own file, so naming code here is theirs to do; a ``.dcz`` or a report
can never name a task (they are data).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dccore.errors import RecipeError

from dccore.config import FreeTable, Text, setting
from ._base import Task, TaskConfig, register_task
from .distill import _named_callable


@dataclass(frozen=True)
class FactoryConfig(TaskConfig):
    KIND: ClassVar[str] = "factory"
    factory: str = setting("", Text())                       # "package.module:name"
    kwargs: dict[str, Any] = setting(check=FreeTable(), factory=dict, omit=lambda v: not v)

    def _check(self, path: str) -> None:
        if not self.factory:
            raise RecipeError(f"{path or 'task'}.factory: name your task's factory, "
                              "'package.module:name'")


def make(config: FactoryConfig, *, seed: int = 0, data_root: str | None = None,
         data: Any = None) -> Task:
    fn = _named_callable(config.factory, "factory")
    try:
        task = fn(**config.kwargs)
    except TypeError as exc:
        raise RecipeError(f"task.factory {config.factory!r} rejected kwargs {config.kwargs} "
                          f"({exc})") from exc
    if not isinstance(task, Task):
        raise RecipeError(f"task.factory {config.factory!r} returned {type(task).__name__}, not a "
                          "compression.tasks.Task")
    task.seed, task.data_root, task.data_config = seed, data_root, data
    if not hasattr(task, "_data"):
        task._data = None
    return task


register_task(FactoryConfig, make)
