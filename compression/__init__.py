"""deepcompress, training side: prune -> share weights -> fine-tune centroids -> entropy-code.

Public verbs::

    from compression import Compressor, compress, run
    result = run("lenet300", "runs/lenet300")          # what `deepcompress run` does
    comp = Compressor(model, "recipe.toml")             # in your own training loop:
    comp.prepare(steps_per_epoch=n); ...; comp.step(); ...; comp.finalize(); comp.save("m.dcz")
    comp = compress(model, recipe, calibration=inputs)  # post-training, one call

Tasks (data, loss, metric of your model) are in :mod:`compression.tasks`.

Attributes load lazily: ``import compression`` (and so every ``deepcompress`` command, and
``dccore.errors``) imports no torch, coremltools or LiteRT until a verb needs them.
"""
from __future__ import annotations

from dccore.registry import lazy_attributes


_LAZY = {
    "Compressor": "compression.api",
    "compress": "compression.api",
    "run": "compression.api",
    "run_recipe": "compression.pipeline",
    "Recipe": "compression.recipe",
    "load_recipe": "compression.recipe",
    "ProgressTask": "compression.progress",
    "ProgressFn": "compression.progress",
    "no_progress": "compression.progress",
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
