"""Weight tensors inside a ``.tflite`` file: read them back, and store them in TFLite's sparse
format.

TFLite's schema has sparse tensors (``SparsityParameters``: per dimension DENSE or SPARSE_CSR with
segment and index arrays), but litert-torch 0.10 cannot emit them: the converter's
``tfl-dense-to-sparse`` pass is compiled into its library and not reachable from Python. So
``sparsify`` rewrites the flatbuffer the way that pass does for ops without a sparse kernel:

    const (sparse, CSR on the last axis) -> DENSIFY -> [DEQUANTIZE ->] FULLY_CONNECTED / CONV_2D
    const (sparse, CSR on the last axis) -> DENSIFY -> EMBEDDING_LOOKUP (float32 tables only)

DENSIFY runs once, when the interpreter prepares the graph, and XNNPACK (LiteRT's default CPU
path) folds DENSIFY and DEQUANTIZE into its packed weights: inference then runs the same dense
kernels as the unpruned model. With TFLite's builtin kernels only (XNNPACK off), DEQUANTIZE after
DENSIFY is re-run on every inference, because its input is not a constant tensor to TFLite:
sparse-float16 and sparse-int8 are then much slower than dense (BENCHMARKS.md). An embedding table
is made sparse only where it is stored float32 (no DEQUANTIZE): with the XNNPACK delegate,
sparse const -> DENSIFY -> DEQUANTIZE -> EMBEDDING_LOOKUP returned wrong rows here (largest output
difference ~1 on a test encoder; ai-edge-litert 2.3), so in ``sparse-float16`` / ``sparse-int8`` a
table stays dense, in fp16 / int8. We deliberately do not
hand a sparse tensor straight to FULLY_CONNECTED, although TFLite's builtin kernel accepts that:
with the default XNNPACK delegate the same file returned NaN logits here (ai-edge-litert 2.3).

The CSR index structure comes from TFLite's own encoder (``FormatConverterFp32`` in ai-edge-litert);
the values are taken in the tensor's stored dtype (float32, float16 or int8) in the same order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection

import numpy as np

from dccore.errors import ExportError

# Ops that read a weight: (which input is the weight, TFLite layout -> PyTorch layout). FC and an
# embedding table are laid out as in PyTorch; conv is OHWI; depthwise 1HWC.
_WEIGHT_OPS = {"FULLY_CONNECTED": (1, None), "CONV_2D": (1, (0, 3, 1, 2)),
               "DEPTHWISE_CONV_2D": (1, (3, 0, 1, 2)), "EMBEDDING_LOOKUP": (1, None)}
# Ops whose weight stays dense when it is dequantized at load (see the module docstring).
_DENSE_WHEN_DEQUANTIZED = ("EMBEDDING_LOOKUP",)
_PASS_THROUGH = ("DEQUANTIZE", "DENSIFY")


def _fb() -> Any:
    from ai_edge_litert import schema_py_generated as fb  # noqa: PLC0415
    return fb


def read_model(content: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils  # noqa: PLC0415
    return flatbuffer_utils.read_model_from_bytearray(bytearray(content))


def write_model(model: Any) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils  # noqa: PLC0415
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_names(model: Any) -> list[str]:
    fb = _fb()
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "CUSTOM")
            for oc in model.operatorCodes]


def _np_dtype(tensor_type: int) -> np.dtype:
    fb = _fb()
    table = {fb.TensorType.FLOAT32: np.float32, fb.TensorType.FLOAT16: np.float16,
             fb.TensorType.INT8: np.int8, fb.TensorType.INT4: np.int8}
    if tensor_type not in table:
        raise ExportError(f"weight tensor of TFLite type {tensor_type} is not read back here")
    return np.dtype(table[tensor_type])


def _index_vector(values: list[int]) -> tuple[int, Any]:
    """The narrowest of TFLite's index vector types that holds ``values``."""
    fb = _fb()
    top = max(values, default=0)
    for limit, kind, cls in ((255, fb.SparseIndexVector.Uint8Vector, fb.Uint8VectorT),
                             (65535, fb.SparseIndexVector.Uint16Vector, fb.Uint16VectorT),
                             (2**31 - 1, fb.SparseIndexVector.Int32Vector, fb.Int32VectorT)):
        if top <= limit:
            vec = cls()
            vec.values = list(values)
            return kind, vec
    raise ExportError("a sparse index does not fit in int32")


