"""One tensor section: plain bytes, or sparse (gaps + codebook(s) + cluster indices, or raw values).

Section payload::

    u16 name length, name (UTF-8)
    u8 dtype, u8 ndim, ndim x u64 dims
    u8 storage: 0 plain, 1 codebook, 2 raw; format version 2 adds 3 codebooks, 4 plain values,
                5 raw values
      plain     u8 stored dtype, then numel values (little-endian)
      codebook  u64 nnz, u8 gap width b, gap stream,
                u8 index bits, u32 codebook size k, k values (tensor's dtype), index stream
      raw       u64 nnz, u8 gap width b, gap stream, nnz values (tensor's dtype)
      codebooks u64 nnz, u8 gap width b, gap stream, u8 index bits w, u32 group size
                (0: one codebook), G codebook sizes in w + 1 bits each, u8 stored dtype,
                value block of the sum of the sizes, index stream
      plain values  u8 stored dtype, value block of numel values
      raw values    u64 nnz, u8 gap width b, gap stream, u8 stored dtype, value block of nnz

A value block (``_values``) holds its values as they are or as coded byte planes. Groups are
consecutive runs of ``group size`` rows (axis 0; a scalar is one row), the last possibly
shorter: G = ceil(rows / group size). Each group's codebook holds its distinct non-zero values in
ascending order, and the index stream holds every non-zero's index into its own group's codebook.

Sparse positions are relative: each entry stores the number of zeros skipped since the previous
entry, in ``b`` bits. A skip too long for ``b`` bits is split by filler entries holding the
largest code ``2**b - 1``, which means "advance ``2**b - 1`` positions, no weight here". Unlike
the paper's fillers (a stored zero weight), ours carry no cluster index, so they cost only their
gap symbol. A pruned weight is any +0.0 or -0.0; both decode as +0.0.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _streams, _values
from ._bits import pack_fixed, unpack_fixed
from ._format import FORMAT_VERSION, Reader
from ._streams import StreamInfo

PLAIN, CODEBOOK, RAW, CODEBOOKS, PLAIN_VALUES, RAW_VALUES = range(6)
STORAGE_NAMES = {PLAIN: "plain", CODEBOOK: "codebook", RAW: "raw", CODEBOOKS: "codebook",
                 PLAIN_VALUES: "plain", RAW_VALUES: "raw"}   # CODEBOOKS with groups: "grouped"
MIN_VERSION = {CODEBOOKS: 2, PLAIN_VALUES: 2, RAW_VALUES: 2}  # the others are version 1's
MAX_GROUP_SIZE = 2**32 - 1
MAX_CODEBOOK = 2**16     # more distinct values than this: the layer is pruned but not shared
MAX_INDEX_BITS = 16
MAX_NDIM = 8
MAX_NAME_BYTES = 1024    # state_dict keys are dotted module paths: rarely past 200 bytes
# Each dimension, and the product of the non-zero ones (the strides), fits torch's and numpy's
# int64 sizes with room to spare: 2**48 float32 elements are a petabyte.
MAX_ELEMENTS = 2**48
SCATTER_CHUNK = 1 << 20  # non-zeros placed per step: positions cost 8 bytes each, so 8 MiB
SECTION_FRAMING = 16     # tag + length + CRC around every section payload


@dataclass(frozen=True)
class _DType:
    code: int
    torch_dtype: torch.dtype
    bits: type            # unsigned numpy type of the same width: the dtype's bit pattern
    signed: type          # signed numpy type of the same width (torch.from_numpy needs it)
    floating: bool

    @property
    def itemsize(self) -> int:
        return np.dtype(self.bits).itemsize


_DTYPE_LIST = [
    _DType(1, torch.float32, np.uint32, np.int32, True),
    _DType(2, torch.float16, np.uint16, np.int16, True),
    _DType(3, torch.bfloat16, np.uint16, np.int16, True),
    _DType(4, torch.float64, np.uint64, np.int64, True),
    _DType(5, torch.int64, np.uint64, np.int64, False),
    _DType(6, torch.int32, np.uint32, np.int32, False),
    _DType(7, torch.int16, np.uint16, np.int16, False),
    _DType(8, torch.int8, np.uint8, np.int8, False),
    _DType(9, torch.uint8, np.uint8, np.int8, False),
    _DType(10, torch.bool, np.uint8, np.int8, False),
]
BY_CODE = {d.code: d for d in _DTYPE_LIST}
BY_TORCH = {d.torch_dtype: d for d in _DTYPE_LIST}
_VIEW_AS = {4: torch.int32, 2: torch.int16, 8: torch.int64, 1: torch.int8}


@dataclass(frozen=True)
class TensorRow:
    """What one tensor costs in the file."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: str                 # "plain", "codebook" or "raw"
    numel: int
    nnz: int                     # stored non-zeros (numel for plain tensors)
    bits: int | None             # cluster-index width (codebook storage)
    index_bits: int | None       # gap width b (sparse storage)
    fillers: int                 # filler entries in the gap stream
    bytes: int                   # the whole section, framing included
    dense_bytes: int             # fp32 bytes of the tensor (0 for integer tensors)
    codebook_bytes: int = 0      # codebook values (and, grouped, the groups' sizes)
    values_bytes: int = 0        # raw non-zero values, or the plain data (coded or not)
    streams: tuple[StreamInfo, ...] = field(default=())
    group_size: int | None = None    # rows per codebook ("grouped" storage)
    value_dtype: str | None = None   # what the values or codebook are stored as
    min_version: int = 1             # the format version that introduced this storage

    @property
    def ratio(self) -> float | None:
        return self.dense_bytes / self.bytes if self.dense_bytes else None

    @property
    def bits_per_weight(self) -> float:
        return self.bytes * 8 / self.numel if self.numel else 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "streams"}
        d["shape"] = list(self.shape)
        d["density"] = self.nnz / self.numel if self.numel else 0.0
        d["bits_per_weight"] = self.bits_per_weight
        d["bits_per_nonzero"] = self.bytes * 8 / self.nnz if self.nnz else None
        d["ratio"] = self.ratio
        d["streams"] = {s.name: s.as_dict() for s in self.streams}
        return d


