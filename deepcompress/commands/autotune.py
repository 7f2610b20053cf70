"""``deepcompress autotune``: per-layer sparsity and bits chosen within a metric budget, verified
by the whole pipeline (``compression/tuning/``). Its sensitivity flags are ``sensitivity``'s."""
from __future__ import annotations

import argparse

from .sensitivity import common_arguments, main  # noqa: F401 (main: one for both commands)


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    common_arguments(p)
    p.description = (
        "Choose per-layer sparsity and bits that minimise the objective within a metric budget: "
        "a greedy on the measured curves, verified by running the whole pipeline and corrected "
        "until it holds. Writes DIR/recipe.toml (a comment per layer saying why), DIR/model.dcz "
        "and DIR/autotune.json; the test set is scored once, for the final model. Exit 1 when no "
        "verified choice held the budget.")
    p.add_argument("--budget", required=True, metavar="DROP",
                   help="the metric drop allowed: points (0.5pt) or the metric's units (0.005)")
    p.add_argument("--objective", choices=("file-bytes", "latency"), default="file-bytes",
                   help="minimise model.dcz's bytes, or a latency proxy (multiply-adds of a "
                        "sparse kernel: non-zeros x output positions) (default: file-bytes)")
    p.add_argument("--curves", metavar="SENSITIVITY_DIR|JSON",
                   help="curves measured by 'deepcompress sensitivity' for this recipe (default: "
                        "measure them into DIR/sensitivity)")
    p.add_argument("--max-runs", type=int, default=4, metavar="N",
                   help="full pipeline runs to verify and correct the choice (default: 4)")
    p.add_argument("--margin", default="0", metavar="DROP",
                   help="keep this much of the budget in hand on the validation split (default 0)")
    p.add_argument("--coder", choices=("huffman", "ans", "none", "smallest"),
                   help="the generated recipe's encode coder (default: the recipe's)")
    p.add_argument("--plain-dtype", choices=("float32", "float16"),
                   help="the generated recipe's storage for biases and other plain tensors; "
                        "float16 is lossy, and counted: the decoded file is what is verified "
                        "(default: the recipe's)")
    p.add_argument("--metadata", choices=("full", "minimal"),
                   help="what the generated recipe's model.dcz says besides its weights: "
                        "'minimal' keeps the model to rebuild, the recipe's sha256 and the final "
                        "metric (about 400 B less) (default: the recipe's)")
