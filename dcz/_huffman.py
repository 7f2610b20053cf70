"""Canonical Huffman coding (the paper's coder), vectorised with numpy.

Only code lengths are stored; codes are canonical (shorter first, then by symbol), so the encoder
and decoder rebuild identical codes from the lengths. Lengths are limited to ``MAX_LEN`` bits so
the decoder can use one flat lookup table of ``2**max_len`` entries.

Decoding is inherently sequential (a symbol's start depends on every earlier code length), so the
encoder cuts the stream into lanes of ``lane`` symbols and records where each lane starts (a few
bits per lane, well under 0.5% of the stream). The decoder then advances all lanes together, one
table lookup per step over an array of lanes: ``lane`` numpy steps instead of ``n`` Python steps.
"""
from __future__ import annotations

import numpy as np

from ._bits import pack_codes, read_bits, windows

MAX_LEN = 20  # lookup table of at most 2**20 entries; alphabets are at most 2**16 symbols
LANE = 4096   # symbols per lane: ~2,400 lanes for 10M symbols; one start offset per lane
TABLE_MIN_BITS = 12  # a 4096-entry lookup table is always worth building (~40 us)


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (uint8, 0 for absent symbols), limited to ``max_len`` bits.

    A single present symbol gets length 1. The limit is met by halving the counts (keeping every
    present symbol at least 1) and rebuilding, which costs little: it only triggers for streams
    whose rarest symbols are ~2**-20 as frequent as the commonest.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.uint8)
    present = np.flatnonzero(counts > 0)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present] = 1
        return lengths
    if present.size > 2**max_len:
        raise ValueError(f"{present.size} symbols cannot have codes of at most {max_len} bits")
    weights = counts[present]
    while True:
        depth = _huffman_depths(weights)
        if depth.max() <= max_len:
            break
        weights = (weights + 1) >> 1
    lengths[present] = depth
    return lengths


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of a Huffman tree over ``weights`` (all > 0, at least two).

    The two-queue construction: leaves sorted by weight, merged nodes come out in non-decreasing
    order, so the two lightest nodes are always at the front of one of the two queues (O(n)).
    """
    n = weights.size
    order = np.argsort(weights, kind="stable")
    leaf_w = weights[order].tolist()
    node_w: list[int] = []        # weights of merged nodes, in creation order
    parent = [0] * (2 * n - 1)    # leaves 0..n-1 (sorted order), merged nodes n..2n-2
    i = j = 0                     # fronts of the leaf queue and the merged queue

    def pop() -> tuple[int, int]:
        nonlocal i, j
        if i < n and (j >= len(node_w) or leaf_w[i] <= node_w[j]):
            i += 1
            return leaf_w[i - 1], i - 1
        j += 1
        return node_w[j - 1], n + j - 1

    for k in range(n - 1):
        w1, a = pop()
        w2, b = pop()
        parent[a] = parent[b] = n + k
        node_w.append(w1 + w2)
    depth = [0] * (2 * n - 1)
    for node in range(2 * n - 3, -1, -1):  # parents are created after children: walk back
        depth[node] = depth[parent[node]] + 1
    out = np.empty(n, dtype=np.uint8)
    out[order] = depth[:n]
    return out


def canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Canonical codes: (symbols in code order, their lengths, their codes, max length).

    The code of the i-th symbol in (length, symbol) order is its left-aligned Kraft prefix sum,
    which is what the usual "code = (code + 1) << (len - prevlen)" loop computes.
    """
    present = np.flatnonzero(lengths)
    order = present[np.lexsort((present, lengths[present]))]
    lens = lengths[order].astype(np.int64)
    max_len = int(lens.max()) if lens.size else 0
    span = np.left_shift(1, max_len - lens)  # leaf size in units of 2**-max_len
    left = np.concatenate(([0], np.cumsum(span)[:-1]))
    codes = left >> (max_len - lens)
    return order, lens, codes, max_len


def kraft_ok(lengths: np.ndarray) -> bool:
    """True if the lengths describe a prefix code (Kraft sum <= 1)."""
    lens = lengths[lengths > 0].astype(np.int64)
    if lens.size == 0:
        return True
    top = int(lens.max())
    return int(np.left_shift(1, top - lens).sum()) <= (1 << top)


