"""The recipe's ``[export]`` section: the artifact formats the compressed model is for.

A format stores some codebook widths exactly and pads the others (Core ML's LUTs hold 1, 2, 3, 4,
6 or 8-bit indices: a 5-bit codebook ships as 6-bit indices, a sixth of its index bytes wasted).
Declaring the target makes that a question asked before any training, per layer::

    [export]
    targets = ["coreml"]    # each layer's share bits must be a width Core ML holds
    pad_bits = false        # true: pad the others to the next width, with a note per layer

A layer whose resolved ``bits`` the target lacks is refused (RecipeError naming the layer, its
bits and the widths held), or with ``pad_bits = true`` listed in a note the run prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from dccore.errors import RecipeError
from dccore.formats import TARGET_BITS

from dccore.config import Check, Config, Flag, fail, setting


class Targets(Check):
    """A list of target formats, each one of ``TARGET_BITS``, stored as a tuple."""

    def __call__(self, path: str, value: Any, owner: type) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise fail(path, f"a list of formats from {list(TARGET_BITS)}", value)
        for i, v in enumerate(value):
            if not isinstance(v, str) or v not in TARGET_BITS:
                raise fail(f"{path}[{i}]", f"one of {list(TARGET_BITS)}", v)
        return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class ExportConfig(Config):
    # none: the recipe makes no promise about any format (the exporters pad what they must)
    targets: tuple[str, ...] = setting((), Targets(), omit=lambda v: not v)
    # false: a width a target lacks is refused before any work (a silent pad wastes index bits)
    pad_bits: bool = setting(False, Flag(), omit=lambda v: not v)

    def _check(self, path: str) -> None:
        if self.pad_bits and not self.targets:
            raise RecipeError(f"{path}.pad_bits: name the formats it is about in "
                              f"{path}.targets (one of {list(TARGET_BITS)})")


def check_targets(export: ExportConfig, stages: Iterable[Any], layer_types: Mapping[str, str]
                  ) -> list[str]:
    """Each layer's codebook width, as every stage that sets ``bits`` resolves it for that layer,
    against each target's widths. Returns the notes for the widths padded (``pad_bits``); raises
    RecipeError naming the first layer refused."""
    notes = []
    for i, stage in enumerate(stages):
        if "bits" not in getattr(stage, "LAYER_FIELDS", ()):
            continue
        for name, type_name in layer_types.items():
            settings = stage.for_layer(name, type_name)
            bits = settings.get("bits") if settings else None
            if bits is None:
                continue
            for target in export.targets:
                held = TARGET_BITS[target]
                if bits in held:
                    continue
                wider = next((b for b in held if b > bits), None)
                where = f"stages[{i}] ({stage.name or stage.KIND}) layer {name}"
                if not export.pad_bits or wider is None:
                    raise RecipeError(
                        f"{where}: {bits}-bit codebooks, but the recipe targets {target}, which "
                        f"stores {', '.join(map(str, held))}-bit indices; set its bits to one of "
                        "those (by_name or by_type), or allow padding with [export] pad_bits = "
                        "true" + ("" if wider else f" (nothing above {held[-1]} bits: refused)"))
                notes.append(f"{where}: {bits}-bit codebooks stored as {wider}-bit indices in "
                             f"{target} ([export] pad_bits = true): {wider - bits} index bit(s) "
                             "per weight wasted")
    return notes
