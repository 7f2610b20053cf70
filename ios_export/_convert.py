"""PyTorch -> Core ML ML Program whose weights are stored natively compressed.

Each compressed layer is stored with one of Core ML's constexpr ops, chosen per layer:

- ``joint``     (iOS 18+): ``constexpr_lut_to_sparse`` -> ``constexpr_sparse_to_dense``: a 1-bit
  mask plus n-bit indices of the non-zero weights into a LUT. This is Deep Compression's format.
- ``sparse``    (iOS 16+): ``constexpr_sparse_to_dense``: mask plus fp16 non-zero values.
- ``palettize`` (iOS 16+): ``constexpr_lut_to_dense``: n-bit indices of every weight (zero being
  one LUT entry) into a LUT.

``auto`` picks, per layer, the smallest of those the deployment target can hold (iOS 16/17 have no
joint op, so a pruned layer is usually stored sparse and a dense shared layer palettized). The LUT
is exactly the layer's distinct values (our codebook cast to the weight dtype; zero too when the
tensor is stored dense), padded with unused entries to the next n Core ML allows
({1, 2, 3, 4, 6, 8}; no 3 before iOS 18): a 5-bit codebook takes 6-bit indices.

Choices that keep the weights intact:
- ``weight_threshold=0`` on every config (the default 2048 silently skips small layers), and only
  the layers we compress are named (biases and BatchNorm stay plain).
- ``common::fuse_conv_batchnorm`` and ``common::fuse_conv_scale`` are removed from the pass
  pipeline: folding BatchNorm rescales each output channel of a conv and destroys its codebook.
  BatchNorm is kept as its own op (a per-channel scale and shift; cheap).
- Precision: fp16 by default. Weights are stored as fp16(codebook), the format the Neural Engine
  computes in; fp32 compute would keep the ANE from running the model at all, and fp16
  activations cost LeNet-size models nothing measurable on the PyTorch side. ``precision="fp32"``
  stores fp32 LUTs (bit-exact codebooks) and computes in fp32 on CPU/GPU.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dccore.errors import ExportError
from dccore.outputs import MLPACKAGE, atomic_path, check_output
from exporters import (CompressedLayer, as_inputs, locate_in_trace, locate_op, select_layers,
                       unsupported_op_error)

from ._backend import coremltools, quiet
from ._names import OUTPUT_NAME, coreml_input_names, lut_entries, sanitised_name

TARGETS = ("iOS16", "iOS17", "iOS18")
PRECISIONS = ("fp16", "fp32")
METHODS = ("auto", "joint", "sparse", "palettize", "none")
DEFAULT_TARGET, DEFAULT_PRECISION, DEFAULT_METHOD = "iOS18", "fp16", "auto"
METADATA_KEY = "com.deepcompress.layers"
# Index widths Core ML's LUT ops accept: iOS16's constexpr_lut_to_dense has no 3-bit LUT.
_NBITS = {"iOS16": (1, 2, 4, 6, 8), "iOS17": (1, 2, 4, 6, 8), "iOS18": (1, 2, 3, 4, 6, 8)}
# Converter passes that rewrite weight values (and so would destroy the codebooks).
_WEIGHT_REWRITING_PASSES = ("common::fuse_conv_batchnorm", "common::fuse_conv_scale")
# What each method must leave in front of the layer's compute op (outermost first).
_EXPECTED_CHAIN = {
    "sparse": ("constexpr_sparse_to_dense",),
    "palettize": ("constexpr_lut_to_dense",),
    "joint": ("constexpr_sparse_to_dense", "constexpr_lut_to_sparse"),
}


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is stored in the package, with the payload bytes that implies."""

    name: str
    method: str            # "joint" | "sparse" | "palettize"
    nbits: int | None      # LUT index width (None for sparse)
    lut_entries: int | None
    nnz: int
    size: int
    payload_bytes: int     # mask + indices + values + LUT, before the package's own overhead


@dataclass(frozen=True)
class CoreMLExport:
    path: Path
    target: str
    precision: str
    layers: dict[str, LayerPlan]
    skipped: dict[str, str] = field(default_factory=dict)   # compressed layers not stored as such

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "target": self.target, "precision": self.precision,
                "layers": {k: asdict(v) for k, v in self.layers.items()}, "skipped": self.skipped}


def _lut_bits(n_values: int, target: str) -> int | None:
    return next((b for b in _NBITS[target] if n_values <= 1 << b), None)


