"""ProjectionNet's hashing as TFLite's ``LSH_PROJECTION`` op, so its hyperplanes are not stored.

A projection module (``compression.projection.LSHProjection``; found here by what it offers, not
imported: exporters never import training code) has a method ``tflite_lsh_projection()`` giving
the op's float32 seeds ``(T, d)``, ``in_features``, and the ``(T*d, in_features)`` float32 matrix
its forward multiplies by: ``bits = (x @ planes.T > 0)``. litert-torch converts that forward to

    x[1, in] -> FULLY_CONNECTED(planes) -> GREATER(0) -> CAST(float32) -> [1, T*d]

which stores the matrix (hundreds of KB). This rewrites it into

    x[1, in] -> RESHAPE[in] -> LSH_PROJECTION(DENSE; seeds, k = 0..in-1, weight = x) -> int32[T*d]
             -> CAST(float32) -> RESHAPE[1, T*d]

whose only constants are the ``T*d`` seeds and the ``in`` indices. LSH_PROJECTION's bit (t, j) is
``sum_k x_k * Fingerprint64(seed_tj, k) > 0`` in float64, the projection module's own
definition, so the .tflite computes the same bits as PyTorch (which sums the same hyperplanes,
scaled, in float32: a bit can differ only where the dot product is within rounding of zero).
The op takes one example (its weight input is 1-D), as the exporters' batch-1 models do.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from dccore.errors import ExportError

from ._flatbuffer import _const, _fb, _op, _op_names, _opcode, _tensor, read_model, write_model


def projections(model: nn.Module) -> list[dict[str, Any]]:
    return [m.tflite_lsh_projection() for m in model.modules()
            if callable(getattr(m, "tflite_lsh_projection", None))]


def rewrite(content: bytes, model: nn.Module) -> bytes:
    """Replace each projection's multiplication by LSH_PROJECTION; ``content`` unchanged when
    the model has no projection module. ExportError when one is there but its pattern is not."""
    specs = projections(model)
    if not specs:
        return content
    fb = _fb()
    fm = read_model(content)
    sg = fm.subgraphs[0]
    names = _op_names(fm)
    for n, spec in enumerate(specs):
        planes = np.asarray(spec["planes"], dtype=np.float32)
        found = _find(fm, sg, names, planes)
        if found is None:
            raise ExportError(f"projection {n}: its multiplication by the {planes.shape} "
                              "hyperplanes is not in the converted graph as FULLY_CONNECTED -> "
                              "GREATER(0) -> CAST; cannot store it as LSH_PROJECTION")
        fc, greater, cast = found
        seeds = np.asarray(spec["seeds"], dtype=np.float32)
        n_in, n_bits = int(spec["in_features"]), seeds.size
        x_flat, bits_out = sg.operators[fc].inputs[0], sg.operators[cast].outputs[0]
        fm.buffers[sg.tensors[sg.operators[fc].inputs[1]].buffer].data = None   # the matrix
        tag = f"lsh_projection_{n}"
        x_vec = _tensor(sg, f"{tag}/input", (n_in,), fb.TensorType.FLOAT32)
        bits_int = _tensor(sg, f"{tag}/bits", (n_bits,), fb.TensorType.INT32)
        bits_vec = _tensor(sg, f"{tag}/bits_float", (n_bits,), fb.TensorType.FLOAT32)
        reshape = _opcode(fm, fb.BuiltinOperator.RESHAPE)
        lsh_options = fb.LSHProjectionOptionsT()
        lsh_options.type = fb.LSHProjectionType.DENSE
        cast_options = fb.CastOptionsT()
        cast_options.inDataType, cast_options.outDataType = fb.TensorType.INT32, fb.TensorType.FLOAT32
        sg.operators[fc] = _op(reshape, [x_flat, _const(fm, sg, f"{tag}/shape_in", np.array(
            [n_in], np.int32), fb.TensorType.INT32)], [x_vec])
        sg.operators[greater] = _op(
            _opcode(fm, fb.BuiltinOperator.LSH_PROJECTION),
            [_const(fm, sg, f"{tag}/seeds", seeds, fb.TensorType.FLOAT32),
             _const(fm, sg, f"{tag}/index", np.arange(n_in, dtype=np.int32), fb.TensorType.INT32),
             x_vec], [bits_int], fb.BuiltinOptions.LSHProjectionOptions, lsh_options)
        sg.operators[cast] = _op(_opcode(fm, fb.BuiltinOperator.CAST), [bits_int], [bits_vec],
                                 fb.BuiltinOptions.CastOptions, cast_options)
        sg.operators.insert(cast + 1, _op(reshape, [bits_vec, _const(
            fm, sg, f"{tag}/shape_out", np.array([1, n_bits], np.int32), fb.TensorType.INT32)],
            [bits_out]))
        names = _op_names(fm)
    return write_model(fm)


def _find(fm: Any, sg: Any, names: list[str], planes: np.ndarray) -> tuple[int, int, int] | None:
    """(FULLY_CONNECTED, GREATER, CAST) op indices of the multiplication by ``planes``."""
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(sg.operators):
        for t in op.inputs:
            consumers.setdefault(t, []).append(i)
    for i, op in enumerate(sg.operators):
        if names[op.opcodeIndex] != "FULLY_CONNECTED" or len(op.inputs) < 2:
            continue
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            continue                      # the projection has no bias
        w = sg.tensors[op.inputs[1]]
        data = fm.buffers[w.buffer].data
        if (tuple(w.shape) != planes.shape or w.type != _fb().TensorType.FLOAT32
                or data is None or not np.array_equal(
                    np.frombuffer(bytes(data), np.float32).reshape(planes.shape), planes)):
            continue
        x = sg.tensors[op.inputs[0]]
        if tuple(x.shape) != (1, planes.shape[1]):
            continue
        after = consumers.get(op.outputs[0], [])
        if len(after) != 1 or names[sg.operators[after[0]].opcodeIndex] != "GREATER":
            continue
        greater = sg.operators[after[0]]
        zero = greater.inputs[1]
        zdata = fm.buffers[sg.tensors[zero].buffer].data
        if greater.inputs[0] != op.outputs[0] or zdata is None or np.frombuffer(
                bytes(zdata), np.float32).any():
            continue
        then = consumers.get(greater.outputs[0], [])
        if len(then) != 1 or names[sg.operators[then[0]].opcodeIndex] != "CAST":
            continue
        return i, after[0], then[0]
    return None
