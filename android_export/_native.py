"""The ``auto`` TFLite variant: each compressed layer in the smallest form LiteRT executes that
holds its weights exactly, chosen per layer, with the reason; where no integer form is exact, the
nearest one, with its error.

The forms (what ai-edge-litert 2.x runs here, with XNNPACK and with the builtin kernels):

- ``int4`` / ``int8``  per output channel (or per tensor, where one scale holds the layer: each
  channel's scale costs 12 bytes), weight-only: INT4/INT8 const -> DEQUANTIZE -> op
  (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, EMBEDDING_LOOKUP, ...). A constant is dequantized
  once (XNNPACK at load, the builtin kernel on the first run), so inference runs the float kernels.
- ``sparse-int8``      CSR int8 -> DENSIFY -> DEQUANTIZE -> op (``_flatbuffer.sparsify``). DENSIFY
  takes no int4, so a pruned layer is sparse in int8 or dense in int4, whichever is smaller. Not
  for an embedding table (XNNPACK reads one wrongly behind DENSIFY -> DEQUANTIZE; ``_flatbuffer``).
- ``int4-block32``     INT4 in blocks of 32 inputs, one fp16 scale per block (TFLite's
  BlockwiseQuantization), FULLY_CONNECTED only, dynamic range: the kernel quantizes its input to
  int8 at run time (LiteRT runs blockwise weights no other way; DEQUANTIZE does not take them). The
  scales are stored as fp16 holding bfloat16's 7-bit mantissa (ai-edge-quantizer's format).
- ``float16`` / ``sparse-float16`` / ``float32``: as the variants of the same names.

A layer is exact in an integer form when every output channel (block) holds integer multiples
``q * s`` of one float32 scale, ``|q| <= 7`` (int4, -8 allowed) or ``<= 127`` (int8), and
``float32(q * s) == w`` bit for bit, as TFLite's DEQUANTIZE computes it: what ``share`` writes
with ``grid = "int4" | "int8"``. It is found from the weights themselves (``fit_grid``), so any
model whose weights lie on such grids exports exactly. Free k-means codebooks lie on no grid: a
layer is then rounded to int8 per channel (sparse where smaller), or to int4 where the layer has
at most 16 values and int4's measured weight error is within ``MAX_ROUNDING_ERROR``, with one
scale for the tensor where that is within it too; the export report's interpreter score says
what that costs. A float form that holds such a layer exactly (float16, when the codebook's
values are float16 numbers) is kept only where rounding would save nothing: compression that
stays in the .dcz helps nobody. (int8 per channel errs by 0.3-1.5% of a weight's RMS: more on
long rows with outliers, as MiniLM's FFN-out and embeddings.)

The graph is rewritten by ai-edge-quantizer, driven with one recipe entry per op (weight-only int8
or float16, or dynamic int4 blockwise); its quantized buffers and scales are then replaced by our
codes and scales (an int4 per-channel weight is retyped from the int8 the quantizer wrote: its
policy refuses weight-only int4 for DEPTHWISE_CONV_2D, which LiteRT's DEQUANTIZE feeds fine), and
the sparse forms are made by ``_flatbuffer.sparsify``. Layers that are not
compressed are stored as float16, as in the ``sparse-float16`` variant.

litert-torch folds a LayerNorm's scale g into the Linear after it (stores ``W * g``: MiniLM's
Q, K, V and FFN-in), which takes the weight off its grid; ``unfold_scales`` stores ``W`` again and
multiplies the op's input by g (found among the model's vectors, bit for bit), as PyTorch does.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from dccore.errors import ExportError

from ._backend import quiet, require
from ._flatbuffer import (_DENSE_WHEN_DEQUANTIZED, _PASS_THROUGH, _WEIGHT_OPS, WeightSlot, _const,
                          _fb, _op, _op_names, _opcode, _tensor, read_model, sparsify,
                          weight_slots, write_model)

FORMS: dict[str, str] = {
    "int4": "int4 per output channel, dequantized at load",
    "int8": "int8 per output channel, dequantized at load",
    "sparse-int8": "sparse (CSR) int8 per output channel, densified and dequantized at load",
    "int4-block32": "int4 in blocks of 32 inputs (fp16 scales); input quantized at run time",
    "sparse-float16": "sparse (CSR) float16, densified and dequantized at load",
    "float16": "float16, dequantized at load",
    "float32": "float32",
}
# Where no form is exact, the smallest rounding whose relative RMS weight error is at most this
# (int8 per channel is typically ~0.3-0.5%): one scale for the whole tensor instead of one per
# channel, int4 instead of int8 (a layer of <= 16 values nearly on a uniform grid)
MAX_ROUNDING_ERROR = 0.01
BLOCK = 32
_INT_FORMS = ("int4", "int8", "sparse-int8", "int4-block32")
_RANGES = {4: (-8, 7), 8: (-127, 127)}
_SCALE_BYTES = 4 + 8          # per channel: a float32 scale and an int64 zero point (both required)
_ULPS = (0, 1, -1, 2, -2)     # s = max / k may land an ulp or two off the scale that made the grid


# ----------------------------------------------------------------------------------------------
# Integer grids

@dataclass(frozen=True)
class Grid:
    """A weight (as rows: output channels, or blocks) as integer codes times one scale per row."""

    bits: int
    codes: np.ndarray        # int8, the rows' shape
    scales: np.ndarray       # float32, one per row
    exact: bool              # float32(codes * scales) == the weight, bit for bit
    error: float             # relative RMS error of the dequantized weight (0 when exact)


def _exact_scales(rows: np.ndarray, bits: int, scale_ok: Any = None) -> np.ndarray | None:
    """One float32 scale per row with every value ``float32(q * s)``, q in the int range; None
    as soon as one row has none. ``rows`` float32 [R, C]."""
    lo, hi = _RANGES[bits]
    top = np.max(np.abs(rows), axis=1)
    scales = np.where(top > 0, np.float32(0), np.float32(1)).astype(np.float32)
    todo = top > 0
    # the top value's code, largest first: a grid trained over the whole range (share's grid)
    # puts a row's largest weight on the top code, so most rows are found at once
    for k in range(max(-lo, hi), 0, -1):
        if not todo.any():
            break
        base = (top[todo] / np.float32(k)).astype(np.float32)
        sub = rows[todo]
        found = np.zeros(len(sub), dtype=bool)
        chosen = np.zeros(len(sub), dtype=np.float32)
        for ulp in _ULPS:
            s = base
            for _ in range(abs(ulp)):
                s = np.nextafter(s, np.float32(np.inf if ulp > 0 else 0)).astype(np.float32)
            q = np.rint(sub / s[:, None])
            ok = ((q >= lo) & (q <= hi)).all(axis=1) & (
                (q.astype(np.float32) * s[:, None]) == sub).all(axis=1) & (s > 0)
            if scale_ok is not None:
                ok &= scale_ok(s)
            new = ok & ~found
            chosen[new] = s[new]
            found |= new
        idx = np.flatnonzero(todo)
        scales[idx[found]] = chosen[found]
        todo[idx[found]] = False
    return None if todo.any() else scales


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """Each row's distinct values, padded with 0 (exact on every grid): far fewer to test."""
    uniq = [np.unique(r) for r in rows]
    out = np.zeros((len(rows), max(len(u) for u in uniq)), dtype=np.float32)
    for i, u in enumerate(uniq):
        out[i, :len(u)] = u
    return out


