"""deepcompress, training side: prune -> share weights -> fine-tune centroids -> entropy-code.

Public verbs::

    from compression import load_recipe, run_recipe
    result = run_recipe(load_recipe("lenet300"), "runs/lenet300")

Attributes load lazily: ``import compression`` (and so every ``deepcompress`` command, and
``dccore.errors``) imports no torch, coremltools or LiteRT until a verb needs them.
"""
from __future__ import annotations

import importlib
from typing import Any


_LAZY = {
    "run_recipe": "compression.pipeline",
    "Recipe": "compression.recipe",
    "load_recipe": "compression.recipe",
    "ProgressTask": "compression.progress",
    "ProgressFn": "compression.progress",
    "no_progress": "compression.progress",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compression' has no attribute {name!r}")
