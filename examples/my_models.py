"""An example user model for `deepcompress run`: any `package.module:factory` works.

    PYTHONPATH=examples deepcompress run examples/user_model.toml --out runs/user_model

The factory is called with the recipe's `model.kwargs`; it must return an nn.Module. Baseline
weights may come from a state_dict file (`model.weights`), read with torch.load(weights_only=True).
"""
from torch import nn


def small_mlp(hidden: int = 128, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