def _bf16_exact(s: np.ndarray) -> np.ndarray:
    """Scales that survive the blockwise format's bfloat16 -> float16 storage unchanged."""
    bits = s.astype(np.float32).view(np.uint32)
    with np.errstate(over="ignore"):
        return ((bits & 0xFFFF) == 0) & (s.astype(np.float16).astype(np.float32) == s)


def fit_grid(rows: np.ndarray, bits: int, *, bf16_scales: bool = False) -> Grid:
    """``rows`` (float32 [R, C]) as ``bits``-bit codes and one scale per row: exactly where the
    weights lie on such grids (a few rows are tried first, so weights on no grid are quick to
    reject), else rounded with each row's largest magnitude on the top code."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    lo, hi = _RANGES[bits]
    scale_ok = _bf16_exact if bf16_scales else None
    sample = _distinct_rows(rows[:: max(1, len(rows) // 8)])
    scales = None
    if sample.shape[1] <= hi - lo + 1:
        if _exact_scales(sample, bits, scale_ok) is not None:
            scales = _exact_scales(_distinct_rows(rows), bits, scale_ok)
    exact = scales is not None
    if scales is None:
        top = np.max(np.abs(rows), axis=1)
        scales = np.where(top > 0, top / np.float32(hi), np.float32(1)).astype(np.float32)
        if bf16_scales:
            import ml_dtypes  # noqa: PLC0415  (ai-edge-quantizer's dependency)
            scales = scales.astype(ml_dtypes.bfloat16).astype(np.float32)
    codes = np.clip(np.rint(rows / scales[:, None]), lo, hi).astype(np.int8)
    back = codes.astype(np.float32) * scales[:, None]
    if exact and not np.array_equal(back, rows):
        raise ExportError("internal: an exact grid fit does not reproduce the weights")
    norm = float(np.linalg.norm(rows))
    error = 0.0 if exact else float(np.linalg.norm(back - rows)) / (norm or 1.0)
    return Grid(bits, codes, scales.astype(np.float32), exact, error)


# ----------------------------------------------------------------------------------------------
# Per-layer choice

@dataclass(frozen=True)
class LayerChoice:
    """What ``auto`` stores for one weight, and why."""

    tensor: str
    op: str
    form: str
    exact: bool
    error: float                   # relative RMS weight error of the stored form (0 if exact)
    why: str
    bytes: dict[str, int]          # estimated stored bytes of each form considered


def _index_bytes(top: int) -> int:
    return 1 if top <= 255 else 2 if top <= 65535 else 4


def _sizes(weight: np.ndarray, op: str, scales8: int, scales4: int) -> dict[str, int]:
    """Stored bytes of each form for a weight in TFLite's layout (estimates matching
    ``_flatbuffer``'s CSR: indices on the last axis, segments per row); ``scales8``/``scales4``:
    how many scales the int8 / int4 grid has (1 per channel, or 1 for the tensor)."""
    n, nnz = weight.size, int(np.count_nonzero(weight))
    rows = n // weight.shape[-1] if weight.ndim >= 2 else 1
    csr = nnz * _index_bytes(weight.shape[-1] - 1) + (rows + 1) * _index_bytes(nnz)
    sizes = {"float32": 4 * n, "float16": 2 * n, "int8": n + scales8 * _SCALE_BYTES,
             "int4": (n + 1) // 2 + scales4 * _SCALE_BYTES}
    if weight.ndim >= 2 and op not in _DENSE_WHEN_DEQUANTIZED:
        sizes["sparse-int8"] = nnz + csr + scales8 * _SCALE_BYTES
        sizes["sparse-float16"] = 2 * nnz + csr
    if op == "FULLY_CONNECTED" and weight.ndim == 2 and weight.shape[1] % BLOCK == 0:
        sizes["int4-block32"] = n // 2 + 2 * (n // BLOCK)
    return sizes


def _torch_rows(slot: WeightSlot) -> np.ndarray:
    """The weight as [output channels, everything else], in PyTorch's layout."""
    return slot.weight.reshape(slot.weight.shape[0], -1)


