"""Tasks: what is specific to a model's job (data, loss, metrics, example inputs), chosen by the
recipe's ``[task] kind`` from :data:`TASKS`. Built in: ``idx-classification`` (the default),
``distill`` (label-free, against the dense model's outputs) and ``factory`` (your own Task).

Write your own by subclassing :class:`Task` (``load``, ``loss``, ``metrics``) and naming its
factory in the recipe, or register a new kind with :func:`register_task`.
"""
from ._base import (DEFAULT_TASK, TASKS, Examples, Task, TaskConfig, TaskData, TaskSection,
                    default_task_config, make_task, model_outputs, predict, register_task)

__all__ = ["DEFAULT_TASK", "TASKS", "Examples", "Task", "TaskConfig", "TaskData", "TaskSection",
           "default_task_config", "make_task", "model_outputs", "predict", "register_task"]
