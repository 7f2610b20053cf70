"""One tensor section: plain bytes, or sparse (gaps + codebook + cluster indices, or raw values).

Section payload::

    u16 name length, name (UTF-8)
    u8 dtype, u8 ndim, ndim x u64 dims
    u8 storage: 0 plain, 1 codebook, 2 raw
      plain     u8 stored dtype, then numel values (little-endian)
      codebook  u64 nnz, u8 gap width b, gap stream,
                u8 index bits, u32 codebook size k, k values (tensor's dtype), index stream
      raw       u64 nnz, u8 gap width b, gap stream, nnz values (tensor's dtype)

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

from . import _streams
from ._format import Reader
from ._streams import StreamInfo

PLAIN, CODEBOOK, RAW = 0, 1, 2
STORAGE_NAMES = {PLAIN: "plain", CODEBOOK: "codebook", RAW: "raw"}
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
    codebook_bytes: int = 0
    values_bytes: int = 0        # raw non-zero values, or the plain data
    streams: tuple[StreamInfo, ...] = field(default=())

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

def encode_plain(name: str, tensor: torch.Tensor, plain_dtype: str) -> tuple[bytes, TensorRow]:
    spec = BY_TORCH[tensor.dtype]
    stored = spec
    if plain_dtype == "float16" and tensor.dtype in (torch.float32, torch.float64):
        stored = BY_TORCH[torch.float16]
        tensor = tensor.to(torch.float16)
    shape = tuple(tensor.shape)
    data = bit_pattern(tensor).astype(np.dtype(stored.bits).newbyteorder("<"), copy=False).tobytes()
    payload = _head(name, spec, shape, PLAIN) + bytes([stored.code]) + data
    return payload, _row(name, spec, shape, "plain", len(payload), values_bytes=len(data))


def _sparse_parts(tensor: torch.Tensor) -> tuple[_DType, np.ndarray, np.ndarray, np.ndarray]:
    """(dtype spec, non-zero values as bit patterns, their distinct values, zeros skipped before
    each non-zero): what both storage kinds and the gap stream are built from."""
    spec = BY_TORCH[tensor.dtype]
    flat = bit_pattern(tensor)
    positions = _nonzero(flat, spec)
    values = flat[positions]
    return spec, values, np.unique(values), np.diff(positions, prepend=-1) - 1


def encode_sparse(name: str, tensor: torch.Tensor, coder: str, bits: int | None,
                  index_bits: int | None) -> tuple[bytes, TensorRow]:
    shape = tuple(tensor.shape)
    spec, values, distinct, skips = _sparse_parts(tensor)
    storage = CODEBOOK if _shared(distinct.size, values.size, spec.itemsize, bits) else RAW

    # Zeros skipped before each non-zero -> gap stream with fillers.
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
    del skips, gaps, counts
    le = np.dtype(spec.bits).newbyteorder("<")
    body = struct.pack("<QB", values.size, b) + gap_data
    streams = [gap_info]
    codebook_bytes = values_bytes = 0
    width = None
    if storage == CODEBOOK:
        width = _streams.width_for(distinct.size) if bits is None else bits
        codebook, indices = codebook_indices(values, distinct, spec)
        codebook = codebook.astype(le).tobytes()
        idx_data, idx_info = _streams.encode(indices, 1 << width, coder, "indices")
        body += struct.pack("<BI", width, distinct.size) + codebook + idx_data
        streams.append(idx_info)
        codebook_bytes = len(codebook)
    else:
        raw = values.astype(le).tobytes()
        body += raw
        values_bytes = len(raw)
    payload = _head(name, spec, shape, storage) + body
    return payload, _row(name, spec, shape, STORAGE_NAMES[storage], len(payload),
                         nnz=int(values.size), bits=width, index_bits=b, fillers=fillers,
                         codebook_bytes=codebook_bytes, values_bytes=values_bytes,
                         streams=tuple(streams))


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
    spec, values, distinct, skips = _sparse_parts(tensor)
    gaps, _ = gap_symbols(skips, b)
    _, indices = codebook_indices(values, distinct, spec)
    return {"gaps": (gaps, 1 << b),
            "indices": (indices, 1 << _streams.width_for(distinct.size))}


def _shared(k: int, nnz: int, itemsize: int, bits: int | None) -> bool:
    """Codebook storage, or raw non-zero values? Raw when the layer is not shared: more distinct
    values than ``bits`` allow (or than 2**16), or, with ``bits`` unset, when raw is smaller
    (a pruned-only layer, whose every survivor is distinct)."""
    if bits is not None:
        return k <= (1 << bits)
    if k > MAX_CODEBOOK:
        return False
    return nnz * itemsize >= k * itemsize + (nnz * _streams.width_for(k) + 7) // 8


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
    codebook: np.ndarray | None   # float32 view of the codebook values


def decode(payload: memoryview, where: str, budget: list[int]) -> Decoded:
    """Decode one tensor section. ``budget[0]`` is the decoded bytes still allowed; it shrinks by
    the tensor's size, and the memory its decoding takes on the way must fit what is left."""
    r = Reader(payload, where)
    name, spec, shape = read_head(r)
    numel = math.prod(shape)
    if numel * spec.itemsize > budget[0]:
        r.fail(f"shape {list(shape)} claims {numel:,} elements ({numel * spec.itemsize:,} bytes), "
               f"more than this file may decode to ({budget[0]:,} bytes left); the header is "
               "corrupt (or pass a larger max_decoded_bytes)")
    budget[0] -= numel * spec.itemsize
    storage = r.u8("storage kind")
    if storage == PLAIN:
        stored = BY_CODE.get(r.u8("stored dtype"))
        if stored is None or (stored is not spec and not (
                stored.torch_dtype == torch.float16 and spec.torch_dtype in (torch.float32,
                                                                             torch.float64))):
            r.fail("invalid stored dtype for a plain tensor")
        raw = r.take(numel * stored.itemsize, "tensor data")
        r.done()
        bits = np.frombuffer(raw, dtype=np.dtype(stored.bits).newbyteorder("<")).astype(stored.bits)
        tensor = from_bit_pattern(bits, stored, shape)
        if stored is not spec:
            tensor = tensor.to(spec.torch_dtype)
        return Decoded(name, tensor, _row(name, spec, shape, "plain", len(payload),
                                          values_bytes=len(raw)), None)
    if storage not in (CODEBOOK, RAW) or not spec.floating:
        r.fail(f"invalid storage kind {storage} for a {dtype_name(spec.torch_dtype)} tensor")
    nnz = r.u64("non-zero count")
    b = r.u8("gap width")
    if nnz > numel or not 1 <= b <= MAX_INDEX_BITS:
        r.fail(f"{nnz:,} non-zeros of {numel:,} with {b}-bit gaps is impossible")
    # Everything is parsed and checked before anything is decoded: a false claim costs nothing.
    m = (1 << b) - 1
    gaps = _streams.parse(r, "gaps", nnz + (numel - nnz) // m)  # a filler skips m zeros
    _check_gaps(gaps, b, nnz, numel, r)
    le = np.dtype(spec.bits).newbyteorder("<")
    index_stream = codebook = None
    if storage == CODEBOOK:
        width = r.u8("index bits")
        k = r.u32("codebook size")
        if width > MAX_INDEX_BITS or k > (1 << width) or (nnz and k == 0):
            r.fail(f"codebook of {k:,} entries does not fit {width}-bit indices")
        raw_cb = r.take(k * spec.itemsize, "codebook")
        codebook = np.frombuffer(raw_cb, dtype=le).astype(spec.bits)
        index_stream = _streams.parse(r, "indices", nnz)
        if index_stream.count != nnz or index_stream.alphabet != (1 << width):
            r.fail(f"index stream holds {index_stream.count:,} symbols of alphabet "
                   f"{index_stream.alphabet:,}; expected {nnz:,} of {1 << width:,}")
        if nnz and index_stream.symbol is not None and index_stream.symbol >= k:
            r.fail("a cluster index points past the codebook")
    else:
        raw_vals = r.take(nnz * spec.itemsize, "non-zero values")
        values = np.frombuffer(raw_vals, dtype=le)
    r.done()
    work = gaps.work_bytes + (index_stream.work_bytes if index_stream else 0)
    if work > budget[0]:
        r.fail(f"decoding needs {work:,} bytes of working memory, more than this file may use "
               f"({budget[0]:,} bytes left); the header is corrupt (or pass a larger "
               "max_decoded_bytes)")

    streams = [gaps]
    if index_stream is None:
        def values_of(lo: int, hi: int) -> np.ndarray:
            return values[lo:hi]
    else:
        streams.append(index_stream)
        indices = index_stream.symbols()
        if index_stream.symbol is not None:
            only = codebook[index_stream.symbol] if nnz else codebook[:0]

            def values_of(lo: int, hi: int) -> np.ndarray:
                return only
        else:
            if indices.size and int(indices.max()) >= k:
                r.fail("a cluster index points past the codebook")

            def values_of(lo: int, hi: int) -> np.ndarray:
                return codebook[indices[lo:hi]]
    dense = np.zeros(numel, dtype=spec.bits)
    gap_symbols = gaps.symbols()
    fillers = _scatter(dense, gap_symbols, gaps.symbol, b, nnz, values_of, r)
    infos = (gaps.info(gap_symbols),) + ((index_stream.info(indices),) if index_stream else ())
    del gap_symbols
    row = _row(name, spec, shape, STORAGE_NAMES[storage], len(payload), nnz=int(nnz),
               bits=width if storage == CODEBOOK else None, index_bits=b, fillers=fillers,
               codebook_bytes=len(raw_cb) if storage == CODEBOOK else 0,
               values_bytes=len(raw_vals) if storage == RAW else 0, streams=infos)
    codebook_f32 = None
    if codebook is not None:
        with np.errstate(over="ignore"):  # float64 centroids past float32's range: inf, quietly
            codebook_f32 = _as_float(codebook, spec).astype(np.float32)
    return Decoded(name, from_bit_pattern(dense, spec, shape), row, codebook_f32)


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
    """Write the non-zeros (``values_of(lo, hi)``: entries lo..hi-1) at the positions the gap
    symbols give, a chunk at a time; return the number of fillers. Positions only increase, so
    each chunk is checked against the tensor's end before it is written."""
    if constant is not None:  # entries every (s + 1) positions, from s on; checked by _check_gaps
        step = constant + 1
        for lo in range(0, nnz, SCATTER_CHUNK):
            hi = min(lo + SCATTER_CHUNK, nnz)
            dense[constant + lo * step:constant + (hi - 1) * step + 1:step] = values_of(lo, hi)
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
        dense[entries] = values_of(written, written + entries.size)
        written += entries.size
    if written != nnz:
        r.fail(f"gap stream holds {written:,} entries; expected {nnz:,}")
    if gaps.size and gaps[-1] == m:
        r.fail("gap stream ends with a filler entry")
    return fillers