def _row(name: str, spec: _DType, shape: tuple[int, ...], storage: str, payload_len: int,
         **fields) -> TensorRow:
    """A TensorRow with the fields every storage kind derives alike (``nnz`` defaults to all)."""
    numel = math.prod(shape)
    fields.setdefault("nnz", numel)
    fields.setdefault("bits", None)
    fields.setdefault("index_bits", None)
    fields.setdefault("fillers", 0)
    fields.setdefault("value_dtype", dtype_name(spec.torch_dtype))
    return TensorRow(name=name, shape=shape, dtype=dtype_name(spec.torch_dtype), storage=storage,
                     numel=numel, bytes=payload_len + SECTION_FRAMING,
                     dense_bytes=4 * numel if spec.floating else 0, **fields)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def bit_pattern(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements as unsigned integers of the same width (flat, no copy if possible)."""
    spec = BY_TORCH[tensor.dtype]
    t = tensor.detach().cpu().contiguous().reshape(-1)
    return t.view(_VIEW_AS[spec.itemsize]).numpy().view(spec.bits)


def from_bit_pattern(bits: np.ndarray, spec: _DType, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(bits.view(spec.signed)).view(spec.torch_dtype).reshape(shape)


def _nonzero(bits: np.ndarray, spec: _DType) -> np.ndarray:
    """Positions of non-zero weights; +0.0 and -0.0 are both zero (the sign bit is ignored)."""
    if spec.torch_dtype in (torch.float32, torch.float64, torch.float16):
        return np.flatnonzero(bits.view(np.dtype(f"f{spec.itemsize}")))
    return np.flatnonzero(bits & spec.bits((1 << (8 * spec.itemsize - 1)) - 1))


def _as_float(bits: np.ndarray, spec: _DType) -> np.ndarray:
    if spec.torch_dtype == torch.bfloat16:
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(np.dtype(f"f{spec.itemsize}"))


def _head(name: str, spec: _DType, shape: tuple[int, ...], storage: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"tensor name of {len(raw):,} bytes; at most {MAX_NAME_BYTES:,}")
    problem = _shape_problem(shape)
    if problem:
        raise ValueError(problem)
    return (struct.pack("<H", len(raw)) + raw + bytes([spec.code, len(shape)])
            + b"".join(struct.pack("<Q", d) for d in shape) + bytes([storage]))


# ---------------------------------------------------------------------------------------- encode

HALF = BY_TORCH[torch.float16]
NARROWS = (torch.float32, torch.float64)   # the dtypes float16 storage applies to (lossy)


def stored_spec(spec: _DType, half: bool) -> _DType:
    """What a tensor's values are stored as: float16 on request for float32/float64 tensors,
    otherwise the tensor's own dtype."""
    return HALF if half and spec.torch_dtype in NARROWS else spec


def encode_plain(name: str, tensor: torch.Tensor, plain_dtype: str, coder: str = "none",
                 code_values: bool = False) -> tuple[bytes, TensorRow]:
    """Plain storage; with ``code_values``, byte planes coded by ``coder`` where that is smaller
    (storage "plain values", format version 2)."""
    spec = BY_TORCH[tensor.dtype]
    stored = stored_spec(spec, plain_dtype == "float16")
    if stored is not spec:
        tensor = tensor.to(stored.torch_dtype)
    shape = tuple(tensor.shape)
    bits = bit_pattern(tensor)
    data = bits.astype(_values.le(stored.bits), copy=False).tobytes()
    payload = _head(name, spec, shape, PLAIN) + bytes([stored.code]) + data
    row = dict(values_bytes=len(data), value_dtype=dtype_name(stored.torch_dtype))
    if code_values and coder != "none" and bits.size:
        block, infos = _values.encode_planes(bits, coder, "values")
        coded = _head(name, spec, shape, PLAIN_VALUES) + bytes([stored.code]) + block
        if len(coded) < len(payload):
            payload = coded
            row.update(values_bytes=len(block), streams=infos, min_version=2)
    return payload, _row(name, spec, shape, "plain", len(payload), **row)


def _nonzeros(tensor: torch.Tensor) -> tuple[_DType, np.ndarray, np.ndarray]:
    """(dtype spec, positions of the non-zeros, their values as bit patterns)."""
    spec = BY_TORCH[tensor.dtype]
    flat = bit_pattern(tensor)
    positions = _nonzero(flat, spec)
    return spec, positions, flat[positions]


def encode_sparse(name: str, tensor: torch.Tensor, coder: str, bits: int | None,
                  index_bits: int | None, *, group_size: int | None = None, half: bool = False,
                  code_values: bool = False) -> tuple[bytes, TensorRow]:
    """Sparse storage: one codebook, a codebook per ``group_size`` rows, or raw non-zeros.
    ``half`` stores the values as float16 (lossy: the tensor is rounded to float16 first);
    ``code_values`` codes raw non-zeros and codebooks in byte planes where that is smaller.
    Without those and ``group_size``, the section is format version 1's, byte for byte."""
    shape = tuple(tensor.shape)
    spec = BY_TORCH[tensor.dtype]
    stored = stored_spec(spec, half)
    # The positions and values are the float16 tensor's: a value that rounds to zero is pruned.
    _, positions, values = _nonzeros(tensor.to(stored.torch_dtype) if stored is not spec
                                     else tensor)
    skips = np.diff(positions, prepend=-1) - 1
    if stored is spec and group_size is None:   # what format version 1 holds
        distinct = np.unique(values)
        part = _codebook_part(values, distinct, spec, bits, coder) \
            if _shared(distinct.size, distinct.size, values.size, spec.itemsize, bits) else None
    else:
        gs, n_groups, group_of = _groups(positions, shape, group_size)
        codebooks, sizes, indices = group_codebooks(values, group_of, n_groups, stored)
        del group_of
        part = _codebooks_part(codebooks, sizes, indices, gs, stored, bits, coder, code_values) \
            if _shared(int(sizes.max(initial=0)), int(sizes.sum()), values.size, stored.itemsize,
                       bits, sizes.size) else None
        del codebooks, indices
    del positions
    if part is None:
        part = _raw_part(values, spec, stored, coder, code_values)
    storage, storage_name, tail, streams, fields = part
    b, fillers, gap_data, gap_info = _gap_stream(skips, coder, index_bits)
    payload = (_head(name, spec, shape, storage) + struct.pack("<QB", values.size, b) + gap_data
               + tail)
    fields.setdefault("value_dtype", dtype_name(stored.torch_dtype))
    return payload, _row(name, spec, shape, storage_name, len(payload), nnz=int(values.size),
                         index_bits=b, fillers=fillers, streams=(gap_info, *streams), **fields)


# Each _*_part returns what follows a sparse tensor's gap stream: (storage kind, its name, the
# bytes, their streams, TensorRow fields).

def _codebook_part(values: np.ndarray, distinct: np.ndarray, spec: _DType, bits: int | None,
                   coder: str) -> tuple:
    width = _streams.width_for(distinct.size) if bits is None else bits
    codebook, indices = codebook_indices(values, distinct, spec)
    codebook = codebook.astype(_values.le(spec.bits)).tobytes()
    idx_data, idx_info = _streams.encode(indices, 1 << width, coder, "indices")
    return (CODEBOOK, "codebook", struct.pack("<BI", width, distinct.size) + codebook + idx_data,
            (idx_info,), dict(bits=width, codebook_bytes=len(codebook)))


def _codebooks_part(codebooks: np.ndarray, sizes: np.ndarray, indices: np.ndarray, gs: int,
                    stored: _DType, bits: int | None, coder: str, code_values: bool) -> tuple:
    width = _streams.width_for(int(sizes.max(initial=0))) if bits is None else bits
    table = pack_fixed(sizes, width + 1)
    block, cb_infos = _values.encode(codebooks, coder, "codebook", code_values)
    idx_data, idx_info = _streams.encode(indices, 1 << width, coder, "indices")
    return (CODEBOOKS, "grouped" if gs else "codebook",
            struct.pack("<BI", width, gs) + table + bytes([stored.code]) + block + idx_data,
            (*cb_infos, idx_info), dict(bits=width, codebook_bytes=len(table) + 1 + len(block),
                                        group_size=gs or None, min_version=2))


def _raw_part(values: np.ndarray, spec: _DType, stored: _DType, coder: str,
              code_values: bool) -> tuple:
    raw = values.astype(_values.le(stored.bits)).tobytes()
    block, infos = _values.encode(values, coder, "values", code_values)
    if stored is not spec or 1 + len(block) < len(raw):  # + its stored dtype byte
        return (RAW_VALUES, "raw", bytes([stored.code]) + block, infos,
                dict(values_bytes=len(block), min_version=2))
    return RAW, "raw", raw, (), dict(values_bytes=len(raw))


def _gap_stream(skips: np.ndarray, coder: str,
                index_bits: int | None) -> tuple[int, int, bytes, StreamInfo]:
    """Zeros skipped before each non-zero -> gap stream with fillers: (gap width, fillers,
    stream bytes, its StreamInfo)."""
    counts = gap_counts(skips) if index_bits is None else {}
    b = index_bits if index_bits is not None else choose_gap_width(skips, coder, counts)
    gaps, fillers = gap_symbols(skips, b)
    gap_data, gap_info = _streams.encode(gaps, 1 << b, coder, "gaps", counts.get(b))
    if counts and coder != "none":
        # Coding never makes the file larger: where the best fixed-width gap stream is smaller
        # (short streams, whose table outweighs the gain), store that one instead. This exact
        # check, not the chooser's estimates, is what decides.
        b_fixed = choose_gap_width(skips, "none", counts)
        if _streams.fixed_bytes(int(counts[b_fixed].sum()), 1 << b_fixed) < len(gap_data):
            b = b_fixed
            gaps, fillers = gap_symbols(skips, b)
            gap_data, gap_info = _streams.encode(gaps, 1 << b, "none", "gaps", counts[b])
    return b, fillers, gap_data, gap_info


def _groups(positions: np.ndarray, shape: tuple[int, ...],
            group_size: int | None) -> tuple[int, int, np.ndarray | None]:
    """(group size as stored, 0 for one codebook; the number of groups; each non-zero's group,
    or None for one group)."""
    if group_size is None:
        return 0, 1, None
    rows = shape[0] if shape else 1
    n_groups = -(-rows // group_size)
    if n_groups <= 1:
        return group_size, n_groups, None
    span = math.prod(shape) // rows * group_size  # elements per group
    return group_size, n_groups, positions // max(span, 1)


def _ordered(bits: np.ndarray, spec: _DType) -> np.ndarray:
    """Unsigned keys that sort like the floats whose bit patterns ``bits`` are (negative NaNs
    first, positive NaNs last): sign-magnitude to offset binary."""
    sign = spec.bits(1 << (8 * spec.itemsize - 1))
    return np.where(bits & sign, ~bits, bits | sign)


def group_codebooks(values: np.ndarray, group_of: np.ndarray | None, n_groups: int,
                    spec: _DType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each group's distinct values, ascending: (the codebooks one after another, each group's
    codebook size, each value's index into its group's codebook)."""
    n = values.size
    key = _ordered(values, spec)
    order = np.argsort(key, kind="stable") if group_of is None else np.lexsort((key, group_of))
    del key
    ranked = values[order]
    new = np.ones(n, dtype=bool)   # the first of each (group, value) run
    np.not_equal(ranked[1:], ranked[:-1], out=new[1:])
    ranked_group = None
    if group_of is not None:
        ranked_group = group_of[order]
        new[1:] |= ranked_group[1:] != ranked_group[:-1]
    slot = np.cumsum(new) - 1      # index into the concatenated codebooks
    codebooks = ranked[new]
    indices = np.empty(n, dtype=np.int32)
    if ranked_group is None:
        sizes = np.full(n_groups, codebooks.size, dtype=np.int64)
        indices[order] = slot
    else:
        sizes = np.bincount(ranked_group[new], minlength=n_groups).astype(np.int64)
        indices[order] = slot - (np.cumsum(sizes) - sizes)[ranked_group]
    return codebooks, sizes, indices


def codebook_indices(values: np.ndarray, distinct: np.ndarray,
                     spec: _DType) -> tuple[np.ndarray, np.ndarray]:
    """The codebook in ascending value order (readable) and each value's index into it."""
    order = np.argsort(_as_float(distinct, spec), kind="stable")
    rank = np.empty(distinct.size, dtype=np.int32)
    rank[order] = np.arange(distinct.size, dtype=np.int32)
    indices = rank[np.searchsorted(distinct, values)] if values.size else np.zeros(0, np.int32)
    return distinct[order], indices


def sparse_streams(tensor: torch.Tensor, b: int) -> dict[str, tuple[np.ndarray, int]]:
    """The symbol streams of a tensor stored with ``b``-bit gaps, as (symbols, alphabet): "gaps",
    and "indices" into its codebook (for measuring coders on exactly what the writer codes)."""
    spec, positions, values = _nonzeros(tensor)
    distinct = np.unique(values)
    gaps, _ = gap_symbols(np.diff(positions, prepend=-1) - 1, b)
    _, indices = codebook_indices(values, distinct, spec)
    return {"gaps": (gaps, 1 << b),
            "indices": (indices, 1 << _streams.width_for(distinct.size))}


def _shared(k: int, total: int, nnz: int, itemsize: int, bits: int | None,
            groups: int = 0) -> bool:
    """Codebook storage, or raw non-zero values? Raw when the layer is not shared: a codebook of
    more distinct values than ``bits`` allow (or than 2**16), or, with ``bits`` unset, when raw
    is smaller (a pruned-only layer, whose every survivor is distinct): the codebooks (``total``
    entries, the largest ``k``), the sizes of ``groups`` of them (0: one codebook, no sizes
    stored) and fixed-width indices must cost no more than raw."""
    if bits is not None:
        return k <= (1 << bits)
    if k > MAX_CODEBOOK:
        return False
    width = _streams.width_for(k)
    return nnz * itemsize >= (total * itemsize + (groups * (width + 1) + 7) // 8
                              + (nnz * width + 7) // 8)


def gap_symbols(skips: np.ndarray, b: int) -> tuple[np.ndarray, int]:
    """Gap stream for ``b``-bit relative indices: each skip s becomes s // M fillers (code M,
    advancing M positions) followed by the entry s % M, where M = 2**b - 1."""
    m = (1 << b) - 1
    n_fill = skips // m
    total_fill = int(n_fill.sum())
    out = np.full(skips.size + total_fill, m, dtype=np.int32)
    out[np.cumsum(n_fill + 1) - 1] = skips % m
    return out, total_fill


def gap_counts(skips: np.ndarray) -> dict[int, np.ndarray]:
    """For each gap width b in 1..16, the symbol histogram of the gap stream gap_symbols(skips, b)
    would give (fillers included), from one histogram of the skips; empty when there are none."""
    if skips.size == 0:
        return {}
    cap = 1 << 16
    small = skips[skips < cap]
    hist = np.bincount(small, minlength=cap).astype(np.int64)
    tail = skips[skips >= cap]
    values = np.arange(cap, dtype=np.int64)
    used = np.flatnonzero(hist)
    hv, hc = values[used], hist[used]
    by_width = {}
    for b in range(1, MAX_INDEX_BITS + 1):
        m = (1 << b) - 1
        counts = np.bincount(hv % m, weights=hc, minlength=m + 1).astype(np.int64)
        counts[m] += int((hv // m * hc).sum()) + int((tail // m).sum())
        counts += np.bincount(tail % m, minlength=m + 1)
        by_width[b] = counts
    return by_width


def choose_gap_width(skips: np.ndarray, coder: str,
                     counts: dict[int, np.ndarray] | None = None) -> int:
    """The gap width b in 1..16 whose stream codes smallest (histograms, no trial encodes);
    ``counts`` is gap_counts(skips), when the caller has it already."""
    if skips.size == 0:
        return 1
    if counts is None:
        counts = gap_counts(skips)
    estimates = {b: (c, _streams.estimate_bits(c, 1 << b, coder)) for b, c in counts.items()}
    if coder == "huffman":
        # Huffman pays up to a bit per symbol over the entropy: settle the best few exactly.
        for b in sorted(estimates, key=lambda b: estimates[b][1])[:3]:
            counts = estimates[b][0]
            estimates[b] = (counts, _streams.estimate_bits(counts, 1 << b, coder, exact=True))
    best = min(cost for _, cost in estimates.values())
    # Near-ties (within 0.2%) go to the width with the fewest symbols: same size, faster decode.
    # (For rANS a 1-bit "gap" stream is a bitmap of every position: as small, but 10x the work.)
    close = [b for b, (_, cost) in estimates.items() if cost <= best * 1.002 + 64]
    return min(close, key=lambda b: (int(estimates[b][0].sum()), b))


# ---------------------------------------------------------------------------------------- decode

@dataclass
class Decoded:
    name: str
    tensor: torch.Tensor
    row: TensorRow
    codebook: np.ndarray | None   # float32 view of the codebook values (grouped: one after another)
    codebook_sizes: np.ndarray | None = None   # grouped: each group's codebook size


def decode(payload: memoryview, where: str, budget: list[int],
           version: int = FORMAT_VERSION) -> Decoded:
    """Decode one tensor section of a file of format ``version``. ``budget[0]`` is the decoded
    bytes still allowed; it shrinks by the tensor's size, and the memory its decoding takes on
    the way must fit what is left."""
    r = Reader(payload, where)
    name, spec, shape = read_head(r)
    numel = math.prod(shape)
    if numel * spec.itemsize > budget[0]:
        r.fail(f"shape {list(shape)} claims {numel:,} elements ({numel * spec.itemsize:,} bytes), "
               f"more than this file may decode to ({budget[0]:,} bytes left); the header is "
               "corrupt (or pass a larger max_decoded_bytes)")
    budget[0] -= numel * spec.itemsize
    storage = r.u8("storage kind")
    if version < MIN_VERSION.get(storage, 1):
        r.fail(f"storage kind {storage} needs format version {MIN_VERSION[storage]}; the file "
               f"says version {version} (corrupt)")
    if storage in (PLAIN, PLAIN_VALUES):
        return _decode_plain(r, name, spec, shape, storage, len(payload), budget)
    if storage not in STORAGE_NAMES or not spec.floating:
        r.fail(f"invalid storage kind {storage} for a {dtype_name(spec.torch_dtype)} tensor")
    nnz = r.u64("non-zero count")
    b = r.u8("gap width")
    if nnz > numel or not 1 <= b <= MAX_INDEX_BITS:
        r.fail(f"{nnz:,} non-zeros of {numel:,} with {b}-bit gaps is impossible")
    # Everything is parsed and checked before anything is decoded: a false claim costs nothing.
    m = (1 << b) - 1
    gaps = _streams.parse(r, "gaps", nnz + (numel - nnz) // m)  # a filler skips m zeros
    _check_gaps(gaps, b, nnz, numel, r)
    values = _SPARSE[storage](r, spec, shape, nnz)
    r.done()
    _check_work(r, gaps.work_bytes + values.work_bytes, budget)

    values_of = values.start()
    dense = np.zeros(numel, dtype=spec.bits)
    gap_symbols = gaps.symbols()
    fillers = _scatter(dense, gap_symbols, gaps.symbol, b, nnz, values_of, r)
    infos = (gaps.info(gap_symbols),) + values.infos()
    del gap_symbols
    row = _row(name, spec, shape, values.storage, len(payload), nnz=int(nnz), index_bits=b,
               fillers=fillers, streams=infos, **values.fields)
    return Decoded(name, from_bit_pattern(dense, spec, shape), row, values.codebook_f32(),
                   values.sizes)


def _check_work(r: Reader, work: int, budget: list[int]) -> None:
    if work > budget[0]:
        r.fail(f"decoding needs {work:,} bytes of working memory, more than this file may use "
               f"({budget[0]:,} bytes left); the header is corrupt (or pass a larger "
               "max_decoded_bytes)")


def _stored(r: Reader, spec: _DType, what: str) -> _DType:
    """The dtype values are stored as: the tensor's, or float16 for a float32/float64 tensor."""
    stored = BY_CODE.get(r.u8("stored dtype"))
    if stored is None or (stored is not spec and not (stored is HALF
                                                      and spec.torch_dtype in NARROWS)):
        r.fail(f"invalid stored dtype for {what}")
    return stored


def widen(bits: np.ndarray, stored: _DType, spec: _DType) -> np.ndarray:
    """Bit patterns of ``stored`` values as the tensor's dtype: float16 to float32/64 is exact.
    numpy's conversion, not torch's: torch gives a lone NaN another payload than many."""
    if stored is spec:
        return bits
    return bits.view(np.float16).astype(np.dtype(f"f{spec.itemsize}")).view(spec.bits)


def _decode_plain(r: Reader, name: str, spec: _DType, shape: tuple[int, ...], storage: int,
                  payload_len: int, budget: list[int]) -> Decoded:
    numel = math.prod(shape)
    stored = _stored(r, spec, "a plain tensor")
    if storage == PLAIN:
        raw = r.take(numel * stored.itemsize, "tensor data")
        r.done()
        bits = np.frombuffer(raw, dtype=_values.le(stored.bits)).astype(stored.bits)
        fields = dict(values_bytes=len(raw))
    else:
        block = _values.parse(r, numel, stored.bits, "values")
        r.done()
        # Planes may claim any count their tensor allows: the stored copy must fit as well.
        _check_work(r, block.work_bytes + (numel * stored.itemsize if stored is not spec else 0),
                    budget)
        bits = block.values()
        fields = dict(values_bytes=block.bytes, streams=block.infos(bits), min_version=2)
    tensor = from_bit_pattern(widen(bits, stored, spec), spec, shape)
    return Decoded(name, tensor, _row(name, spec, shape, "plain", payload_len,
                                      value_dtype=dtype_name(stored.torch_dtype), **fields), None)


# Each sparse storage kind's values, read after the gap stream: parsed and checked on
# construction (nothing decoded), then start() decodes them and returns values_of(lo, hi, where):
# entries lo..hi-1 as the tensor's bit patterns, ``where`` being their positions (an index array,
# or a slice of the tensor).

class _Codebook:
    """One codebook in the tensor's dtype (format version 1)."""

    sizes = None

    def __init__(self, r: Reader, spec: _DType, shape: tuple[int, ...], nnz: int) -> None:
        self.r, self.spec, self.nnz = r, spec, nnz
        width = r.u8("index bits")
        k = r.u32("codebook size")
        if width > MAX_INDEX_BITS or k > (1 << width) or (nnz and k == 0):
            r.fail(f"codebook of {k:,} entries does not fit {width}-bit indices")
        raw_cb = r.take(k * spec.itemsize, "codebook")
        self.codebook = np.frombuffer(raw_cb, dtype=_values.le(spec.bits)).astype(spec.bits)
        self.stream = _index_stream(r, nnz, width, k)
        self.work_bytes = self.stream.work_bytes
        self.storage = "codebook"
        self.fields = dict(bits=width, codebook_bytes=len(raw_cb))

    def start(self):
        codebook, k = self.codebook, self.codebook.size
        self.indices = indices = self.stream.symbols()
        if self.stream.symbol is not None:
            only = codebook[self.stream.symbol] if self.nnz else codebook[:0]
            return lambda lo, hi, where: only
        if indices.size and int(indices.max()) >= k:
            self.r.fail("a cluster index points past the codebook")
        return lambda lo, hi, where: codebook[indices[lo:hi]]

    def infos(self) -> tuple[StreamInfo, ...]:
        return (self.stream.info(self.indices),)

    def codebook_f32(self) -> np.ndarray:
        return _codebook_f32(self.codebook, self.spec)


class _Codebooks:
    """A codebook per group of rows, or one (group size 0), stored in a value block."""

    def __init__(self, r: Reader, spec: _DType, shape: tuple[int, ...], nnz: int) -> None:
        self.r, self.spec = r, spec
        width = r.u8("index bits")
        gs = r.u32("group size")
        if width > MAX_INDEX_BITS:
            r.fail(f"{width}-bit cluster indices; at most {MAX_INDEX_BITS}")
        rows = shape[0] if shape else 1
        n_groups = 1 if gs == 0 else -(-rows // gs)
        # The sizes are in the file: the group count is bounded by the bytes as well as the rows.
        raw = r.take((n_groups * (width + 1) + 7) // 8, "codebook sizes")
        sizes = unpack_fixed(raw, n_groups, width + 1, np.uint32)
        total = int(sizes.sum(dtype=np.int64))
        if sizes.size and int(sizes.max()) > 1 << width:
            r.fail(f"a codebook of {int(sizes.max()):,} entries does not fit {width}-bit indices")
        if total > nnz or (nnz and total == 0):  # every entry is some non-zero's value
            r.fail(f"codebooks of {total:,} entries in all for {nnz:,} non-zeros")
        self.stored = _stored(r, spec, "a codebook")
        self.block = _values.parse(r, total, self.stored.bits, "codebook")
        self.stream = _index_stream(r, nnz, width, int(sizes.max(initial=0)))
        self.gs, self.n_groups, self.raw_sizes = gs, n_groups, sizes
        numel = math.prod(shape)
        self.span = (numel // rows if rows else 0) * gs   # elements per group
        # Codebooks as stored, widened and as float32, two arrays per group, and the block.
        self.work_bytes = (self.stream.work_bytes + self.block.work_bytes + 16 * n_groups
                           + total * (self.stored.itemsize + spec.itemsize + 4))
        self.storage = "grouped" if gs else "codebook"
        self.sizes = sizes.astype(np.int64) if gs else None
        self.fields = dict(bits=width, codebook_bytes=len(raw) + 1 + self.block.bytes,
                           group_size=gs or None, min_version=2,
                           value_dtype=dtype_name(self.stored.torch_dtype))

    def start(self):
        self.stored_cb = self.block.values()
        self.codebooks = codebooks = widen(self.stored_cb, self.stored, self.spec)
        self.indices = indices = self.stream.symbols()
        sizes = self.raw_sizes
        first = np.cumsum(sizes, dtype=np.int64) - sizes
        span, grouped = self.span, self.n_groups > 1

        def values_of(lo: int, hi: int, where) -> np.ndarray:
            idx = indices[lo:hi]
            if not grouped:
                if idx.size and int(idx.max()) >= codebooks.size:
                    self.r.fail("a cluster index points past the codebook")
                return codebooks[idx]
            if isinstance(where, slice):
                where = np.arange(where.start, where.stop, where.step, dtype=np.int64)
            group = where // max(span, 1)
            if np.any(idx >= sizes[group]):
                self.r.fail("a cluster index points past its group's codebook")
            return codebooks[first[group] + idx]

        return values_of

    def infos(self) -> tuple[StreamInfo, ...]:
        return self.block.infos(self.stored_cb) + (self.stream.info(self.indices),)

    def codebook_f32(self) -> np.ndarray:
        return _codebook_f32(self.codebooks, self.spec)


class _Raw:
    """Non-zeros in the tensor's dtype (format version 1)."""

    sizes = None
    work_bytes = 0

    def __init__(self, r: Reader, spec: _DType, shape: tuple[int, ...], nnz: int) -> None:
        raw = r.take(nnz * spec.itemsize, "non-zero values")
        self.values = np.frombuffer(raw, dtype=_values.le(spec.bits))
        self.storage = "raw"
        self.fields = dict(values_bytes=len(raw))

    def start(self):
        return lambda lo, hi, where: self.values[lo:hi]

    def infos(self) -> tuple[StreamInfo, ...]:
        return ()

    def codebook_f32(self) -> None:
        return None


class _RawValues(_Raw):
    """Non-zeros in a value block: coded byte planes, float16, or both."""

    def __init__(self, r: Reader, spec: _DType, shape: tuple[int, ...], nnz: int) -> None:
        self.spec = spec
        self.stored = _stored(r, spec, "non-zero values")
        self.block = _values.parse(r, nnz, self.stored.bits, "values")
        # The block's values, and a chunk of them widened on the way.
        chunk = SCATTER_CHUNK * 2 * spec.itemsize if self.stored is not spec else 0
        self.work_bytes = self.block.work_bytes + nnz * self.stored.itemsize + chunk
        self.storage = "raw"
        self.fields = dict(values_bytes=self.block.bytes, min_version=2,
                           value_dtype=dtype_name(self.stored.torch_dtype))

    def start(self):
        self.values = values = self.block.values()
        return lambda lo, hi, where: widen(values[lo:hi], self.stored, self.spec)

    def infos(self) -> tuple[StreamInfo, ...]:
        return self.block.infos(self.values)


_SPARSE = {CODEBOOK: _Codebook, RAW: _Raw, CODEBOOKS: _Codebooks, RAW_VALUES: _RawValues}


def _index_stream(r: Reader, nnz: int, width: int, k: int) -> _streams.Stream:
    """The cluster indices: exactly nnz symbols of alphabet 2**width; a constant one must point
    into the (largest) codebook."""
    stream = _streams.parse(r, "indices", nnz)
    if stream.count != nnz or stream.alphabet != (1 << width):
        r.fail(f"index stream holds {stream.count:,} symbols of alphabet {stream.alphabet:,}; "
               f"expected {nnz:,} of {1 << width:,}")
    if nnz and stream.symbol is not None and stream.symbol >= k:
        r.fail("a cluster index points past the codebook")
    return stream


def _codebook_f32(bits: np.ndarray, spec: _DType) -> np.ndarray:
    with np.errstate(over="ignore"):  # float64 centroids past float32's range: inf, quietly
        return _as_float(bits, spec).astype(np.float32)


def read_head(r: Reader) -> tuple[str, _DType, tuple[int, ...]]:
    """Name, dtype and shape of a tensor section, each checked against the limits."""
    n = r.u16("tensor name length")
    if n > MAX_NAME_BYTES:
        r.fail(f"tensor name of {n:,} bytes; at most {MAX_NAME_BYTES:,}")
    try:
        name = bytes(r.take(n, "tensor name")).decode("utf-8")
    except UnicodeDecodeError:
        r.fail("tensor name is not UTF-8")
    r.where = f"{r.where} tensor {name!r}"
    spec = BY_CODE.get(r.u8("dtype"))
    if spec is None:
        r.fail("unknown dtype code")
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        r.fail(f"{ndim} dimensions; at most {MAX_NDIM}")
    shape = tuple(r.u64("shape") for _ in range(ndim))
    problem = _shape_problem(shape)
    if problem:
        r.fail(problem)
    return name, spec, shape


def _shape_problem(shape: tuple[int, ...]) -> str | None:
    """Why torch and numpy could not hold this shape, or None. Zero dims hide the others from
    the element count, but not from the strides, so those must fit as well."""
    if len(shape) > MAX_NDIM:
        return f"{len(shape)} dimensions; at most {MAX_NDIM}"
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        return (f"shape {list(shape)} is larger than {MAX_ELEMENTS:,} elements (the product of "
                "its non-zero dimensions)")
    return None


def _check_gaps(gaps: _streams.Stream, b: int, nnz: int, numel: int, r: Reader) -> None:
    """What a parsed gap stream's header alone must satisfy; a constant one is checked whole."""
    m = (1 << b) - 1
    if gaps.count < nnz:  # one entry per non-zero, plus fillers
        r.fail(f"gap stream holds {gaps.count:,} entries; expected {nnz:,}")
    s = gaps.symbol
    if s is None or gaps.count == 0:
        return
    if s > m:
        r.fail("gap symbol outside its alphabet")
    if s == m:
        r.fail("gap stream ends with a filler entry")
    if gaps.count != nnz:
        r.fail(f"gap stream holds {gaps.count:,} entries; expected {nnz:,}")
    if nnz * (s + 1) > numel:
        r.fail(f"gap stream runs past the tensor's {numel:,} elements")


def _scatter(dense: np.ndarray, gaps: np.ndarray, constant: int | None, b: int, nnz: int,
             values_of, r: Reader) -> int:
    """Write the non-zeros (``values_of(lo, hi, where)``: entries lo..hi-1, to be written at
    ``where``) at the positions the gap symbols give, a chunk at a time; return the number of
    fillers. Positions only increase, so each chunk is checked against the tensor's end before
    it is written."""
    if constant is not None:  # entries every (s + 1) positions, from s on; checked by _check_gaps
        step = constant + 1
        for lo in range(0, nnz, SCATTER_CHUNK):
            hi = min(lo + SCATTER_CHUNK, nnz)
            where = slice(constant + lo * step, constant + (hi - 1) * step + 1, step)
            dense[where] = values_of(lo, hi, where)
        return 0
    m = (1 << b) - 1
    end = written = fillers = 0  # positions passed, entries written, fillers seen
    for i in range(0, gaps.size, SCATTER_CHUNK):
        pos = gaps[i:i + SCATTER_CHUNK].astype(np.int64)  # the chunk's one 8-byte array
        top = int(pos.max())
        if top > m:
            r.fail("gap symbol outside its alphabet")
        filler = pos == m if top == m else None
        pos += 1                       # an entry advances past the zeros it skips and itself
        if filler is not None:
            pos[filler] = m            # a filler advances m
            fillers += int(np.count_nonzero(filler))
        np.cumsum(pos, out=pos)
        pos += end - 1
        end = int(pos[-1]) + 1
        if end > dense.size:  # an entry beyond the end, or fillers after the last entry
            r.fail(f"gap stream runs past the tensor's {dense.size:,} elements")
        entries = pos if filler is None else pos[~filler]
        if written + entries.size > nnz:
            r.fail(f"gap stream holds more than {nnz:,} entries")
        dense[entries] = values_of(written, written + entries.size, entries)
        written += entries.size
    if written != nnz:
        r.fail(f"gap stream holds {written:,} entries; expected {nnz:,}")
    if gaps.size and gaps[-1] == m:
        r.fail("gap stream ends with a filler entry")
    return fillers
