"""pack / load / inspect: the public verbs over the section codecs."""
from __future__ import annotations

import json
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dccore.outputs import DCZ, write_bytes_atomic
from dccore.errors import ContainerError
from . import _format, _streams, _tensor
from ._format import TAG_END, TAG_META, TAG_TENSOR, Reader
from ._streams import CODERS
from ._tensor import TensorRow

PLAIN_DTYPES = ("float32", "float16")   # "float32": a tensor's own dtype (exact)
SPARSE_OPTIONS = ("bits", "index_bits", "group_size", "codebook_dtype")
# the integer ones: (name, least, most, whether True/False pass as 1/0)
_INT_OPTIONS = (("bits", 0, 16, True), ("index_bits", 1, _tensor.MAX_INDEX_BITS, True),
                ("group_size", 1, _tensor.MAX_GROUP_SIZE, False))
# A .dcz file shrinks fp32 weights 10-100x; allowing 4096x (and at least 256 MiB) leaves room
# for heavily pruned layers while refusing headers that claim terabytes.
EXPANSION_LIMIT = 4096
MIN_DECODE_LIMIT = 2**28
MAX_META_BYTES = 2**24  # inflated metadata; refuses deflate bombs
# A recipe nests 5-6 levels; the limit keeps json (which recurses) far from Python's stack.
MAX_META_DEPTH = 32
MAX_TENSORS = 2**16     # an on-device model has hundreds; bounds the per-tensor overhead


@dataclass(frozen=True)
class PackReport:
    """What :func:`pack` wrote. ``bytes`` is the file's size on disk."""

    path: Path
    bytes: int
    dense_bytes: int             # fp32 bytes of every floating tensor
    ratio: float                 # dense_bytes / bytes
    coder: str
    tensors: tuple[TensorRow, ...]

    def as_dict(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "dense_bytes": self.dense_bytes,
                "ratio": self.ratio, "coder": self.coder,
                "tensors": [t.as_dict() for t in self.tensors]}


@dataclass(frozen=True)
class LayerInfo:
    """A tensor stored sparse: its codebook (None when non-zeros are stored raw) and sizes.

    Grouped storage ("grouped": a codebook per ``group_size`` rows) keeps ``codebook`` 1-D: the
    groups' codebooks one after another, each ascending, group g's ``codebook_sizes[g]`` entries
    (:meth:`group_codebooks` splits them; a group without non-zeros has none). Every value of
    the tensor is in ``codebook``, grouped or not."""

    name: str
    shape: tuple[int, ...]
    bits: int | None
    codebook: np.ndarray | None  # float32, ascending (grouped: ascending within each group)
    nnz: int
    index_bits: int | None = None
    storage: str = "codebook"    # "codebook", "grouped" or "raw"
    group_size: int | None = None            # rows per codebook (grouped)
    codebook_sizes: np.ndarray | None = None  # int64, one per group (grouped)
    value_dtype: str | None = None           # the dtype the codebook or raw values are stored as

    def group_codebooks(self) -> list[np.ndarray]:
        """Each group's codebook (one for a single codebook; none for raw storage)."""
        if self.codebook is None:
            return []
        if self.codebook_sizes is None:
            return [self.codebook]
        if self.codebook_sizes.size == 0:   # no rows, no groups
            return []
        return np.split(self.codebook, np.cumsum(self.codebook_sizes)[:-1])


