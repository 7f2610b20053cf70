"""deepcompress, training side: prune -> share weights -> fine-tune centroids -> entropy-code.

Public verbs::

    from compression import load_recipe, run_recipe
    result = run_recipe(load_recipe("lenet300"), "runs/lenet300")

Importing this package imports torch and numpy only (no coremltools, no LiteRT).
"""
from .errors import DeepCompressError
from .pipeline import run_recipe
from .recipe import Recipe, load_recipe

__all__ = ["DeepCompressError", "Recipe", "load_recipe", "run_recipe"]