def choose(slot: WeightSlot, bits: int | None) -> tuple[LayerChoice, dict[str, Grid]]:
    """The smallest exact form of one weight (``slot``: read from the float32 flatbuffer), else the
    nearest integer form. ``bits``: the layer's codebook bits, when it is weight shared."""
    w = slot.weight
    grids: dict[str, Grid | None] = {"int8": _fit(_torch_rows(slot), 8)}
    grids["int4"] = _fit(_torch_rows(slot), 4) if grids["int8"].exact or (bits or 99) <= 4 \
        else None
    sizes = _sizes(_stored_layout(slot), slot.op, len(grids["int8"].scales),
                   len(grids["int4"].scales) if grids["int4"] is not None else len(w))
    if "int4-block32" in sizes:
        grids["int4-block32"] = fit_grid(w.reshape(-1, BLOCK), 4, bf16_scales=True)
    exact = {"float32": True, "float16": bool(np.array_equal(w.astype(np.float16).astype(np.float32), w))}
    exact["sparse-float16"] = exact["float16"]
    exact["int8"] = exact["sparse-int8"] = grids["int8"].exact
    exact["int4"] = grids["int4"] is not None and grids["int4"].exact
    exact["int4-block32"] = "int4-block32" in grids and grids["int4-block32"].exact
    candidates = {f: b for f, b in sizes.items() if exact.get(f)}
    best = min(candidates, key=lambda f: (candidates[f], f))
    kept = {k: g for k, g in grids.items() if g is not None}
    if best in _INT_FORMS:
        why = (f"smallest form that holds the weights exactly{_granularity(best, grids)} "
               f"({_others(sizes, exact, best)})")
        return LayerChoice(slot.tensor, slot.op, best, True, 0.0, why, sizes), kept
    # on no int grid: the nearest int8 grid (int4 where that costs little), unless a float form
    # holds the weights exactly in as few bytes
    form = min(("int8", "sparse-int8"), key=lambda f: sizes.get(f, math.inf))
    error, int4 = grids["int8"].error, grids["int4"]
    if int4 is not None and int4.error <= MAX_ROUNDING_ERROR and sizes["int4"] < sizes[form]:
        form, error = "int4", int4.error
    if sizes[best] <= sizes[form]:
        why = (f"on no int4/int8 grid; {best} holds it exactly ({sizes[best]:,} B), rounding to "
               f"{form} would cost {sizes[form]:,} B at relative weight error {error:.2e}")
        return LayerChoice(slot.tensor, slot.op, best, True, 0.0, why, sizes), kept
    why = (f"on no int4/int8 grid; rounded to {form}{_granularity(form, grids)} (relative "
           f"weight error {error:.2e}"
           + (f"; int4 would be {int4.error:.2e}" if int4 is not None and form != "int4" else "")
           + f"; exact needs {best}, {sizes[best]:,} B)")
    return LayerChoice(slot.tensor, slot.op, form, False, error, why, sizes), kept