def plan_layer(info: CompressedLayer, target: str, precision: str, method: str = "auto") -> LayerPlan:
    """Pick the storage for one layer: the smallest the target can hold, or the one asked for."""
    dtype = np.float16 if precision == "fp16" else np.float32
    vbytes = np.dtype(dtype).itemsize
    # fp16 may merge two close centroids (sorted in float32: see _codebook_lut)
    k = len(np.unique(info.codebook.astype(dtype).astype(np.float32)))
    n, nnz = info.size, info.nnz
    mask_bytes = math.ceil(n / 8)
    options: dict[str, LayerPlan] = {
        "sparse": LayerPlan(info.name, "sparse", None, None, nnz, n, mask_bytes + nnz * vbytes)}
    dense_bits = _lut_bits(k + (1 if nnz < n else 0), target)   # zero takes a LUT entry when dense
    if dense_bits is not None:
        options["palettize"] = LayerPlan(info.name, "palettize", dense_bits, 1 << dense_bits, nnz, n,
                                         math.ceil(n * dense_bits / 8) + (vbytes << dense_bits))
    joint_bits = _lut_bits(max(k, 1), target)
    if target == "iOS18" and joint_bits is not None:
        options["joint"] = LayerPlan(info.name, "joint", joint_bits, 1 << joint_bits, nnz, n,
                                     mask_bytes + math.ceil(nnz * joint_bits / 8)
                                     + (vbytes << joint_bits))
    if method == "auto":
        return min(options.values(), key=lambda p: p.payload_bytes)
    if method not in options:
        why = ("the joint op needs iOS18" if method == "joint" and target != "iOS18"
               else f"it holds {k} distinct values, more than a LUT of 256 entries")
        raise ExportError(f"layer {info.name!r}: cannot store it as {method!r} for {target}: {why}; "
                          "use --coreml-compression auto")
    return options[method]


def _input_dtype(dtype: torch.dtype) -> type:
    """Core ML's type for an input: float32, or int32 for integer inputs (token ids, masks: Core
    ML has no int64 inputs), bool as bool."""
    if dtype.is_floating_point:
        return np.float32
    return np.bool_ if dtype == torch.bool else np.int32


def _convert(ct: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...], target: str,
             precision: str, accept: Callable[[Any], object] = lambda ml: None) -> Any:
    """The converted program. ``accept`` vets a program that came from the fallback route (it
    raises when the program cannot be used, e.g. a weight was rewritten)."""
    traced, log = None, None

    def locate(op: str) -> str | None:
        return (locate_in_trace(model, traced, op) if traced is not None else None) \
            or locate_op(model, inputs, op)

    try:
        with torch.no_grad(), quiet() as log:
            traced = torch.jit.trace(model, inputs)
            out = traced(*inputs)
            if not isinstance(out, torch.Tensor):
                raise ExportError(f"{type(model).__name__} returns {type(out).__name__}; the "
                                  "exporters need a model with one tensor output")
            pipeline = ct.PassPipeline.DEFAULT
            pipeline.remove_passes(list(_WEIGHT_REWRITING_PASSES))
            names = coreml_input_names(model, len(inputs))
            return ct.convert(
                traced,
                inputs=[ct.TensorType(name=n, shape=tuple(t.shape), dtype=_input_dtype(t.dtype))
                        for n, t in zip(names, inputs)],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, target),
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                pass_pipeline=pipeline,
                skip_model_load=True,   # loading compiles the model: macOS only
            )
    except ExportError:
        raise
    except Exception as exc:  # the converters raise many types; map them to the layer and op
        # TorchScript's trace cannot carry some models (a Hugging Face BERT's mask arithmetic
        # meets coremltools' `int` op as a tensor): torch.export with the core-ATen
        # decompositions often can. Only if that fails too, or gives a program whose weights
        # cannot be stored compressed, is the first error the answer.
        try:
            converted = _convert_exported(ct, model, inputs, target, precision)
            accept(converted)
            return converted
        except Exception:  # noqa: BLE001 - the trace's error names the op and layer better
            pass
        raise unsupported_op_error(exc, model, inputs, f"coremltools {ct.__version__}",
                                   said=log.getvalue() if log else "", locate=locate) from exc


def _convert_exported(ct: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...], target: str,
                      precision: str) -> Any:
    """The same conversion from torch.export's program (core-ATen decompositions)."""
    with torch.no_grad(), quiet():
        program = torch.export.export(model.eval(), inputs, strict=False).run_decompositions()
        pipeline = ct.PassPipeline.DEFAULT
        pipeline.remove_passes(list(_WEIGHT_REWRITING_PASSES))
        return ct.convert(
            program, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            pass_pipeline=pipeline, skip_model_load=True)


def _const_hits(program: Any, weight: np.ndarray) -> list[Any]:
    """The program's const ops whose value is exactly ``weight``."""
    return [op for op in program.functions["main"].operations
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
            and op.outputs[0].val.shape == weight.shape
            and np.array_equal(op.outputs[0].val, weight)]


