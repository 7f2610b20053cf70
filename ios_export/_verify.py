"""Check a saved ``.mlpackage`` on any OS: decode every weight from the program and compare.

The package is read back from disk (its spec and ``weight.bin``, through coremltools' MIL proto
loader and Apple's blob reader); the constexpr ops are then evaluated here, with numpy, from their
definitions in the Core ML spec (MIL ops reference, iOS 16 and iOS 18 ``constexpr_*``):

- ``constexpr_lut_to_dense``:   lut[indices]  (iOS16: packed n-bit indices, LSB first)
- ``constexpr_sparse_to_dense``: zeros, with ``nonzero_data`` scattered where ``mask`` is 1
- ``constexpr_lut_to_sparse``:  (mask, lut[indices of the non-zero entries])
- ``constexpr_cast``:           a dtype cast

Each expected layer must equal one decoded weight exactly (same shape, same values in the weight
dtype) and that weight must come from at least one constexpr op, i.e. be stored compressed. An
embedding table may carry extra rows after ours (the exporter pads one so that its grouped LUTs
tile it) when only ``gather`` ops read it: no valid index reaches them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dccore.errors import ExportError
from exporters import as_inputs

from ._backend import coremltools, quiet
from ._names import OUTPUT_NAME, lut_entries, sanitised_name


@dataclass(frozen=True)
class LayerCheck:
    name: str
    match: bool                 # decoded == ours cast to the weight dtype, exactly
    compressed: bool            # produced by constexpr ops, not a dense const
    storage: str                # e.g. "constexpr_lut_to_sparse -> constexpr_sparse_to_dense"
    dtype: str
    max_abs_diff: float | None  # vs ours in float32 (the fp16 rounding); None if not found
    lut_entries: int | None = None
    nnz: int | None = None
    luts: int | None = None
    pad_rows: int = 0           # rows after ours in a gathered table (never read)


@dataclass(frozen=True)
class CoreMLCheck:
    path: str
    layers: dict[str, LayerCheck] = field(default_factory=dict)
    error: str = ""             # why the package could not be read, if it could not
    # each matched layer's weight as decoded from the package (our rows of a padded table)
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def weights_match(self) -> bool:
        return bool(self.layers) and all(c.match for c in self.layers.values())

    @property
    def all_compressed(self) -> bool:
        return bool(self.layers) and all(c.compressed for c in self.layers.values())

    @property
    def ok(self) -> bool:
        return self.weights_match and self.all_compressed

    def to_dict(self) -> dict[str, Any]:
        return {"weights_match": self.weights_match, "all_compressed": self.all_compressed,
                "layers": {k: asdict(v) for k, v in self.layers.items()},
                **({"error": self.error} if self.error else {})}


# ---- decoders, one per constexpr op -------------------------------------------------------------

def _unpack(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """n-bit unsigned integers packed little-endian (first element in the lowest bits)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")
    if bits.size < count * nbits:
        raise ExportError(f"packed data holds {bits.size} bits, {count * nbits} needed")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.int64)
    return bits @ (1 << np.arange(nbits, dtype=np.int64))