def _vector_values(vec: Any) -> np.ndarray:
    return np.asarray(vec.values, dtype=np.int64)


def _vector_bytes(kind: int) -> int:
    fb = _fb()
    return {fb.SparseIndexVector.Uint8Vector: 1, fb.SparseIndexVector.Uint16Vector: 2,
            fb.SparseIndexVector.Int32Vector: 4}.get(kind, 0)


def _densify_csr(tensor: Any, values: np.ndarray) -> np.ndarray:
    """Decode the sparse layout ``sparsify`` writes: DENSE on every axis but the last, CSR on it."""
    fb = _fb()
    sp, shape = tensor.sparsity, tuple(int(d) for d in tensor.shape)
    formats = [d.format for d in sp.dimMetadata]
    if (list(sp.traversalOrder) != list(range(len(shape))) or sp.blockMap is not None and len(sp.blockMap)
            or formats != [fb.DimensionType.DENSE] * (len(shape) - 1) + [fb.DimensionType.SPARSE_CSR]):
        raise ExportError(f"tensor {tensor.name!r}: sparse layout {formats} is not decoded here")
    csr = sp.dimMetadata[-1]
    segments, indices = _vector_values(csr.arraySegments), _vector_values(csr.arrayIndices)
    rows = math.prod(shape[:-1])
    dense = np.zeros((rows, shape[-1]), dtype=values.dtype)
    dense[np.repeat(np.arange(rows), np.diff(segments)), indices] = values
    return dense.reshape(shape)


def _has_scales(tensor: Any) -> bool:
    qp = tensor.quantization
    return qp is not None and (qp.scale is not None and len(qp.scale) > 0
                               or qp.details is not None)


def _unpack_int4(data: bytes, count: int) -> np.ndarray:
    """TFLite's packed INT4: two values a byte, the first in the low nibble, sign-extended."""
    raw = np.frombuffer(data, dtype=np.uint8)
    nibbles = np.empty(raw.size * 2, dtype=np.uint8)
    nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4
    return ((nibbles[:count].astype(np.int16) ^ 8) - 8).astype(np.int8)


def _stored_values(tensor: Any, data: bytes) -> np.ndarray:
    """A constant's stored values (flat; an INT4 tensor's unpacked to int8)."""
    if tensor.type == _fb().TensorType.INT4:
        count = len(data) * 2
        if tensor.sparsity is None:
            count = math.prod(int(d) for d in tensor.shape)
        return _unpack_int4(data, count)
    return np.frombuffer(data, dtype=_np_dtype(tensor.type))


def _dequantize(tensor: Any, q: np.ndarray, sg: Any = None, model: Any = None) -> np.ndarray:
    """As TFLite's DEQUANTIZE computes it, in float32: per channel ``(q - zero) * scale``, or
    blockwise (BlockwiseQuantization: one scale per block of the last axis, no zero point)."""
    qp = tensor.quantization
    if q.dtype != np.int8:
        return q.astype(np.float32)
    if qp.details is not None and sg is not None and hasattr(qp.details, "blockSize"):
        scales_tensor = sg.tensors[qp.details.scales]
        scales = np.frombuffer(bytes(model.buffers[scales_tensor.buffer].data),
                               dtype=_np_dtype(scales_tensor.type)).astype(np.float32)
        block = int(qp.details.blockSize)
        blocks = q.reshape(-1, block).astype(np.float32) * scales.reshape(-1, 1)
        return blocks.reshape(q.shape)
    scale = np.asarray(qp.scale, dtype=np.float32)
    zero = np.asarray(qp.zeroPoint if qp.zeroPoint is not None else [0], dtype=np.float32)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[qp.quantizedDimension] = scale.size
    return (q.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)


