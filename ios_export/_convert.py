"""PyTorch -> Core ML ML Program whose weights are stored natively compressed.

Each compressed layer is stored with one of Core ML's constexpr ops, chosen per layer:

- ``joint``     (iOS 18+): ``constexpr_lut_to_sparse`` -> ``constexpr_sparse_to_dense``: a 1-bit
  mask plus n-bit indices of the non-zero weights into a LUT. This is Deep Compression's format.
- ``sparse``    (iOS 16+): ``constexpr_sparse_to_dense``: mask plus fp16 non-zero values.
- ``palettize`` (iOS 16+): ``constexpr_lut_to_dense``: n-bit indices of every weight (zero being
  one LUT entry) into a LUT.

A LUT is one per tensor, or (iOS 18) one per group of output rows: the ``share`` stage's
``group_size`` codebooks are stored as they are, each group's LUT exactly its values. Core ML's
groups are equal and must tile the rows: an embedding table (read by a ``gather``) whose rows do
not divide is padded with copies of its last row, which no valid token id reads; any other layer
takes the largest group size that divides both (more LUTs, each still exact).

``auto`` picks, per layer, the smallest of those the deployment target can hold (iOS 16/17 have no
joint op and no grouped LUTs), and says why. The LUT is exactly the layer's (or group's) distinct
values (our codebook cast to the weight dtype; zero too when the tensor is stored dense), padded
with unused entries to the next width Core ML allows (``dccore.formats.COREML_LUT_BITS``; no 3
before iOS 18): a 5-bit codebook takes 6-bit indices, so a recipe that targets Core ML asks
``share`` for widths it holds (``[export] targets = ["coreml"]``).

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

import copy
import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dccore.errors import ExportError
from dccore.formats import COREML_LUT_BITS
from dccore.outputs import MLPACKAGE, atomic_path, check_output
from exporters import (CompressedLayer, as_inputs, locate_in_trace, locate_op, select_layers,
                       unsupported_op_error)

from ._backend import coremltools, quiet
from ._names import OUTPUT_NAME, coreml_input_names, lut_entries, sanitised_name

TARGETS = ("iOS16", "iOS17", "iOS18")
PRECISIONS = ("fp16", "fp32")
METHODS = ("auto", "joint", "sparse", "palettize", "none")
DEFAULT_TARGET, DEFAULT_PRECISION, DEFAULT_METHOD = "iOS18", "fp16", "auto"
# Index widths Core ML's LUT ops accept: iOS16's constexpr_lut_to_dense has no 3-bit LUT.
_NO3 = tuple(b for b in COREML_LUT_BITS if b != 3)
_NBITS = {"iOS16": _NO3, "iOS17": _NO3, "iOS18": COREML_LUT_BITS}
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
    lut_entries: int | None   # entries of each LUT
    nnz: int
    size: int
    payload_bytes: int     # mask + indices + values + LUTs, before the package's own overhead
    group_size: int | None = None   # rows per LUT (None: one LUT for the tensor)
    luts: int | None = None         # LUTs stored (None for sparse)
    pad_rows: int = 0      # rows appended to an embedding table so its groups tile it
    reason: str = ""       # why this storage, in words (for the report)


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


@dataclass(frozen=True)
class _Layout:
    """The tensor cut into LUT groups: rows per group (None: one), rows appended, and the most
    distinct values any group holds (zero counted or not)."""

    group_size: int | None
    pad_rows: int
    groups: int
    distinct: int            # counting zero where a group holds one (dense palettization)
    distinct_nonzero: int    # the non-zero values (joint: the mask carries the zeros)
    size: int
    nnz: int


def _layout(weight: np.ndarray, group_size: int | None, pad_rows: int = 0) -> _Layout:
    """Distinct values per group of ``group_size`` rows (axis 0), the tensor padded with
    ``pad_rows`` copies of its last row. Counted in float32 (exact for fp16 values; numpy's
    AVX-512 float16 sort is unreliable, see _codebook_lut)."""
    rows = weight.reshape(weight.shape[0], -1).astype(np.float32)
    if pad_rows:
        rows = np.concatenate([rows, np.repeat(rows[-1:], pad_rows, axis=0)])
    gs = group_size or rows.shape[0]
    groups = rows.reshape(rows.shape[0] // gs, -1)
    ordered = np.sort(groups, axis=1)
    distinct = 1 + np.count_nonzero(np.diff(ordered, axis=1), axis=1)
    nonzero = distinct - (groups == 0).any(axis=1)
    return _Layout(group_size, pad_rows, groups.shape[0], int(distinct.max(initial=0)),
                   int(nonzero.max(initial=0)), int(rows.size), int(np.count_nonzero(rows)))


def _layouts(weight: np.ndarray, group_size: int | None, target: str, gathered: bool) -> list[_Layout]:
    """One LUT for the tensor, and (iOS 18) one per ``group_size`` rows as the share stage cut
    them: padded to whole groups for an embedding table, else the largest group size that
    divides both the rows and ours (each of Core ML's groups then lies inside one of ours)."""
    out = [_layout(weight, None)]
    rows = weight.shape[0]
    if target != "iOS18" or not group_size or group_size >= rows:
        return out
    if rows % group_size == 0:
        out.append(_layout(weight, group_size))
    elif gathered:
        out.append(_layout(weight, group_size, -rows % group_size))
    elif math.gcd(rows, group_size) > 1:
        out.append(_layout(weight, math.gcd(rows, group_size)))
    return out


def _describe(plan: LayerPlan) -> str:
    if plan.method == "sparse":
        return f"sparse: mask + {plan.nnz:,} fp16 values"
    luts = "1 LUT" if plan.luts == 1 else f"{plan.luts:,} LUTs of {plan.group_size} rows"
    what = f"{plan.method}: {plan.nbits}-bit indices into {luts}"
    if plan.pad_rows:
        what += f" (+{plan.pad_rows} copied rows no token id reads)"
    return what


def plan_layer(info: CompressedLayer, target: str, precision: str, method: str = "auto", *,
               weight: np.ndarray | None = None, gathered: bool = False) -> LayerPlan:
    """Pick the storage for one layer: the smallest the target can hold exactly, or the smallest
    of the method asked for. ``weight`` (default: rebuilt from ``info``'s codebook as one LUT)
    lets grouped LUTs be planned for a layer with ``info.group_size``; ``gathered``: the weight
    is an embedding table (rows may be padded)."""
    dtype = np.float16 if precision == "fp16" else np.float32
    vbytes = np.dtype(dtype).itemsize
    n, nnz = info.size, info.nnz
    if weight is None:   # one LUT: the codebook is the tensor's distinct values
        # fp16 may merge two close centroids (sorted in float32: see _codebook_lut)
        k = len(np.unique(info.codebook.astype(dtype).astype(np.float32)))
        layouts = [_Layout(None, 0, 1, k + (1 if nnz < n else 0), k, n, nnz)]
    else:
        layouts = _layouts(np.asarray(weight).astype(dtype), getattr(info, "group_size", None),
                           target, gathered)
    options: list[LayerPlan] = [
        LayerPlan(info.name, "sparse", None, None, nnz, n, math.ceil(n / 8) + nnz * vbytes)]
    for lay in layouts:
        dense_bits = _lut_bits(lay.distinct, target)
        if dense_bits is not None:
            options.append(LayerPlan(
                info.name, "palettize", dense_bits, 1 << dense_bits, nnz, n,
                math.ceil(lay.size * dense_bits / 8) + lay.groups * (vbytes << dense_bits),
                lay.group_size, lay.groups, lay.pad_rows))
        joint_bits = _lut_bits(max(lay.distinct_nonzero, 1), target)
        if target == "iOS18" and joint_bits is not None:
            options.append(LayerPlan(
                info.name, "joint", joint_bits, 1 << joint_bits, nnz, n,
                math.ceil(lay.size / 8) + math.ceil(lay.nnz * joint_bits / 8)
                + lay.groups * (vbytes << joint_bits), lay.group_size, lay.groups, lay.pad_rows))
    pool = options if method == "auto" else [p for p in options if p.method == method]
    if not pool:
        most = min(lay.distinct_nonzero for lay in layouts)
        why = ("the joint op needs iOS18" if method == "joint" and target != "iOS18"
               else f"a LUT of 256 entries cannot hold it ({most} distinct values in its "
                    "smallest layout)")
        raise ExportError(f"layer {info.name!r}: cannot store it as {method!r} for {target}: {why}; "
                          "use --coreml-method auto")
    best = min(pool, key=lambda p: p.payload_bytes)
    others = sorted((p for p in options if p is not best), key=lambda p: p.payload_bytes)
    reason = (f"{_describe(best)}, {best.payload_bytes:,} B"
              + (" (asked for)" if method != "auto" else " (smallest exact form)")
              + "".join(f"; {_describe(p)} {p.payload_bytes:,} B" for p in others[:2]))
    if best.nbits is not None:
        held = next(lay for lay in layouts if (lay.group_size, lay.pad_rows)
                    == (best.group_size, best.pad_rows))
        values = held.distinct if best.method == "palettize" else held.distinct_nonzero
        need = max(1, math.ceil(math.log2(max(values, 1))))
        if need < best.nbits:
            reason += (f"; {values} values per LUT need {need}-bit indices, stored as "
                       f"{best.nbits} (the next width Core ML holds)")
    return dataclasses.replace(best, reason=reason)


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


def _codebook_lut(include_zero: bool, nbits: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A LUT holding exactly the tensor's (or, grouped, the group's: coremltools calls it once
    per group) distinct values, padded to 2**nbits entries (every group's LUT the same size).

    coremltools' ``mode="unique"`` does this too, but for joint compression it palettizes the
    densified tensor, so zero takes a LUT entry the non-zero indices never use (64 centroids
    then need 8-bit indices instead of 6), and it sorts fp16 values (see below). Here zero gets
    an entry only when the tensor is stored dense.
    """
    def lut_function(val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(val).reshape(-1)
        keep = np.ones(flat.shape, bool) if include_zero else flat != 0
        # Sort in float32 (exact for fp16 values): numpy 2.4's AVX-512 float16 sort returns
        # unsorted output for some weight tensors on AVX512_ICL CPUs, which breaks np.unique.
        wide = flat.astype(np.float32)
        values = np.unique(wide[keep])
        if len(values) > 1 << nbits:
            raise ExportError(f"a weight group holds {len(values)} distinct values; its "
                              f"{nbits}-bit LUT holds {1 << nbits}")
        lut = np.zeros(1 << nbits, dtype=flat.dtype)
        lut[: len(values)] = values
        indices = np.zeros(flat.shape, dtype=np.uint8)   # zeros (masked out when sparse) -> 0
        indices[keep] = np.searchsorted(values, wide[keep])
        return lut, indices
    return lut_function


def _palettizer_config(cto: Any, plan: LayerPlan) -> Any:
    lut = _codebook_lut(plan.method == "palettize", plan.nbits)
    if plan.group_size is None:
        return cto.OpPalettizerConfig(mode="custom", granularity="per_tensor", weight_threshold=0,
                                      lut_function=lut)
    return cto.OpPalettizerConfig(mode="custom", granularity="per_grouped_channel",
                                  group_size=plan.group_size, channel_axis=0, weight_threshold=0,
                                  lut_function=lut)


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
            c: _palettizer_config(cto, p) for c, p in to_palettize.items()})
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
            lut = chain[-1].lut.val
            entries, luts = lut_entries(lut), int(np.prod(np.shape(lut)[:-2])) if np.ndim(lut) > 1 else 1
            if (entries, luts) != (plan.lut_entries, plan.luts):
                raise ExportError(f"layer {name!r}: {luts} LUTs of {entries} entries, expected "
                                  f"{plan.luts} of {plan.lut_entries}")


def _gathered(model: nn.Module, name: str) -> bool:
    """Whether weight ``name`` is an embedding table that only its own lookup reads (a table tied
    to an output layer is not: rows appended to it would change that layer's output)."""
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if not isinstance(owner, nn.Embedding) or name.rpartition(".")[2] != "weight":
        return False
    return sum(p is owner.weight for _, p in model.named_parameters(remove_duplicate=False)) == 1


def _padded(model: nn.Module, plans: Mapping[str, LayerPlan]) -> nn.Module:
    """A copy of ``model`` whose embedding tables have the rows their plans append (copies of
    the last row: no new values, so no LUT entry, and no valid token id reads them); the model
    itself when no plan pads."""
    pads = {n: p.pad_rows for n, p in plans.items() if p.pad_rows}
    if not pads:
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, pad in pads.items():
            table = model.get_submodule(name.rpartition(".")[0])
            weight = table.weight
            table.weight = nn.Parameter(torch.cat([weight, weight[-1:].expand(pad, -1)]),
                                        requires_grad=weight.requires_grad)
            table.num_embeddings = table.weight.shape[0]
    return model


def _short_names(ct: Any, mlmodel: Any) -> Any:
    """The same program with every internal variable and op named ``a``, ``b``, ... ``aa``, ...
    (the model's inputs and outputs keep theirs). The converter's names ("fc1_weight_to_fp16_
    sparsified_nonzero_data_0_palettized_0", each written where it is defined and where it is
    read) are a third of a small package's program. Renamed in the spec, where every reference
    is a name; the verifier's loader rebuilds the program from it, so a dangling one fails there.
    """
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram" or list(spec.mlProgram.functions) != ["main"]:
        return mlmodel
    main = spec.mlProgram.functions["main"]
    keep = {i.name for i in main.inputs}
    blocks = list(main.block_specializations.values())
    names: dict[str, str] = {}

    def short(i: int) -> str:
        letters = ""
        while True:
            letters = chr(ord("a") + i % 26) + letters
            i = i // 26 - 1
            if i < 0:
                return letters

    def collect(block: Any) -> None:
        keep.update(block.outputs)
        for op in block.operations:
            for var in op.outputs:
                if var.name not in keep and var.name not in names:
                    names[var.name] = short(len(names))
            for inner in op.blocks:
                collect(inner)

    def rename(block: Any) -> None:
        for op in block.operations:
            for var in op.outputs:
                var.name = names.get(var.name, var.name)
            for argument in op.inputs.values():
                for binding in argument.arguments:
                    if binding.HasField("name"):
                        binding.name = names.get(binding.name, binding.name)
            if "name" in op.attributes and op.outputs:
                op.attributes["name"].immediateValue.tensor.strings.values[0] = op.outputs[0].name
            for inner in op.blocks:
                rename(inner)

    for block in blocks:
        collect(block)
    for block in blocks:
        block.outputs[:] = [names.get(n, n) for n in block.outputs]
        rename(block)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


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
        raise ExportError(f"Core ML method {method!r}: choose one of {METHODS}")
    out = check_output(out, MLPACKAGE, flag="Core ML output")   # before any work
    if out.suffix != ".mlpackage":
        raise ExportError(f"Core ML output {out} must end with .mlpackage (an ML Program package)")
    ct = coremltools()
    model = model.eval()
    inputs = as_inputs(example_inputs)
    selection = select_layers(model, inputs, layers) if method != "none" else None
    dtype = np.float16 if precision == "fp16" else np.float32
    state = model.state_dict()
    plans = {} if selection is None else {
        n: plan_layer(info, target, precision, method, weight=state[n].detach().cpu().numpy(),
                      gathered=_gathered(model, n))
        for n, info in selection.layers.items()}
    model = _padded(model, plans)
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
    with quiet():
        mlmodel = _short_names(ct, mlmodel)
    mlmodel.short_description = (f"{type(model).__name__} exported by deepcompress "
                                 f"({'dense' if not plans else 'compressed'}, {precision}, {target})")
    _save(mlmodel, out)
    return CoreMLExport(out, target, precision, plans, skipped)
