"""Run a ``.tflite`` in the LiteRT interpreter on a caller's examples (any number of inputs).

Timing lives in ``device_harness`` (its host runner times a .tflite as a phone would): this module
only computes outputs, for validation.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dccore.errors import ExportError
from exporters import as_inputs

from ._backend import quiet, require


def interpreter(path: str | os.PathLike[str], threads: int = 1, xnnpack: bool = True) -> Any:
    """A LiteRT interpreter, tensors allocated: with the default delegates (XNNPACK on CPU, as an
    app gets them), or with TFLite's builtin kernels only (``xnnpack=False``)."""
    litert = require("ai_edge_litert.interpreter")
    if not Path(path).is_file():
        raise ExportError(f"TFLite model {path} does not exist")
    resolver = (litert.OpResolverType.AUTO if xnnpack
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with quiet():
        it = litert.Interpreter(model_path=str(path), num_threads=threads,
                                experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    return it


def _input_details(it: Any) -> list[dict]:
    """The model's inputs in ``forward``'s order. litert-torch names them args_0, args_1, ... in
    its signature; the tensor order of the flatbuffer is not promised to follow."""
    signatures = it.get_signature_list()
    if len(signatures) == 1:
        key = next(iter(signatures))
        named = it.get_signature_runner(key).get_input_details()
        numbered = {int(m.group(1)): d for n, d in named.items() if (m := re.fullmatch(r"args_(\d+)", n))}
        if len(numbered) == len(named):
            by_index = {d["index"]: d for d in it.get_input_details()}
            return [by_index[numbered[i]["index"]] for i in sorted(numbered)]
    return list(it.get_input_details())


def _feed(path: str | os.PathLike[str], name: str, tensor: torch.Tensor, detail: dict) -> np.ndarray:
    """``tensor`` as the input wants it: its dtype (int64 token ids go in as int32, exactly), and
    examples of its shape."""
    x = tensor.detach().cpu().numpy()
    want = np.dtype(detail["dtype"])
    cast = x.astype(want)
    if want.kind in "iub" and not np.array_equal(cast, x):
        raise ExportError(f"{path}: input {name} holds values that do not fit its {want.name} "
                          "tensor")
    if tuple(detail["shape"][1:]) != x.shape[1:]:
        raise ExportError(f"{path}: input {name} of shape {list(detail['shape'])} does not fit "
                          f"examples of shape {list(x.shape[1:])}")
    return cast


def tflite_outputs(path: str | os.PathLike[str], inputs: torch.Tensor | Sequence[torch.Tensor],
                   threads: int = 1) -> np.ndarray:
    """The .tflite's output for each example of ``inputs`` (one tensor per model input, examples
    on the first axis), run one example at a time: exported with batch 1, as an app calls it."""
    inputs = as_inputs(inputs)
    it = interpreter(path, threads)
    details, outputs = _input_details(it), it.get_output_details()
    if len(details) != len(inputs):
        raise ExportError(f"{path} takes {len(details)} inputs; {len(inputs)} were given")
    if len(outputs) != 1:
        raise ExportError(f"{path} has {len(outputs)} outputs; validation compares one")
    feeds = [_feed(path, f"#{i}", t, d) for i, (t, d) in enumerate(zip(inputs, details))]
    if len({x.shape[0] for x in feeds}) != 1:
        raise ExportError(f"inputs of shapes {[list(x.shape) for x in feeds]}: each needs the same "
                          "number of examples on its first axis")
    n, out = feeds[0].shape[0], outputs[0]
    result = np.empty((n, *(int(d) for d in out["shape"][1:])), dtype=np.float32)
    for i in range(n):
        for x, d in zip(feeds, details):
            it.set_tensor(d["index"], x[i:i + 1])
        it.invoke()
        result[i] = it.get_tensor(out["index"])[0]
    return result