@dataclass(frozen=True)
class WeightSlot:
    """The weight input of one FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D op (the table of an
    EMBEDDING_LOOKUP), as stored."""

    op: str
    tensor: str
    dtype: str                 # stored element type: float32, float16, int8
    sparse: bool
    stored_bytes: int          # values + sparse index arrays
    weight: np.ndarray         # decoded to float32, in PyTorch's layout

    def describe(self) -> str:
        return f"{'sparse ' if self.sparse else ''}{self.dtype}"


def weight_slots(content: bytes) -> list[WeightSlot]:
    """Every constant weight a compute op reads (through DEQUANTIZE / DENSIFY), decoded."""
    model = read_model(content)
    names = _op_names(model)
    sg = model.subgraphs[0]
    producer = {out: op for op in sg.operators for out in op.outputs}
    slots = []
    for op in sg.operators:
        kind = names[op.opcodeIndex]
        if kind not in _WEIGHT_OPS or len(op.inputs) <= _WEIGHT_OPS[kind][0]:
            continue
        weight_input, axes = _WEIGHT_OPS[kind]
        index = op.inputs[weight_input]
        quantized = None   # the tensor that carries the scales: DEQUANTIZE's input
        while index in producer and names[producer[index].opcodeIndex] in _PASS_THROUGH:
            index = producer[index].inputs[0]
            if _has_scales(sg.tensors[index]):
                quantized = quantized or sg.tensors[index]
        tensor = sg.tensors[index]
        data = model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            continue   # a weight computed at run time: not a stored constant
        dtype = _np_dtype(tensor.type)
        values = _stored_values(tensor, bytes(data))
        stored = len(data)
        if tensor.sparsity is not None:
            for dim in tensor.sparsity.dimMetadata:
                if dim.arraySegments is not None:
                    stored += len(dim.arraySegments.values) * _vector_bytes(dim.arraySegmentsType)
                    stored += len(dim.arrayIndices.values) * _vector_bytes(dim.arrayIndicesType)
            values = _densify_csr(tensor, values)
        else:
            values = values.reshape(tuple(int(d) for d in tensor.shape))
        weight = _dequantize(quantized or tensor, values, sg, model)
        weight = weight if axes is None else weight.transpose(axes)
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        dtype_name = "int4" if tensor.type == _fb().TensorType.INT4 else dtype.name
        slots.append(WeightSlot(kind, name, dtype_name, tensor.sparsity is not None, int(stored),
                                np.ascontiguousarray(weight)))
    return slots


def _csr(data: np.ndarray) -> tuple[Any, np.ndarray]:
    """TFLite's own encoder for [DENSE, ..., DENSE, SPARSE_CSR]; values in ``data``'s dtype."""
    from ai_edge_litert import format_converter_wrapper_pybind11 as fc  # noqa: PLC0415
    fb = _fb()
    dims = fc.TfLiteDimensionType
    formats = [dims.TF_LITE_DIM_DENSE] * (data.ndim - 1) + [dims.TF_LITE_DIM_SPARSE_CSR]
    converter = fc.FormatConverterFp32(list(data.shape), list(range(data.ndim)), formats, [], [])
    converter.DenseToSparse(np.ascontiguousarray(data, dtype=np.float32).ravel())
    meta = converter.GetDimMetadata()
    values = data[data != 0]   # C order, as the encoder traverses it
    if not np.array_equal(np.asarray(converter.GetData(), np.float32), values.astype(np.float32)):
        raise ExportError("TFLite's sparse encoder ordered the values differently than expected")
    sparsity = fb.SparsityParametersT()
    sparsity.traversalOrder = list(range(data.ndim))
    sparsity.dimMetadata = []
    for axis in range(data.ndim):
        dim = fb.DimensionMetadataT()
        if axis < data.ndim - 1:
            dim.format, dim.denseSize = fb.DimensionType.DENSE, int(data.shape[axis])
        else:
            dim.format = fb.DimensionType.SPARSE_CSR
            dim.arraySegmentsType, dim.arraySegments = _index_vector(list(meta[2 * axis]))
            dim.arrayIndicesType, dim.arrayIndices = _index_vector(list(meta[2 * axis + 1]))
        sparsity.dimMetadata.append(dim)
    return sparsity, values