def _granularity(form: str, grids: Mapping[str, Grid | None]) -> str:
    grid = grids.get("int8" if form == "sparse-int8" else form)
    if form not in ("int8", "sparse-int8", "int4") or grid is None:
        return ""
    return ", per tensor" if len(grid.scales) == 1 else ", per channel"


def _fit(rows: np.ndarray, bits: int) -> Grid:
    """Per tensor (one scale: 12 bytes, not 12 per channel) where one scale holds the layer
    exactly, or (no channel grid being exact either) within ``MAX_ROUNDING_ERROR``; else per
    channel."""
    channel = fit_grid(rows, bits)
    tensor = fit_grid(rows.reshape(1, -1), bits)
    if tensor.exact or not channel.exact and tensor.error <= MAX_ROUNDING_ERROR:
        return Grid(bits, tensor.codes.reshape(rows.shape), tensor.scales, tensor.exact,
                    tensor.error)
    return channel


def _others(sizes: Mapping[str, int], exact: Mapping[str, bool], form: str) -> str:
    shown = [f"{f} {b:,} B{'' if exact.get(f) else ' (not exact)'}"
             for f, b in sorted(sizes.items(), key=lambda kv: kv[1]) if f != form]
    return f"{sizes[form]:,} B; " + ", ".join(shown[:3])


def _stored_layout(slot: WeightSlot) -> np.ndarray:
    axes = _WEIGHT_OPS[slot.op][1]
    return slot.weight if axes is None else slot.weight.transpose(np.argsort(axes))


# ----------------------------------------------------------------------------------------------
# Writing

def _scope(sg: Any, op: Any) -> str:
    """ai-edge-quantizer's scope of an op: its output tensor names, ';'-joined and terminated."""
    names = [sg.tensors[i].name for i in op.outputs if i != -1]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return ";".join(names) + ";" if names else ""


def _weight_ops(content: bytes) -> dict[str, tuple[str, str]]:
    """Weight tensor name -> (op kind, the op's scope), for every weight op of the graph."""
    model = read_model(content)
    names, sg = _op_names(model), model.subgraphs[0]
    out = {}
    for op in sg.operators:
        kind = names[op.opcodeIndex]
        if kind in _WEIGHT_OPS and len(op.inputs) > _WEIGHT_OPS[kind][0]:
            t = sg.tensors[op.inputs[_WEIGHT_OPS[kind][0]]]
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            out.setdefault(name, (kind, _scope(sg, op)))
    return out


