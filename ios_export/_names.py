"""Names and shapes both the converter and the verifier must agree on."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from exporters import input_names

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def coreml_input_names(model: nn.Module, count: int) -> list[str]:
    """The package's input names: "input" for a one-input model (as every package had before, and
    as BenchHost feeds it), else ``forward``'s parameter names ("input_ids", "attention_mask")."""
    return [INPUT_NAME] if count == 1 else input_names(model, count)


def sanitised_name(layer: str) -> str:
    """The layer as the converter spells it in op and variable names ("features.0.weight" ->
    "features_0"): how a weight is told apart from another of the same shape and values."""
    return "".join(c if c.isalnum() else "_" for c in layer.removesuffix(".weight"))


def lut_entries(lut: Any) -> int:
    """Entries of a Core ML LUT: iOS16 stores (entries,), iOS18 (groups..., entries, vector)."""
    return int(np.shape(lut)[0] if np.ndim(lut) == 1 else np.shape(lut)[-2])