def _lut_lookup(lut: np.ndarray, indices: np.ndarray, coords: tuple[np.ndarray, ...],
                shape: tuple[int, ...]) -> np.ndarray:
    """iOS18 LUT: shape (groups per axis..., entries, vector). ``coords`` are the positions in
    the dense tensor of each index, which say the group."""
    if lut.shape[-1] != 1:
        raise ExportError(f"vector palettization (vector size {lut.shape[-1]}) is not decoded")
    groups = lut.shape[:-2]
    if len(groups) != len(shape):
        raise ExportError(f"LUT of shape {lut.shape} does not fit a weight of shape {shape}")
    block = [s // g for s, g in zip(shape, groups)]
    group_id = np.ravel_multi_index(tuple(c // b for c, b in zip(coords, block)), groups)
    flat = lut.reshape(math.prod(groups), lut.shape[-2])
    return flat[group_id, np.asarray(indices, dtype=np.int64)]


def _lut_to_dense(ins: Mapping[str, Any]) -> list[np.ndarray]:
    lut, indices = np.asarray(ins["lut"]), np.asarray(ins["indices"])
    if "shape" in ins and ins["shape"] is not None:   # iOS16: 1-D LUT, packed uint8 indices
        shape = tuple(int(d) for d in ins["shape"])
        nbits = int(round(math.log2(lut.shape[0])))
        return [lut[_unpack(indices, nbits, math.prod(shape))].reshape(shape)]
    shape = indices.shape
    coords = np.unravel_index(np.arange(indices.size), shape)
    return [_lut_lookup(lut, indices.ravel(), coords, shape).reshape(shape)]


def _sparse_to_dense(ins: Mapping[str, Any]) -> list[np.ndarray]:
    values, mask = np.asarray(ins["nonzero_data"]), np.asarray(ins["mask"])
    if "shape" in ins and ins["shape"] is not None:   # iOS16: packed 1-bit mask
        shape = tuple(int(d) for d in ins["shape"])
        mask = _unpack(mask, 1, math.prod(shape)).reshape(shape)
    mask = mask.astype(bool)
    if int(mask.sum()) != values.size:
        raise ExportError(f"sparse weight: mask has {int(mask.sum())} ones for {values.size} values")
    dense = np.zeros(mask.shape, dtype=values.dtype)
    dense[mask] = values.ravel()   # C order, as the spec defines it
    return [dense]


def _lut_to_sparse(ins: Mapping[str, Any]) -> list[np.ndarray]:
    mask = np.asarray(ins["indices_mask"]).astype(bool)
    indices = np.asarray(ins["indices_nonzero_data"]).ravel()
    coords = np.nonzero(mask)
    if coords[0].size != indices.size:
        raise ExportError(f"lut_to_sparse: mask has {coords[0].size} ones for {indices.size} indices")
    return [mask.astype(np.uint8), _lut_lookup(np.asarray(ins["lut"]), indices, coords, mask.shape)]


def _cast(ins: Mapping[str, Any]) -> list[np.ndarray]:
    return [np.asarray(ins["source_val"]).astype(str(ins["output_dtype"]).replace("fp", "float"))]


_DECODERS = {
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_sparse_to_dense": _sparse_to_dense,
    "constexpr_lut_to_sparse": _lut_to_sparse,
    "constexpr_cast": _cast,
}


# ---- reading the package ------------------------------------------------------------------------

def _model_dir(package: Path) -> Path:
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    return package / "Data" / Path(manifest["itemInfoEntries"][root]["path"]).parent


def load_program(package: str | os.PathLike[str]) -> Any:
    """The package's MIL program, read from disk (spec + weight blobs)."""
    package = Path(package)
    if not (package / "Manifest.json").is_file():
        raise ExportError(f"{package} is not an .mlpackage (no Manifest.json)")
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load  # noqa: PLC0415
    with quiet():
        try:
            spec = ct.utils.load_spec(str(package))
        except Exception as exc:  # protobuf raises its own DecodeError
            raise ExportError(f"{package}: model spec is unreadable ({exc})") from exc
        if spec.WhichOneof("Type") != "mlProgram":
            raise ExportError(f"{package} holds a {spec.WhichOneof('Type')} model, not an ML Program")
        try:
            return load(spec, spec.specificationVersion, str(_model_dir(package) / "weights"))
        except Exception as exc:  # the loader checks each op as it rebuilds it (mask vs data, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{package}: program or weights are corrupt ({first})") from exc


@dataclass
class _Weight:
    var: str
    value: np.ndarray
    chain: list[str]
    lut_entries: int | None = None
    luts: int | None = None
    readers: set[str] = field(default_factory=set)   # op types of the compute ops that read it


def decoded_weights(program: Any) -> list[_Weight]:
    """Every tensor constant (rank >= 2) a compute op reads, decoded through its constexpr ops."""
    values: dict[str, np.ndarray] = {}
    chains: dict[str, list[str]] = {}
    luts: dict[str, tuple[int, int]] = {}
    read: dict[str, _Weight] = {}
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            continue
        if op.op_type.startswith("constexpr_"):
            decoder = _DECODERS.get(op.op_type)
            inputs = {k: (values[v.name] if v.name in values else v.val) for k, v in op.inputs.items()}
            if decoder is None or any(v is None for k, v in inputs.items() if k != "shape"):
                continue   # a format we do not decode: its layer will show as not matching
            upstream = [chains[v.name] for v in op.inputs.values() if v.name in chains]
            chain = max(upstream, key=len, default=[]) + [op.op_type]
            lut = inputs.get("lut")
            try:
                decoded = decoder(inputs)
            except (ExportError, ValueError, IndexError):
                continue   # undecodable (corrupt): the layer will show as not matching
            for out, arr in zip(op.outputs, decoded):
                values[out.name], chains[out.name] = arr, chain
                if lut is not None:
                    count = int(np.prod(np.shape(lut)[:-2])) if np.ndim(lut) > 1 else 1
                    luts[out.name] = (lut_entries(lut), count)
                elif any(v.name in luts for v in op.inputs.values()):
                    luts[out.name] = next(luts[v.name] for v in op.inputs.values() if v.name in luts)
            continue
        for v in op.inputs.values():
            vars_ = v if isinstance(v, (list, tuple)) else [v]
            for var in vars_:
                if var.name in values:
                    entries, count = luts.get(var.name, (None, None))
                    read.setdefault(var.name, _Weight(var.name, values[var.name], chains[var.name],
                                                      entries, count))
                elif var.op is not None and var.op.op_type == "const" and np.ndim(var.val) >= 2:
                    read.setdefault(var.name, _Weight(var.name, np.asarray(var.val), []))
                if var.name in read:
                    read[var.name].readers.add(op.op_type)
    return list(read.values())


def package_weights(package: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every weight tensor (rank >= 2) a compute op of ``package`` reads, decoded, by the name of
    the variable the op reads (for packages made by any tool: coremltools' own palettizer too)."""
    return {w.var: w.value for w in decoded_weights(load_program(package))}


def _padded_table(w: _Weight, ours: np.ndarray) -> bool:
    """``w`` is ``ours`` with rows appended that nothing can read: only gathers read it."""
    return (w.readers == {"gather"} and w.value.ndim == ours.ndim >= 2
            and w.value.shape[1:] == ours.shape[1:] and w.value.shape[0] > ours.shape[0])


def verify_coreml(package: str | os.PathLike[str], expected: Mapping[str, np.ndarray]) -> CoreMLCheck:
    """Compare each expected weight (name -> our float32 weights) with the package's weights."""
    try:
        weights = decoded_weights(load_program(package))
    except ExportError as exc:
        missing = {n: LayerCheck(n, False, False, "unreadable", "-", None) for n in expected}
        return CoreMLCheck(str(package), missing, error=str(exc))
    checks, decoded = {}, {}
    for name, ours in expected.items():
        ours = np.asarray(ours, dtype=np.float32)
        same_shape = [w for w in weights if w.value.shape == ours.shape
                      or _padded_table(w, ours)]
        exact = [w for w in same_shape if np.array_equal(w.value[:ours.shape[0]],
                                                         ours.astype(w.value.dtype))]
        pool = exact or same_shape
        if not pool:
            checks[name] = LayerCheck(name, False, False, "not found", "-", None)
            continue
        # named after it first, then compressed
        pool.sort(key=lambda w: (sanitised_name(name) not in w.var, not w.chain))
        w = pool[0]
        value = w.value[:ours.shape[0]]
        if exact:
            decoded[name] = value
        diff = float(np.max(np.abs(value.astype(np.float32) - ours), initial=0.0))
        checks[name] = LayerCheck(
            name, bool(exact), bool(w.chain), " -> ".join(w.chain) or "const (dense)",
            str(w.value.dtype), diff, w.lut_entries, int(np.count_nonzero(value)), w.luts,
            w.value.shape[0] - ours.shape[0])
    return CoreMLCheck(str(package), checks, weights=decoded)


def coreml_outputs(package: str | os.PathLike[str], inputs: torch.Tensor | Sequence[torch.Tensor],
                   compute_units: str = "ALL") -> np.ndarray:
    """Run the package with Core ML on each example of ``inputs`` (one tensor per model input, in
    the package's input order), one at a time (macOS only: Core ML compiles and runs models
    through the OS; coremltools cannot predict on Linux)."""
    import sys  # noqa: PLC0415
    if sys.platform != "darwin":
        raise ExportError("Core ML predictions need macOS; on this OS the package is checked by "
                          "decoding its weights (verify_coreml)")
    ct = coremltools()
    model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
    names = [i.name for i in model.get_spec().description.input]
    arrays = [t.detach().cpu().numpy() for t in as_inputs(inputs)]
    if len(names) != len(arrays):
        raise ExportError(f"{package} takes {len(names)} inputs ({', '.join(names)}); "
                          f"{len(arrays)} were given")
    arrays = [a.astype(np.float32 if a.dtype.kind == "f" else np.int32 if a.dtype.kind in "iu"
                       else a.dtype) for a in arrays]
    outs = []
    for i in range(arrays[0].shape[0]):
        y = np.asarray(model.predict({n: a[i:i + 1] for n, a in zip(names, arrays)})[OUTPUT_NAME])
        outs.append(y.reshape(y.shape[1:]) if y.ndim > 1 and y.shape[0] == 1 else y)
    return np.stack(outs)