def _sparse_bytes(sparsity: Any, values: np.ndarray) -> int:
    csr = sparsity.dimMetadata[-1]
    return (values.nbytes + len(csr.arraySegments.values) * _vector_bytes(csr.arraySegmentsType)
            + len(csr.arrayIndices.values) * _vector_bytes(csr.arrayIndicesType))


def sparsify(content: bytes, only: Collection[str] | None = None) -> tuple[bytes, list[str]]:
    """Store every constant weight of FC/conv/embedding ops sparse where that is smaller than dense
    (``only``: just the weight tensors of these names; int4 tensors stay dense: DENSIFY takes none).

    Returns the new flatbuffer and the names of the tensors made sparse.
    """
    fb = _fb()
    model = read_model(content)
    names = _op_names(model)
    sg = model.subgraphs[0]
    producer = {out: op for op in sg.operators for out in op.outputs}
    targets: dict[int, None] = {}
    keep_dense = set()
    for op in sg.operators:
        kind = names[op.opcodeIndex]
        if kind in _WEIGHT_OPS and len(op.inputs) > _WEIGHT_OPS[kind][0]:
            index = op.inputs[_WEIGHT_OPS[kind][0]]
            if index in producer and names[producer[index].opcodeIndex] == "DEQUANTIZE":
                index = producer[index].inputs[0]
                if kind in _DENSE_WHEN_DEQUANTIZED:
                    keep_dense.add(index)
            targets[index] = None
    densify_code = None
    made_sparse = []
    for index in targets:
        if index in keep_dense:
            continue
        tensor = sg.tensors[index]
        buf = model.buffers[tensor.buffer]
        if tensor.sparsity is not None or buf.data is None or len(buf.data) == 0 or len(tensor.shape) < 2:
            continue
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        if only is not None and name not in only or tensor.type == fb.TensorType.INT4:
            continue
        data = np.frombuffer(bytes(buf.data), dtype=_np_dtype(tensor.type)).reshape(
            tuple(int(d) for d in tensor.shape))
        sparsity, values = _csr(data)
        if _sparse_bytes(sparsity, values) >= data.nbytes:
            continue   # not pruned enough to pay for the indices
        if densify_code is None:
            densify_code = _opcode(model, fb.BuiltinOperator.DENSIFY)
        # The const becomes sparse; a new tensor carries DENSIFY's dense output to the consumers.
        dense_out = fb.TensorT()
        dense_out.shape, dense_out.type = list(tensor.shape), tensor.type
        dense_out.name = name + "/densified"
        # Quantization parameters (per-channel scales) live on DENSIFY's output, which DEQUANTIZE
        # reads; DENSIFY only copies values, so the sparse const does not repeat them.
        dense_out.quantization, tensor.quantization = tensor.quantization, None
        empty = fb.BufferT()
        model.buffers.append(empty)
        dense_out.buffer = len(model.buffers) - 1
        sg.tensors.append(dense_out)
        out_index = len(sg.tensors) - 1
        tensor.sparsity = sparsity
        buf.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
        densify = fb.OperatorT()
        densify.opcodeIndex, densify.inputs, densify.outputs = densify_code, [index], [out_index]
        first_user = next(i for i, op in enumerate(sg.operators) if index in list(op.inputs))
        for op in sg.operators:
            op.inputs = [out_index if i == index else i for i in op.inputs]
        sg.operators.insert(first_user, densify)
        made_sparse.append(name)
    return write_model(model), made_sparse


def _opcode(model: Any, code: int) -> int:
    fb = _fb()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _const(model: Any, sg: Any, name: str, array: np.ndarray, ttype: int) -> int:
    fb = _fb()
    buf = fb.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
    model.buffers.append(buf)
    return _tensor(sg, name, array.shape, ttype, len(model.buffers) - 1)


def _tensor(sg: Any, name: str, shape: tuple[int, ...], ttype: int, buffer: int = 0) -> int:
    fb = _fb()
    t = fb.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), ttype, buffer
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _op(code: int, inputs: list[int], outputs: list[int], options_type: int = 0,
        options: Any = None) -> Any:
    fb = _fb()
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, inputs, outputs
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = options_type, options
    return op