def _quantize_per_op(float32: bytes, plan: Mapping[str, LayerChoice]) -> bytes:
    """ai-edge-quantizer with one recipe entry per op: the graph rewrite (DEQUANTIZE ops, tensor
    types, int4 packing, blockwise scale tensors) is its own."""
    aeq = require("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping  # noqa: PLC0415
    algorithms = aeq.algorithm_manager.AlgorithmName
    G, OpName = qtyping.QuantGranularity, qtyping.TFLOperationName
    quantizer = aeq.quantizer.Quantizer(bytearray(float32))
    ops = _weight_ops(float32)
    entries = 0
    for tensor, (kind, scope) in ops.items():
        choice = plan.get(tensor)
        form = choice.form if choice is not None else "float16"
        regex, op_name = f"^{re.escape(scope)}$", OpName(kind)
        if form in ("float16", "sparse-float16"):
            quantizer.add_weight_only_config(regex=regex, operation_name=op_name, num_bits=16,
                                             algorithm_key=algorithms.FLOAT_CASTING)
        elif form in ("int8", "sparse-int8", "int4"):
            # int4 is asked as int8 and retyped by _write_codes: the quantizer's policy refuses
            # weight-only int4 for some ops (DEPTHWISE_CONV_2D) whose DEQUANTIZE runs it fine
            quantizer.add_weight_only_config(regex=regex, operation_name=op_name, num_bits=8,
                                             granularity=G.CHANNELWISE)
        elif form == "int4-block32":
            quantizer.add_dynamic_config(regex=regex, operation_name=op_name, num_bits=4,
                                         granularity=G.BLOCKWISE_32)
        else:
            continue
        entries += 1
    if not entries:
        return float32
    with quiet():
        return bytes(quantizer.quantize().quantized_model)


def _stored_tensor(sg: Any, names: list[str], producer: Mapping[int, Any], index: int) -> int:
    """The constant behind an op's weight input (through DEQUANTIZE / DENSIFY)."""
    while index in producer and names[producer[index].opcodeIndex] in _PASS_THROUGH:
        index = producer[index].inputs[0]
    return index


def _write_codes(content: bytes, plan: Mapping[str, LayerChoice],
                 grids: Mapping[str, Mapping[str, Grid]]) -> bytes:
    """Replace the quantizer's codes and scales by ours, for every integer form."""
    from ai_edge_quantizer.transformations.transformation_utils import pack_data  # noqa: PLC0415
    model = read_model(content)
    names, sg = _op_names(model), model.subgraphs[0]
    producer = {out: op for op in sg.operators for out in op.outputs}
    done = set()
    for op in sg.operators:
        kind = names[op.opcodeIndex]
        if kind not in _WEIGHT_OPS or len(op.inputs) <= _WEIGHT_OPS[kind][0]:
            continue
        index = _stored_tensor(sg, names, producer, op.inputs[_WEIGHT_OPS[kind][0]])
        tensor = sg.tensors[index]
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        choice = plan.get(name)
        if choice is None or index in done or choice.form not in ("int8", "sparse-int8", "int4",
                                                                   "int4-block32"):
            continue
        done.add(index)
        form = "int8" if choice.form == "sparse-int8" else choice.form
        grid = grids[name][form]
        qp = tensor.quantization
        if qp is None or qp.scale is None and qp.details is None:
            raise ExportError(f"tensor {name}: ai-edge-quantizer did not quantize it to {form}")
        axes = _WEIGHT_OPS[kind][1]
        shape = tuple(int(d) for d in tensor.shape)
        if form == "int4-block32":
            codes = grid.codes.reshape(shape)
            scales_tensor = sg.tensors[qp.details.scales]
            scales = grid.scales.astype(np.float16).reshape(shape[0], -1)
            model.buffers[scales_tensor.buffer].data = np.frombuffer(scales.tobytes(), np.uint8)
        else:
            torch_shape = shape if axes is None else tuple(shape[a] for a in axes)
            codes = grid.codes.reshape(torch_shape)
            if axes is not None:
                codes = codes.transpose(np.argsort(axes))
            qp.scale = grid.scales.astype(np.float32)
            qp.zeroPoint = np.zeros(len(grid.scales), dtype=np.int64)
            qp.quantizedDimension = 0 if axes is None or len(grid.scales) == 1 else int(axes[0])
            tensor.type = _fb().TensorType.INT4 if grid.bits == 4 else _fb().TensorType.INT8
        model.buffers[tensor.buffer].data = pack_data(
            grid.bits, np.ascontiguousarray(codes).reshape(-1).view(np.uint8))
    return write_model(model)


@dataclass(frozen=True)
class NativeExport:
    content: bytes
    choices: dict[str, LayerChoice]     # by weight tensor name


def build_native(float32: bytes, bits: Mapping[str, int | None], match: Mapping[str, str]) -> NativeExport:
    """The ``auto`` flatbuffer. ``match``: weight tensor name -> compressed layer name (the
    layers ``bits`` describes); every other weight is stored float16."""
    slots = {s.tensor: s for s in weight_slots(float32)}
    plan, grids = {}, {}
    for tensor, layer in match.items():
        plan[tensor], grids[tensor] = choose(slots[tensor], bits.get(layer))
    content = _quantize_per_op(float32, plan)
    content = _write_codes(content, plan, grids)
    sparse = {t for t, c in plan.items() if c.form.startswith("sparse-")}
    if sparse:
        content, _ = sparsify(content, only=sparse)
    return NativeExport(content, plan)


# ----------------------------------------------------------------------------------------------
# Input scales folded into a weight by the converter

def folded_scale(ours: np.ndarray, stored: np.ndarray, vectors: Mapping[str, np.ndarray]
                 ) -> str | None:
    """The name of the vector g the converter folded into a FULLY_CONNECTED weight
    (``stored == float32(ours * g)`` column by column, bit for bit: a LayerNorm's scale before a
    Linear), or None."""
    if ours.ndim != 2 or ours.shape != stored.shape or np.array_equal(ours, stored):
        return None
    for name, g in vectors.items():
        if g.shape == (ours.shape[1],) and np.array_equal(ours * g[None, :], stored):
            return name
    return None


def unfold_scales(content: bytes, unfold: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """For each FULLY_CONNECTED weight tensor named in ``unfold`` (-> (ours, g)): store ``ours``
    and multiply the op's input by ``g`` (a MUL before it), as PyTorch computes it. litert-torch
    folds a LayerNorm's scale into the next Linear's weights, which moves them off the grid that
    holds them exactly; unfolded, the weight is ours and the arithmetic is the model's."""
    if not unfold:
        return content
    fb = _fb()
    model = read_model(content)
    names, sg = _op_names(model), model.subgraphs[0]
    mul_code = None
    for i in range(len(sg.operators) - 1, -1, -1):
        op = sg.operators[i]
        if names[op.opcodeIndex] != "FULLY_CONNECTED" or len(op.inputs) < 2:
            continue
        weight = sg.tensors[op.inputs[1]]
        name = weight.name.decode() if isinstance(weight.name, bytes) else str(weight.name)
        if name not in unfold:
            continue
        ours, g = unfold[name]
        model.buffers[weight.buffer].data = np.frombuffer(
            np.ascontiguousarray(ours, np.float32).tobytes(), np.uint8)
        scale = _const(model, sg, name + "/input_scale", np.asarray(g, np.float32).reshape(-1),
                       fb.TensorType.FLOAT32)
        x = sg.tensors[op.inputs[0]]
        model.buffers.append(fb.BufferT())     # the product's own empty buffer
        scaled = _tensor(sg, name + "/scaled_input", x.shape, x.type, len(model.buffers) - 1)
        if mul_code is None:
            mul_code = _opcode(model, fb.BuiltinOperator.MUL)
        sg.operators.insert(i, _op(mul_code, [op.inputs[0], scale], [scaled],
                                   fb.BuiltinOptions.MulOptions, fb.MulOptionsT()))
        op.inputs = [scaled, *list(op.inputs)[1:]]
    return write_model(model)