@torch.no_grad()
def _output_ignores(model: nn.Module, inputs: tuple[torch.Tensor, ...], name: str) -> bool:
    """Whether the model's output on ``inputs`` stays bit-identical with weight ``name`` zeroed
    and then doubled (restored after)."""
    weight = model.get_parameter(name) if name in dict(model.named_parameters()) else None
    if weight is None:
        return False
    saved = weight.detach().clone()
    try:
        reference = model(*inputs)
        for trial in (torch.zeros_like(saved), saved * 2 + 1):
            weight.copy_(trial)
            if not torch.equal(model(*inputs), reference):
                return False
        return True
    finally:
        weight.copy_(saved)


def _find_weight_consts(program: Any, expected: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Each layer's weight const op in the converted program, found by its exact value."""
    found = {}
    for name, weight in expected.items():
        hits = _const_hits(program, weight)
        if not hits:
            raise ExportError(f"layer {name!r}: its weight is not a constant of the converted program "
                              "(a converter pass rewrote or split it), so it cannot be stored "
                              "compressed")
        # prefer the one named after it
        hits.sort(key=lambda op: sanitised_name(name) not in op.name)
        found[name] = hits[0]
    return found


def _consumer(const_op: Any) -> tuple[str, str]:
    """(compute op name, input key) that reads the const: stable across compression passes."""
    var = const_op.outputs[0]
    for child in var.child_ops:
        for key, value in child.inputs.items():
            if value is var:
                return child.name, key
    raise ExportError(f"weight {const_op.name!r} is not used by any op of the converted program")


def _producer_chain(program: Any, consumer: tuple[str, str]) -> list[Any]:
    """The constexpr ops that produce the consumer's input, outermost first."""
    op = next(o for o in program.functions["main"].operations if o.name == consumer[0])
    chain, var = [], op.inputs[consumer[1]]
    while var.op is not None and var.op.op_type.startswith("constexpr_"):
        chain.append(var.op)
        inputs = [v for k, v in var.op.inputs.items() if k in ("nonzero_data", "source_val")
                  and v.op is not None and v.op.op_type.startswith("constexpr_")]
        if not inputs:
            break
        var = inputs[0]
    return chain


def _codebook_lut(include_zero: bool, target: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A LUT holding exactly the tensor's distinct values, padded to 2**n entries.

    coremltools' ``mode="unique"`` does this too, but for joint compression it palettizes the
    densified tensor, so zero takes a LUT entry the non-zero indices never use: 64 centroids then
    need 8-bit indices instead of 6. Here zero gets an entry only when the tensor is stored dense.
    """
    def lut_function(val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(val).reshape(-1)
        keep = np.ones(flat.shape, bool) if include_zero else flat != 0
        # Sort in float32 (exact for fp16 values): numpy 2.4's AVX-512 float16 sort returns
        # unsorted output for some weight tensors on AVX512_ICL CPUs, which breaks np.unique.
        wide = flat.astype(np.float32)
        values = np.unique(wide[keep])
        nbits = _lut_bits(max(len(values), 1), target)
        if nbits is None:
            raise ExportError(f"a weight holds {len(values)} distinct values; a LUT holds 256")
        lut = np.zeros(1 << nbits, dtype=flat.dtype)
        lut[: len(values)] = values
        indices = np.zeros(flat.shape, dtype=np.uint8)   # zeros (masked out when sparse) -> 0
        indices[keep] = np.searchsorted(values, wide[keep])
        return lut, indices
    return lut_function


def _compress(mlmodel: Any, target: str, plans: Mapping[str, LayerPlan],
              consumers: Mapping[str, tuple[str, str]], consts: Mapping[str, Any]) -> Any:
    import coremltools.optimize.coreml as cto  # noqa: PLC0415

    to_prune = {consts[n].name for n, p in plans.items() if p.method in ("sparse", "joint")}
    if to_prune:
        cfg = cto.OptimizationConfig(op_name_configs={
            c: cto.OpThresholdPrunerConfig(threshold=0.0, minimum_sparsity_percentile=0.0,
                                           weight_threshold=0) for c in to_prune})
        with quiet():
            mlmodel = cto.prune_weights(mlmodel, cfg)
    program = mlmodel._mil_program
    to_palettize = {}
    for name, plan in plans.items():
        if plan.method == "palettize":
            to_palettize[consts[name].name] = plan
        elif plan.method == "joint":   # palettize the sparse op's non-zero values
            sparse_op = _producer_chain(program, consumers[name])[0]
            to_palettize[sparse_op.nonzero_data.op.name] = plan
    if to_palettize:
        cfg = cto.OptimizationConfig(op_name_configs={
            c: cto.OpPalettizerConfig(mode="custom", granularity="per_tensor", weight_threshold=0,
                                      lut_function=_codebook_lut(p.method == "palettize", target))
            for c, p in to_palettize.items()})
        with quiet():
            mlmodel = cto.palettize_weights(
                mlmodel, cfg, joint_compression=any(p.method == "joint" for p in plans.values()))
    return mlmodel


def _check_chains(program: Any, plans: Mapping[str, LayerPlan],
                  consumers: Mapping[str, tuple[str, str]]) -> None:
    """Every planned layer must sit behind the constexpr ops its method implies: coremltools logs
    and moves on when it declines to compress a tensor, so we check instead of trusting it."""
    for name, plan in plans.items():
        chain = _producer_chain(program, consumers[name])
        got = tuple(op.op_type for op in chain)
        want = _EXPECTED_CHAIN[plan.method]
        if got != want:
            stored = " <- ".join(got) or "a dense const"
            raise ExportError(f"layer {name!r}: coremltools stored it as {stored} instead of "
                              f"{' <- '.join(want)}; the layer is not compressed")
        if plan.nbits is not None:
            entries = lut_entries(chain[-1].lut.val)
            if entries != plan.lut_entries:
                raise ExportError(f"layer {name!r}: LUT has {entries} entries, expected "
                                  f"{plan.lut_entries}")


def _save(mlmodel: Any, out: Path) -> None:
    with atomic_path(out, suffix=".tmp.mlpackage", kind=MLPACKAGE) as tmp, quiet():  # the suffix: coremltools
        mlmodel.save(str(tmp))


def export_coreml(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                  out: str | os.PathLike[str], *,
                  layers: Iterable[str] | Mapping[str, CompressedLayer] | None = None,
                  target: str = DEFAULT_TARGET, precision: str = DEFAULT_PRECISION,
                  method: str = DEFAULT_METHOD) -> CoreMLExport:
    """Convert ``model`` to ``out`` (a ``.mlpackage``) with every compressed layer stored natively
    compressed. ``method="none"`` exports it uncompressed (the dense baseline).

    ``example_inputs``: one example of each input (a tensor, or a tuple of them; integer inputs
    become int32). ``layers`` defaults to what the weights show (see
    ``exporters.compressed_layers``); one the converter drops or folds is skipped with the reason.
    Raises ExportError naming the layer and op when the converter rejects an op.
    """
    if target not in TARGETS:
        raise ExportError(f"Core ML target {target!r} is not supported; choose one of {TARGETS}")
    if precision not in PRECISIONS:
        raise ExportError(f"Core ML precision {precision!r}: choose one of {PRECISIONS}")
    if method not in METHODS:
        raise ExportError(f"Core ML compression {method!r}: choose one of {METHODS}")
    out = check_output(out, MLPACKAGE, flag="Core ML output")   # before any work
    if out.suffix != ".mlpackage":
        raise ExportError(f"Core ML output {out} must end with .mlpackage (an ML Program package)")
    ct = coremltools()
    model = model.eval()
    inputs = as_inputs(example_inputs)
    selection = select_layers(model, inputs, layers) if method != "none" else None
    plans = {} if selection is None else {
        n: plan_layer(info, target, precision, method) for n, info in selection.layers.items()}
    dtype = np.float16 if precision == "fp16" else np.float32
    state = model.state_dict()
    expected = {n: state[n].detach().cpu().numpy().astype(dtype) for n in plans}
    skipped = dict(selection.skipped) if selection else {}

    def accept(ml: Any) -> None:
        # a weight whose values the output never depends on (a BERT's pooler under a mean-pooling
        # wrapper) is dropped by torch.export's dead-code elimination: skipped, with the reason
        for name in [n for n in expected if not _const_hits(ml._mil_program, expected[n])]:
            if not _output_ignores(model, inputs, name):
                break          # _find_weight_consts names it
            del expected[name], plans[name]
            skipped[name] = "the output does not depend on it: the converter removed it"
        _find_weight_consts(ml._mil_program, expected)

    mlmodel = _convert(ct, model, inputs, target, precision, accept=accept)
    if plans:
        consts = _find_weight_consts(mlmodel._mil_program, expected)
        consumers = {n: _consumer(op) for n, op in consts.items()}
        mlmodel = _compress(mlmodel, target, plans, consumers, consts)
        _check_chains(mlmodel._mil_program, plans, consumers)
    mlmodel.short_description = (f"{type(model).__name__} exported by deepcompress "
                                 f"({'dense' if not plans else 'compressed'}, {precision}, {target})")
    mlmodel.user_defined_metadata[METADATA_KEY] = json.dumps(
        {n: p.method for n, p in plans.items()}, sort_keys=True)
    _save(mlmodel, out)
    return CoreMLExport(out, target, precision, plans, skipped)
