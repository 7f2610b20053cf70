"""PyTorch -> LiteRT/TFLite (litert-torch), in the variants TFLite can hold.

TFLite has no palettized (lookup-table) weights, so a codebook cannot ride along as such. What
each variant stores for a compressed layer, and so what carries the compression:

- ``float32``        dense float32: nothing (the uncompressed baseline; zeros and the ~2**bits
                     distinct values only help a zip).
- ``float16``        dense float16, dequantized when the interpreter loads the model: halves
                     the bytes; our codebook survives as fp16(codebook), exactly.
- ``int8``           dense int8 weight-only, symmetric per output channel (ai-edge-quantizer),
                     dequantized at load: a quarter of the bytes. Zeros stay exactly zero, but the
                     codebook is rounded onto each channel's int8 grid (not exact).
- ``sparse-float32`` TFLite sparse tensors (CSR on the last axis) + DENSIFY: pruning carries,
                     values exact.
- ``sparse-float16`` the same with float16 values + DEQUANTIZE: pruning and fp16(codebook), exact
                     in fp16. The default: the smallest file that keeps our weights exactly (fp16).
- ``sparse-int8``    CSR with int8 values + DEQUANTIZE; values as ``int8``.
- ``auto``           the default: each compressed layer in the smallest form LiteRT runs that
                     holds it exactly (int4 / int8 per channel, int4 in blocks of 32, sparse int8,
                     float16, ...), chosen per layer with the reason; where none is exact (free
                     k-means codebooks), the nearest int8 / int4 form, with its error (``_native``).

Sparse storage is used for a weight only when it is smaller than the dense one (a dense layer,
e.g. a barely pruned first conv, stays dense). Everything runs through the interpreter's ordinary
dense kernels after load: none of these variants makes the arithmetic sparse. Caveat: with XNNPACK
turned off, ``sparse-float16`` and ``sparse-int8`` dequantize their weights on every inference
(see ``_flatbuffer``); use ``sparse-float32`` for the builtin kernels.
"""
from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dccore.errors import ExportError
from dccore.outputs import TFLITE, check_output, write_bytes_atomic
from exporters import (MAX_CODEBOOK, CompressedLayer, as_inputs, select_layers,
                       unsupported_op_error)

from . import _lsh
from ._backend import quiet, require
from ._flatbuffer import WeightSlot, sparsify, weight_slots
from ._native import build_native, folded_scale, unfold_scales

VARIANTS: dict[str, str] = {
    "float32": "dense float32 weights (the uncompressed baseline)",
    "float16": "dense float16 weights, dequantized at load",
    "int8": "dense int8 weight-only (per-channel symmetric), dequantized at load",
    "sparse-float32": "sparse (CSR) float32 weights, densified at load",
    "sparse-float16": "sparse (CSR) float16 weights, densified and dequantized at load",
    "sparse-int8": "sparse (CSR) int8 weight-only weights, densified and dequantized at load",
    "auto": "per layer, the smallest form LiteRT runs that holds it exactly (else the nearest)",
}
DEFAULT_VARIANT = "auto"
# how a ProjectionNet's hashing is stored (_lsh.py): the LSH_PROJECTION op, or its matrix
PROJECTIONS = ("lsh", "matmul")


@dataclass(frozen=True)
class LayerStorage:
    """How one compressed layer ended up in the .tflite."""

    name: str
    tensor: str
    stored_as: str              # e.g. "sparse float16"
    stored_bytes: int
    zeros_kept: bool            # every pruned weight is still exactly zero
    max_abs_diff: float         # stored (dequantized) vs ours; BatchNorm folding shows up here
    exact: bool = False         # stored (dequantized in float32) == ours, bit for bit
    form: str = ""              # ``auto``: the form chosen (_native.FORMS), and why
    why: str = ""


@dataclass(frozen=True)
class TFLiteExport:
    path: Path
    variant: str
    layers: dict[str, LayerStorage] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # compressed layers not stored as such

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "variant": self.variant,
                "stores": VARIANTS[self.variant],
                "layers": {k: asdict(v) for k, v in self.layers.items()}, "skipped": self.skipped}


