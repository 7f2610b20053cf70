"""What the artifact formats can hold, for the code that must agree on it: the recipe check
(``[export] targets``, before any training) and the exporters (when they store a layer)."""
from __future__ import annotations

# Index widths of Core ML's lookup-table ops (iOS 18 constexpr_lut_to_dense / _lut_to_sparse;
# iOS 16/17 lack 3). A codebook of another width is padded to the next one, wasting index bits.
COREML_LUT_BITS = (1, 2, 3, 4, 6, 8)
# The formats a recipe may declare as its target, and the codebook widths each stores exactly.
TARGET_BITS: dict[str, tuple[int, ...]] = {"coreml": COREML_LUT_BITS}
