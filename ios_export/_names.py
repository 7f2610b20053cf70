"""Names and shapes both the converter and the verifier must agree on."""
from __future__ import annotations

from typing import Any

import numpy as np

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def sanitised_name(layer: str) -> str:
    """The layer as the converter spells it in op and variable names ("features.0.weight" ->
    "features_0"): how a weight is told apart from another of the same shape and values."""
    return "".join(c if c.isalnum() else "_" for c in layer.removesuffix(".weight"))


def lut_entries(lut: Any) -> int:
    """Entries of a Core ML LUT: iOS16 stores (entries,), iOS18 (groups..., entries, vector)."""
    return int(np.shape(lut)[0] if np.ndim(lut) == 1 else np.shape(lut)[-2])
