"""A layer no exporter can convert: ``Mystery`` calls the custom op ``dctest::mystery``, which
torch can trace (it has a fake) but neither Core ML nor LiteRT knows. Registered once a process,
on first import."""
from __future__ import annotations

import torch
from torch import nn


class Mystery(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.dctest.mystery(x)


@torch.library.custom_op("dctest::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)