@dataclass(frozen=True)
class Dcz:
    """A loaded .dcz file."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    layers: dict[str, LayerInfo]
    bytes: int
    version: int
    tensors: tuple[TensorRow, ...] = field(default=(), repr=False)


# ------------------------------------------------------------------------------------------ pack

def pack(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
         compressed: Mapping[str, Mapping[str, Any] | None] | None = None,
         meta: Mapping[str, Any] | None = None, coder: str = "huffman",
         plain_dtype: str = "float32", codebook_dtype: str = "float32",
         code_values: bool = True) -> PackReport:
    """Write ``state_dict`` to ``path`` as a .dcz file (atomically) and report its real size.

    ``compressed`` maps tensor names to {"bits": int|None, "index_bits": int|None,
    "group_size": int|None, "codebook_dtype": str}; those tensors are stored sparse (a codebook
    of their distinct non-zero values and cluster indices, or raw values if they hold more than
    ``bits`` allow). ``group_size`` gives every run of that many rows (axis 0) its own codebook
    of at most 2**bits values. Every other tensor is stored plainly.
    ``coder`` codes the gap and index streams: "huffman", "ans" or "none" (fixed width).
    ``code_values``: with an entropy coder, store plain tensors, raw non-zeros and grouped
    codebooks as coded byte planes where that is smaller (lossless).
    ``plain_dtype`` / ``codebook_dtype`` (the default for each ``compressed`` entry) "float16"
    stores plain tensors / a sparse tensor's values (codebook or raw non-zeros) of float32 and
    float64 tensors as float16: lossy, so only on request.
    A file that uses none of the storage kinds format version 2 added (grouped codebooks,
    coded or float16 values) is written as version 1, byte for byte as before them.
    """
    path = Path(path)
    if coder not in CODERS:
        raise ContainerError(f"{path}: unknown coder {coder!r}; choose one of {', '.join(CODERS)}")
    for what, value in (("plain_dtype", plain_dtype), ("codebook_dtype", codebook_dtype)):
        if value not in PLAIN_DTYPES:
            raise ContainerError(f"{path}: {what} must be one of {PLAIN_DTYPES}, got {value!r}")
    compressed = dict(compressed or {})
    missing = sorted(set(compressed) - set(state_dict))
    if missing:
        raise ContainerError(f"{path}: compressed names tensors missing from the state_dict: "
                             f"{', '.join(missing)}")
    if len(state_dict) > MAX_TENSORS:
        raise ContainerError(f"{path}: {len(state_dict):,} tensors; a .dcz file holds at most "
                             f"{MAX_TENSORS:,}")
    fmt = {"name": "dcz", "version": 1, "coder": coder, "plain_dtype": plain_dtype,
           **_library_versions(coder)}
    meta_json = _meta_json(meta, fmt, path)  # checked before the tensors: bad metadata fails fast
    rows, sections = [], []
    for name, tensor in state_dict.items():
        payload, row = _encode_tensor(path, name, tensor, compressed, coder, plain_dtype,
                                      codebook_dtype, code_values)
        sections.append(_format.section(TAG_TENSOR, payload))
        rows.append(row)
    # The oldest version that holds every tensor: old readers keep reading what they can.
    version = max((r.min_version for r in rows), default=1)
    if version > 1:
        meta_json = _meta_json(meta, {**fmt, "version": version,
                                      "codebook_dtype": codebook_dtype}, path)
    # Deflated: a recipe's JSON is ~1 KB, 4% of a LeNet file; deflate takes a third of that.
    parts = [_format.file_header(version),
             _format.section(TAG_META, zlib.compress(meta_json, 9)), *sections]
    del sections
    size = sum(map(len, parts))
    parts.append(_format.section(TAG_END, _format.END.pack(len(rows), size)))
    write_bytes_atomic(path, b"".join(parts), kind=DCZ)
    on_disk = os.path.getsize(path)
    dense = sum(r.dense_bytes for r in rows)
    return PackReport(path=path, bytes=on_disk, dense_bytes=dense,
                      ratio=dense / on_disk if on_disk else 0.0, coder=coder, tensors=tuple(rows))


def _meta_json(meta: Mapping[str, Any] | None, fmt: dict, path: Path) -> bytes:
    full_meta = dict(meta or {})
    full_meta["format"] = fmt
    try:
        meta_json = json.dumps(full_meta, sort_keys=True, allow_nan=False,
                               separators=(",", ":")).encode("utf-8")
    except RecursionError:
        raise ContainerError(f"{path}: metadata nests deeper than {MAX_META_DEPTH} levels") \
            from None
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"{path}: metadata is not JSON-serialisable ({exc})") from exc
    _check_meta_text(meta_json, str(path))  # what load would refuse is never written
    return meta_json


def _encode_tensor(path: Path, name: str, tensor: Any, compressed: dict, coder: str,
                   plain_dtype: str, codebook_dtype: str,
                   code_values: bool) -> tuple[bytes, TensorRow]:
    where = f"{path}: tensor {name!r}"
    if not isinstance(name, str):
        raise ContainerError(f"{path}: state_dict key {name!r} is not a string")
    if not isinstance(tensor, torch.Tensor):
        raise ContainerError(f"{where}: is a {type(tensor).__name__}, not a torch.Tensor")
    if tensor.layout != torch.strided or tensor.dtype not in _tensor.BY_TORCH:
        raise ContainerError(f"{where}: {tensor.dtype} {tensor.layout} tensors are not supported; "
                             f"supported dtypes: {', '.join(map(str, _tensor.BY_TORCH))}")
    try:
        if name not in compressed:
            return _tensor.encode_plain(name, tensor, plain_dtype, coder, code_values)
        opts = dict(compressed[name] or {})
        unknown = set(opts) - set(SPARSE_OPTIONS)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: "
                             f"{', '.join(SPARSE_OPTIONS)}")
        if not tensor.is_floating_point():
            raise ValueError(f"is {tensor.dtype}; only floating tensors can be stored sparse")
        for key, lo, hi, bool_ok in _INT_OPTIONS:
            value = opts.get(key)
            if value is not None and (not isinstance(value, int) or not lo <= value <= hi
                                      or (isinstance(value, bool) and not bool_ok)):
                raise ValueError(f"{key} must be an integer in {lo}..{hi} or None, got {value!r}")
        dtype = opts.get("codebook_dtype", codebook_dtype)
        if dtype not in PLAIN_DTYPES:
            raise ValueError(f"codebook_dtype must be one of {PLAIN_DTYPES}, got {dtype!r}")
        return _tensor.encode_sparse(name, tensor, coder, opts.get("bits"), opts.get("index_bits"),
                                     group_size=opts.get("group_size"), half=dtype == "float16",
                                     code_values=code_values)
    except ValueError as exc:
        raise ContainerError(f"{where}: {exc}") from exc


def _library_versions(coder: str) -> dict:
    if coder != "ans":
        return {}
    from importlib.metadata import version

    # rANS model quantisation is constriction's; record which one wrote the file.
    return {"constriction": version("constriction")}


# ------------------------------------------------------------------------------------------ load

def _read_regular(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file (or a link to one): the one way a
    .dcz is read. A device (``/dev/zero`` never ends), a FIFO (blocks until a writer comes) or a
    socket is refused; the check is on the descriptor that is then read, so nothing can be
    swapped in between, and the read stops at the size the file had when it was checked."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContainerError(f"{path}: no such file") from None
    except OSError as exc:
        raise ContainerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ContainerError(f"{path}: {kind}; name a .dcz file")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(info.st_size)
    except OSError as exc:
        raise ContainerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) != info.st_size:
        raise ContainerError(f"{path}: changed while it was read ({len(data):,} of "
                             f"{info.st_size:,} bytes); read it again once it is written")
    return data


def _read(path: str | os.PathLike[str], max_decoded_bytes: int | None):
    path = Path(path)
    data = _read_regular(path)
    buf = memoryview(data)
    where = str(path)
    version = _format.check_header(buf, where)
    limit = max_decoded_bytes if max_decoded_bytes is not None else \
        max(MIN_DECODE_LIMIT, EXPANSION_LIMIT * len(data))
    budget = [limit]
    reader = Reader(buf, where, offset=_format.HEADER.size)
    meta = None
    decoded: list[_tensor.Decoded] = []
    names: set[str] = set()
    index = 0
    while True:
        start = reader.pos
        tag, payload, sec_where = _format.read_section(reader, index, where)
        if tag == TAG_META:
            if index != 0:
                raise ContainerError(f"{sec_where}: metadata must be the first section")
            meta = _parse_meta(payload, sec_where)
        elif index == 0:
            raise ContainerError(f"{sec_where}: the first section must be the metadata")
        elif tag == TAG_TENSOR:
            if len(decoded) == MAX_TENSORS:
                raise ContainerError(f"{sec_where}: more than {MAX_TENSORS:,} tensors")
            try:
                item = _tensor.decode(payload, sec_where, budget, version)
            except (ValueError, IndexError, OverflowError) as exc:  # safety net behind the checks
                raise ContainerError(f"{sec_where}: corrupt tensor data ({exc})") from exc
            if item.name in names:
                raise ContainerError(f"{sec_where}: tensor {item.name!r} appears twice")
            names.add(item.name)
            decoded.append(item)
        else:  # END
            end = Reader(payload, sec_where)
            count, size = end.unpack(_format.END, "end marker")
            end.done()
            if count != len(decoded) or size != start:
                raise ContainerError(f"{sec_where}: end marker expects {count} tensors in "
                                     f"{size:,} bytes; found {len(decoded)} in {start:,}")
            if reader.remaining:
                raise ContainerError(f"{sec_where}: {reader.remaining:,} unexpected bytes after "
                                     "the end marker")
            break
        index += 1
    return path, len(data), version, meta, decoded


def _parse_meta(payload: memoryview, where: str) -> dict:
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(payload, MAX_META_BYTES)
    except zlib.error as exc:
        raise ContainerError(f"{where}: metadata does not inflate ({exc})") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise ContainerError(f"{where}: metadata is truncated or larger than "
                             f"{MAX_META_BYTES:,} bytes")
    _check_meta_text(text, where)
    try:
        meta = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of 4,300+ digits
        raise ContainerError(f"{where}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ContainerError(f"{where}: metadata must be a JSON object")
    return meta


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def _check_meta_text(text: bytes, where: str) -> None:
    """Refuse metadata JSON over MAX_META_BYTES or nested deeper than MAX_META_DEPTH, before
    json (which recurses once per level) parses it."""
    if len(text) > MAX_META_BYTES:
        raise ContainerError(f"{where}: metadata of {len(text):,} bytes is larger than "
                             f"{MAX_META_BYTES:,} bytes")
    # Brackets outside strings are the structure. For valid JSON this is its exact depth, and
    # json stops at the first error, so it never goes deeper than this count either.
    brackets = np.frombuffer(_NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", text)), dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), np.int8(1), np.int8(-1))
    depth = 0
    for i in range(0, steps.size, 1 << 20):
        run = np.cumsum(steps[i:i + (1 << 20)], dtype=np.int32) + depth
        if int(run.max()) > MAX_META_DEPTH:
            raise ContainerError(f"{where}: metadata nests deeper than {MAX_META_DEPTH} levels")
        depth = int(run[-1])


def load(path: str | os.PathLike[str], *, max_decoded_bytes: int | None = None) -> Dcz:
    """Read a .dcz file: bit-exact tensors (pruned weights as +0.0), metadata and layer info.

    ``max_decoded_bytes`` caps what the file may decode to (default: 4096x the file size, at
    least 256 MiB), so a corrupt header cannot trigger a giant allocation; the symbols a sparse
    tensor decodes through must fit in what is left as well (FORMAT.md, "Limits").
    """
    path, size, version, meta, decoded = _read(path, max_decoded_bytes)
    layers = {d.name: LayerInfo(name=d.name, shape=d.row.shape, bits=d.row.bits,
                                codebook=d.codebook, nnz=d.row.nnz, index_bits=d.row.index_bits,
                                storage=d.row.storage, group_size=d.row.group_size,
                                codebook_sizes=d.codebook_sizes, value_dtype=d.row.value_dtype)
              for d in decoded if d.row.storage != "plain"}
    return Dcz(path=path, state_dict={d.name: d.tensor for d in decoded}, meta=meta,
               layers=layers, bytes=size, version=version,
               tensors=tuple(d.row for d in decoded))


def inspect(path: str | os.PathLike[str]) -> dict:
    """Per tensor and per stream: bytes, bits per weight, order-0 entropy bound, ratio; totals."""
    dcz = load(path)
    rows = [t.as_dict() for t in dcz.tensors]
    dense = sum(t.dense_bytes for t in dcz.tensors)
    streams: dict[str, dict] = {}
    for t in dcz.tensors:
        for s in t.streams:
            agg = streams.setdefault(s.name, {"symbols": 0, "bytes": 0, "payload_bytes": 0,
                                              "table_bytes": 0, "entropy_bits": 0.0})
            agg["symbols"] += s.count
            agg["bytes"] += s.bytes
            agg["payload_bytes"] += s.payload_bytes
            agg["table_bytes"] += s.table_bytes
            agg["entropy_bits"] += s.entropy_bits
    for agg in streams.values():
        agg["payload_overhead"] = _streams.overhead(agg["payload_bytes"], agg["entropy_bits"])
    section_bytes = sum(t.bytes for t in dcz.tensors)
    weights = sum(t.numel for t in dcz.tensors if t.dense_bytes)
    return {
        "path": str(dcz.path),
        "format_version": dcz.version,
        "coder": dcz.meta.get("format", {}).get("coder") if isinstance(dcz.meta.get("format"),
                                                                        dict) else None,
        "bytes": dcz.bytes,
        "dense_bytes": dense,
        "ratio": dense / dcz.bytes if dcz.bytes else None,
        "bits_per_weight": dcz.bytes * 8 / weights if weights else None,
        "overhead_bytes": dcz.bytes - section_bytes,   # header, metadata, end marker
        "meta": dcz.meta,
        "tensors": rows,
        "streams": streams,
    }