def convert_float32(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> bytes:
    """The dense float32 flatbuffer, straight from litert-torch (64-bit integer inputs become
    32-bit: token ids and masks are fed as int32)."""
    litert_torch = require("litert_torch")
    inputs = as_inputs(example_inputs)
    log = None
    try:
        with torch.no_grad(), quiet() as log:
            return bytes(litert_torch.convert(model.eval(), inputs).model_content())
    except Exception as exc:  # litert-torch raises RuntimeError/ValueError/...; name layer and op
        version = getattr(litert_torch, "__version__", "")
        raise unsupported_op_error(exc, model, inputs, f"litert-torch {version}".strip(),
                                   said=log.getvalue() if log else "") from exc


class _LastConversion:
    """The float32 flatbuffer of the last model converted: an export and its dense baseline (or a
    benchmark's six variants) convert a model once. Reused only for the same model object, with
    the same forward, weights and example inputs (compared by content)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._model: weakref.ref | None = None
        self._content = b""

    @staticmethod
    def _key_of(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple:
        digest = hashlib.sha256()
        tensors = [*inputs, *model.state_dict().values()]
        for name in model.state_dict():
            digest.update(name.encode())
        for t in tensors:
            t = t.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
            digest.update(t.view(torch.uint8).numpy())   # the tensor's bytes, not copied
        shapes = tuple((tuple(t.shape), str(t.dtype)) for t in inputs)
        return getattr(model.forward, "__func__", model.forward), shapes, digest.hexdigest()

    def convert(self, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
        key = self._key_of(model, inputs)
        if self._model is not None and self._model() is model and self._key == key:
            return self._content
        content = convert_float32(model, inputs)
        self._key, self._model, self._content = key, weakref.ref(model), content
        return content


_last = _LastConversion()


def _quantize(content: bytes, precision: str) -> bytes:
    """float16 / int8 weight-only with ai-edge-quantizer (every FC/conv weight, however small)."""
    aeq = require("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping, recipe  # noqa: PLC0415
    quantizer = aeq.quantizer.Quantizer(bytearray(content))
    if precision == "int8":
        quantizer.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    else:
        quantizer.add_weight_only_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
            algorithm_key=aeq.algorithm_manager.AlgorithmName.FLOAT_CASTING)
    with quiet():
        return bytes(quantizer.quantize().quantized_model)


def build_variant(float32: bytes, variant: str) -> bytes:
    if variant == "auto":
        raise ExportError("the TFLite variant 'auto' is chosen per layer from the model's weights: "
                          "use export_tflite")
    if variant not in VARIANTS:
        raise ExportError(f"TFLite variant {variant!r} is unknown; choose one of {sorted(VARIANTS)}")
    precision = variant.removeprefix("sparse-")
    content = float32 if precision == "float32" else _quantize(float32, precision)
    if variant.startswith("sparse-"):
        content, _ = sparsify(content)
    return content


def _match(layers: Mapping[str, CompressedLayer], state: Mapping[str, np.ndarray],
           slots: list[WeightSlot]) -> dict[str, tuple[WeightSlot, bool, float]]:
    """Pair each compressed layer with the stored weight of the same shape and zero pattern
    (values may differ: int8 rounding, BatchNorm folded into a conv)."""
    out = {}
    for name in layers:
        ours = state[name]
        best = None
        for slot in slots:
            if slot.weight.shape != ours.shape:
                continue
            agree = float(np.mean((slot.weight == 0) == (ours == 0)))
            diff = float(np.max(np.abs(slot.weight - ours), initial=0.0))
            key = (agree, -diff)
            if best is None or key > best[0]:
                best = (key, slot, diff)
        if best is None:
            raise ExportError(f"layer {name!r} ({tuple(ours.shape)}) has no weight of that shape in "
                              "the .tflite; the converter rewrote it")
        _, slot, diff = best
        zeros_kept = bool(np.all(slot.weight[ours == 0] == 0))
        out[name] = (slot, zeros_kept, diff)
    return out


def describe_layers(content: bytes, model: nn.Module,
                    layers: Mapping[str, CompressedLayer]) -> dict[str, LayerStorage]:
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    matched = _match(layers, state, weight_slots(content))
    return {n: LayerStorage(n, s.tensor, s.describe(), s.stored_bytes, kept, diff,
                            bool(np.array_equal(s.weight, state[n])))
            for n, (s, kept, diff) in matched.items()}


def _check_compressed(variant: str, storage: Mapping[str, LayerStorage]) -> None:
    """Every compressed layer must be stored in the variant's dtype: no size threshold may skip a
    small layer. (A sparse variant keeps a layer dense only where CSR would be larger.)"""
    want_dtype = variant.removeprefix("sparse-")
    for name, s in storage.items():
        if not s.stored_as.endswith(want_dtype):
            raise ExportError(f"layer {name!r} is stored as {s.stored_as}, not {want_dtype}: the "
                              "quantizer skipped it")


# what weight_slots reads back for each form of _native
_STORED_AS = {"int4": "int4", "int8": "int8", "sparse-int8": "sparse int8", "int4-block32": "int4",
              "float16": "float16", "sparse-float16": "sparse float16", "float32": "float32"}


def _build_auto(float32: bytes, model: nn.Module, layers: Mapping[str, CompressedLayer]
                ) -> tuple[bytes, dict[str, LayerStorage]]:
    """The ``auto`` variant (``_native``), each layer's choice checked on the bytes written: a
    layer chosen as exact must read back bit for bit equal to ours."""
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    matched = _match(layers, state, weight_slots(float32))
    # a LayerNorm's scale folded into the next Linear by the converter: unfolded (_native)
    vectors = {k: v for k, v in state.items() if v.ndim == 1}
    unfold = {}
    for name, (slot, _, _) in matched.items():
        if slot.op == "FULLY_CONNECTED" and (g := folded_scale(state[name], slot.weight, vectors)):
            unfold[slot.tensor] = (state[name], vectors[g])
    if unfold:
        float32 = unfold_scales(float32, unfold)
        matched = _match(layers, state, weight_slots(float32))
    bits = {n: info.bits if len(info.codebook) <= MAX_CODEBOOK else None
            for n, info in layers.items()}
    native = build_native(float32, bits, {slot.tensor: n for n, (slot, _, _) in matched.items()})
    storage = describe_layers(native.content, model, layers)
    by_layer = {n: native.choices[slot.tensor] for n, (slot, _, _) in matched.items()}
    out = {}
    for name, s in storage.items():
        choice, converted = by_layer[name], matched[name][0].weight
        if choice.exact and not s.exact and np.array_equal(converted, state[name]):
            raise ExportError(f"layer {name!r}: stored as {choice.form}, which should hold it "
                              f"exactly, but reads back {s.max_abs_diff:.3g} off; please report")
        if s.stored_as != _STORED_AS[choice.form]:
            raise ExportError(f"layer {name!r}: chosen as {choice.form} but stored as "
                              f"{s.stored_as}; please report")
        out[name] = replace(s, stored_as=choice.form, form=choice.form, why=choice.why)
    return native.content, out


def export_tflite(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                  out: str | os.PathLike[str], *, variant: str = DEFAULT_VARIANT,
                  layers: Iterable[str] | Mapping[str, CompressedLayer] | None = None,
                  float32: bytes | None = None, lsh: bool = True) -> TFLiteExport:
    """Convert ``model`` to ``out`` (a ``.tflite``) in ``variant`` (see VARIANTS), written
    atomically. ``example_inputs``: one example of each input (a tensor, or a tuple of them).
    ``layers``: the compressed layers (default: what the weights show); one the converter drops
    or folds is skipped with the reason. ``float32`` reuses an earlier ``convert_float32``.
    ``lsh``: a projection module's hashing as LSH_PROJECTION (see ``_lsh``), else as its
    hyperplane matrix."""
    if variant not in VARIANTS:
        raise ExportError(f"TFLite variant {variant!r} is unknown; choose one of {sorted(VARIANTS)}")
    out = check_output(out, TFLITE, flag="TFLite output")   # before any work
    model = model.eval()
    inputs = as_inputs(example_inputs)
    if float32 is None:
        float32 = _last.convert(model, inputs)
    # a ProjectionNet's hashing as LSH_PROJECTION and its seeds, not a matrix (_lsh.py)
    if lsh:
        float32 = _lsh.rewrite(float32, model)
    selection = select_layers(model, inputs, layers)
    if variant == "auto":
        content, storage = _build_auto(float32, model, selection.layers)
    else:
        content = build_variant(float32, variant)
        storage = describe_layers(content, model, selection.layers)
    if variant not in ("float32", "auto"):
        _check_compressed(variant, storage)
    write_bytes_atomic(out, content, kind=TFLITE)
    return TFLiteExport(out, variant, storage, selection.skipped)
