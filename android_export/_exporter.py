"""The TFLite exporter behind the common interface, registered as "tflite"."""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dccore.artifacts import artifact_size
from dccore.config import Checked
from dccore.outputs import TFLITE
from exporters import (EXPORTERS, ArtifactReport, CompressedLayer, Exporter, Scorer, Validation,
                       as_inputs, option, torch_outputs)

from ._convert import DEFAULT_VARIANT, PROJECTIONS, VARIANTS, export_tflite
from ._evaluate import tflite_outputs


@dataclass(frozen=True)
class TFLiteOptions(Checked):
    variant: str = option(DEFAULT_VARIANT, choices=tuple(VARIANTS),
                          help=f"what the .tflite stores (default: {DEFAULT_VARIANT}: per layer the "
                               "smallest form LiteRT runs that holds the weights exactly, int4/int8 "
                               "per channel or blockwise, sparse int8, float16; where none does, "
                               "the nearest int8/int4, its error reported)")

    projection: str = option("lsh", choices=PROJECTIONS,
                             help="a ProjectionNet's hashing: 'lsh' (default) as the LSH_PROJECTION "
                                  "op and its seeds (a few KB, slower: it hashes every input per "
                                  "bit), or 'matmul' by its hyperplane matrix (hundreds of KB, "
                                  "fast)")


class TFLiteExporter(Exporter):
    """litert-torch, in the variants TFLite can hold; validated in the LiteRT interpreter (with its
    default delegates, as an app runs it) on the caller's examples, held to the caller's scorer."""

    name, label, suffix, kind = "tflite", "TFLite", ".tflite", TFLITE
    Options = TFLiteOptions
    help = "write a LiteRT/TFLite flatbuffer"

    def write(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], out: Path,
              options: TFLiteOptions,
              layers: Iterable[str] | Mapping[str, CompressedLayer] | None) -> ArtifactReport:
        result = export_tflite(model, example_inputs, out, variant=options.variant, layers=layers,
                               lsh=options.projection == "lsh")
        return ArtifactReport(self.name, result.path, dataclasses.asdict(options),
                              _stores(options.variant, result), artifact_size(result.path),
                              {n: dataclasses.asdict(s) for n, s in result.layers.items()},
                              result.skipped)

    def validate(self, artifact: ArtifactReport | str | os.PathLike[str], model: nn.Module,
                 inputs: torch.Tensor | Sequence[torch.Tensor], score: Scorer, *,
                 reference: np.ndarray | None = None,
                 layers: Iterable[str] | None = None) -> Validation:
        path = artifact.path if isinstance(artifact, ArtifactReport) else Path(artifact)
        inputs = as_inputs(inputs)
        ref = torch_outputs(model, inputs) if reference is None else reference
        result = score(tflite_outputs(path, inputs), ref)
        return Validation(result.ok, len(ref), result)

    def baseline(self, options: TFLiteOptions) -> TFLiteOptions:
        return dataclasses.replace(options, variant="float32")

    def baselines(self, options: TFLiteOptions) -> dict[str, TFLiteOptions]:
        return {"dense": self.baseline(options),
                "float16": dataclasses.replace(options, variant="float16")}


def _stores(variant: str, result: Any) -> str:
    """For a table: the variant, and for ``auto`` the forms it chose ("auto: 2 int4, 1 int8")."""
    if variant != "auto" or not result.layers:
        return variant
    forms = Counter(s.form for s in result.layers.values())
    return "auto: " + ", ".join(f"{n} {f}" for f, n in forms.most_common())


EXPORTERS.register(TFLiteExporter.name, TFLiteExporter())