def encode(symbols: np.ndarray, lengths: np.ndarray,
           lane: int = LANE) -> tuple[bytes, int, np.ndarray]:
    """Encode; return (payload, payload bits, bits in each lane but the last): the lane sizes let
    the decoder start every lane at once."""
    order, lens, codes, _ = canonical(lengths)
    code_of = np.zeros(lengths.size, dtype=np.uint64)
    code_of[order] = codes
    sym_len = lengths.astype(np.uint64)[symbols]
    data, total = pack_codes(code_of[symbols], sym_len)
    lane_bits = np.add.reduceat(sym_len, np.arange(0, symbols.size, lane)) if symbols.size else \
        np.zeros(0, dtype=np.uint64)
    return data, total, lane_bits[:-1]


def uses_table(max_len: int, count: int) -> bool:
    """Decode through a flat table of ``2**max_len`` entries? Only where building it costs less
    than the stream: a short stream with a long code would otherwise cost milliseconds per
    byte of file."""
    return 1 << max_len <= max(1 << TABLE_MIN_BITS, 2 * count)


def decode(data: bytes | memoryview, total_bits: int, count: int, lengths: np.ndarray,
           lane_bits: np.ndarray, lane: int = LANE, dtype: type = np.int32) -> np.ndarray:
    """Decode ``count`` symbols, given the bits in each lane but the last (as encode returns
    them). Raises ValueError if the payload does not decode exactly.

    Memory: twice the result (``dtype``, which must hold every symbol; decoded lane by lane, then
    put in order), the payload's windows (8 bytes per payload byte) and, where uses_table, a
    lookup table of 10 bytes per ``2**max_len``."""
    n_lanes = -(-count // lane) if count else 0
    if lane_bits.size != max(n_lanes - 1, 0):
        raise ValueError(f"expected {max(n_lanes - 1, 0)} lane offsets, found {lane_bits.size}")
    if count == 0:
        if total_bits:
            raise ValueError("empty stream with a non-empty payload")
        return np.zeros(0, dtype=dtype)
    order, lens, codes, width = canonical(lengths)
    span = np.left_shift(1, width - lens)
    filled = int(span.sum())
    complete = filled == 1 << width
    if uses_table(width, count):
        # Flat lookup table: every width-bit window whose prefix is a code maps to that code.
        # Windows that start no code (an incomplete code) keep length 0, and are refused below.
        search = None
        sym_of = np.zeros(1 << width, dtype=dtype)
        len_of = np.zeros(1 << width, dtype=np.uint64)
        sym_of[:filled] = np.repeat(order, span)
        len_of[:filled] = np.repeat(lens, span).astype(np.uint64)
    else:
        # A table would cost more than the stream: find each window's code among the codes'
        # left-aligned starts instead (they ascend); past the last code, a length-0 "no code".
        search = np.append(np.cumsum(span) - span, filled).astype(np.uint64)
        sym_of = np.append(order, 0).astype(dtype)
        len_of = np.append(lens, 0).astype(np.uint64)

    lane_start = np.zeros(n_lanes, dtype=np.uint64)
    lane_start[1:] = np.cumsum(np.asarray(lane_bits, dtype=np.uint64), dtype=np.uint64)
    lane_end = np.append(lane_start[1:], np.uint64(total_bits))
    if np.any(lane_end < lane_start):
        raise ValueError("lane offsets are not increasing")
    steps = min(lane, count)
    last_count = count - (n_lanes - 1) * lane
    # Padding lets the last lane run past its end without reading outside the buffer.
    W = windows(data, pad_bytes=(steps * width) // 8 + 8)
    pos = lane_start.copy()
    out = np.empty((steps, n_lanes), dtype=dtype)
    last_end = None
    for i in range(steps):
        if i == last_count:
            last_end = int(pos[-1])
        win = read_bits(W, pos, width)
        key = win if search is None else np.searchsorted(search, win, side="right") - 1
        np.take(sym_of, key, out=out[i])
        advance = len_of[key]
        if not complete and not advance[:n_lanes if i < last_count else -1].all():
            raise ValueError("Huffman payload holds a bit pattern that is no code")
        pos += advance
    if last_end is None:
        last_end = int(pos[-1])
    ends = pos.copy()
    ends[-1] = last_end
    if not np.array_equal(ends, lane_end):
        raise ValueError("Huffman payload does not decode to the recorded lane boundaries")
    return np.ascontiguousarray(out.T).reshape(-1)[:count]
