"""The Core ML exporter behind the common interface, registered as "coreml"."""
from __future__ import annotations

import dataclasses
import os
import sys
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dccore.artifacts import artifact_size
from dccore.config import Checked, OneOf
from dccore.outputs import MLPACKAGE
from exporters import (EXPORTERS, ArtifactReport, CompressedLayer, Exporter, Scorer, Validation,
                       as_inputs, first_example, option, select_layers, torch_outputs)

from ._convert import (DEFAULT_METHOD, DEFAULT_PRECISION, DEFAULT_TARGET, METHODS, PRECISIONS,
                       TARGETS, export_coreml)
from ._verify import coreml_outputs, verify_coreml


@dataclass(frozen=True)
class CoreMLOptions(Checked):
    target: str = option(DEFAULT_TARGET, choices=TARGETS,
                         help=f"minimum deployment target (default {DEFAULT_TARGET}: sparse+"
                              "palettized in one op; iOS16/17 store each layer sparse or "
                              "palettized, whichever is smaller)")
    precision: str = option(DEFAULT_PRECISION, choices=PRECISIONS,
                            help=f"weight and compute precision (default {DEFAULT_PRECISION}: what "
                                 "the Neural Engine runs)")
    # "none" (the dense baseline) is what dense_bytes measure, not a command-line choice
    method: str = option(DEFAULT_METHOD, OneOf(tuple(METHODS)),
                         choices=[m for m in METHODS if m != "none"],
                         help="store every layer as joint (mask + LUT indices), sparse (mask + "
                              "fp16 values) or palettize (LUT indices of every weight) (default "
                              "auto: the smallest exact form per layer, with the reason reported)")


_DECODED_HOW = ("PyTorch (float32 compute) with every compressed weight as decoded from the "
                "package and the other tensors in the package's precision")


def decoded_model(model: nn.Module, decoded: Mapping[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` holding the weights the package holds: each compressed layer as decoded
    from it (``decoded``: name -> array, from ``verify_coreml``), every other floating tensor
    rounded to the package's precision, read from the decoded weights' dtype (the converter
    stores them all alike). What runs on Linux, where Core ML cannot, to score the artifact's
    weights on the task's metric."""
    half = any(np.asarray(w).dtype == np.float16 for w in decoded.values())
    copy = deepcopy(model).eval()
    with torch.no_grad():
        for name, tensor in copy.state_dict().items():
            if name in decoded:
                tensor.copy_(torch.from_numpy(np.asarray(decoded[name], dtype=np.float32)))
            elif tensor.is_floating_point() and half:
                tensor.copy_(tensor.half().float())
    return copy


class CoreMLExporter(Exporter):
    """coremltools, with our codebooks and masks as Core ML's constexpr ops. Validated on any OS
    by decoding every compressed weight back from the saved package (the verdict); on macOS the
    package also runs on the caller's examples, scored by the caller's scorer (reported)."""

    name, label, suffix, kind = "coreml", "Core ML", ".mlpackage", MLPACKAGE
    suffix_required = True   # coremltools saves an ML Program only as a .mlpackage
    Options = CoreMLOptions
    help = "write a Core ML ML Program package"

    def write(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], out: Path,
              options: CoreMLOptions,
              layers: Iterable[str] | Mapping[str, CompressedLayer] | None) -> ArtifactReport:
        result = export_coreml(model, example_inputs, out, layers=layers, target=options.target,
                               precision=options.precision, method=options.method)
        methods = "+".join(sorted({p.method for p in result.layers.values()})) or "dense"
        return ArtifactReport(self.name, result.path, dataclasses.asdict(options),
                              f"{options.target} {options.precision} {methods}",
                              artifact_size(result.path),
                              {n: dataclasses.asdict(p) for n, p in result.layers.items()},
                              result.skipped)

    def validate(self, artifact: ArtifactReport | str | os.PathLike[str], model: nn.Module,
                 inputs: torch.Tensor | Sequence[torch.Tensor], score: Scorer, *,
                 reference: np.ndarray | None = None,
                 layers: Iterable[str] | None = None) -> Validation:
        inputs = as_inputs(inputs)
        path = artifact.path if isinstance(artifact, ArtifactReport) else Path(artifact)
        if layers is None:
            layers = (artifact.layers if isinstance(artifact, ArtifactReport)
                      else select_layers(model, first_example(inputs)).layers)
        state = model.state_dict()
        check = verify_coreml(path, {n: state[n].detach().cpu().numpy() for n in layers})
        checks = {k: v for k, v in check.to_dict().items() if k != "layers"}
        examples, result, note = int(inputs[0].shape[0]), None, ""
        ref = torch_outputs(model, inputs) if reference is None else reference
        if check.weights_match:
            decoded = score(torch_outputs(decoded_model(model, check.weights), inputs), ref)
            checks["decoded"] = {"ok": decoded.ok, "examples": examples, **decoded.to_dict(),
                                 "how": _DECODED_HOW}
        if sys.platform == "darwin":
            result = score(coreml_outputs(path, inputs), ref)
        else:
            note = "Core ML predictions need macOS"
        return Validation(check.ok, examples, result, decides=False, checks=checks,
                          layers={n: dataclasses.asdict(c) for n, c in check.layers.items()},
                          note=note)

    def baseline(self, options: CoreMLOptions) -> CoreMLOptions:
        return dataclasses.replace(options, precision="fp32", method="none")

    def baselines(self, options: CoreMLOptions) -> dict[str, CoreMLOptions]:
        return {"dense fp32": self.baseline(options),
                "dense fp16": dataclasses.replace(options, precision="fp16", method="none")}


EXPORTERS.register(CoreMLExporter.name, CoreMLExporter())
