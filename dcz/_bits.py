"""Vectorised bit packing: variable-length codes in, bytes out, and windows back.

Bits are written most-significant first (a code's first bit is the top bit of its first byte), so a
canonical Huffman code can be decoded by looking up the next ``L`` bits as an integer. Everything
is numpy over whole arrays; no per-symbol Python loop.
"""
from __future__ import annotations

import numpy as np

MAX_CODE_BITS = 32  # widest single code the packer accepts (Huffman codes are limited to 20)
UNPACK_CHUNK = 1 << 18  # values per step of unpack_fixed: ~2 MiB of positions, whatever the count
_U64 = np.uint64


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate ``codes[i]`` (each ``lengths[i]`` bits, MSB first); return (bytes, bit count)."""
    codes = np.asarray(codes, dtype=_U64)
    lengths = np.asarray(lengths, dtype=_U64)
    if codes.shape != lengths.shape or codes.ndim != 1:
        raise ValueError("codes and lengths must be 1-D arrays of equal length")
    keep = lengths > 0
    if not keep.all():
        codes, lengths = codes[keep], lengths[keep]
    if lengths.size == 0:
        return b"", 0
    ends = np.cumsum(lengths)
    total = int(ends[-1])
    starts = ends - lengths
    del ends
    word = starts >> _U64(6)
    shift = _U64(64) - (starts & _U64(63))  # bits left in the word at the code's start
    del starts
    fits = lengths <= shift
    # Part of each code that lands in its start word.
    head = np.where(fits, codes << np.where(fits, shift - lengths, 0).astype(_U64),
                    codes >> np.where(fits, 0, lengths - shift).astype(_U64))
    out = np.zeros(total // 64 + 2, dtype=_U64)
    # Codes never overlap, so OR within a word equals a sum; starts are sorted, so reduceat works.
    first = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
    out[word[first]] = np.add.reduceat(head, first)
    # Codes that cross a word boundary spill their low bits into the next word (one per boundary).
    spill = ~fits
    if spill.any():
        over = (lengths[spill] - shift[spill]).astype(_U64)
        low = codes[spill] & ((_U64(1) << over) - _U64(1))
        out[word[spill] + _U64(1)] |= low << (_U64(64) - over)
    data = out.astype(">u8").tobytes()[: (total + 7) // 8]
    return data, total


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers ``values`` in ``width`` bits each (MSB first)."""
    values = np.asarray(values)
    if width == 0 or values.size == 0:
        return b""
    if width > MAX_CODE_BITS:
        data, _ = pack_codes(values, np.full(values.shape, width, dtype=_U64))
        return data
    # One byte per bit, then packbits: cheaper than the general packer for equal widths.
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32)
    bits = ((values.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1)).tobytes()


def windows(data: bytes | memoryview, pad_bytes: int = 0) -> np.ndarray:
    """For each byte offset j, the 8 bytes starting there as a big-endian uint64.

    ``read_bits(W, pos, w)`` then reads any ``w`` <= 57 bits at bit position ``pos`` with one
    gather and two shifts. ``pad_bytes`` zero bytes are appended so reads past the end are safe.
    """
    buf = np.zeros(len(data) + pad_bytes + 8, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    view = np.lib.stride_tricks.sliding_window_view(buf, 8)[: len(data) + pad_bytes + 1]
    out = np.ascontiguousarray(view).view(">u8").reshape(-1)
    if not out.dtype.isnative:  # to native order in place: one 8-bytes-per-byte array, not two
        out = out.byteswap(inplace=True).view(out.dtype.newbyteorder())
    return out


def read_bits(W: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Read ``width`` bits (<= 57) at each bit position in ``pos`` (uint64) from ``windows`` W."""
    return (W[pos >> _U64(3)] << (pos & _U64(7))) >> _U64(64 - width)


def unpack_fixed(data: bytes | memoryview, count: int, width: int,
                 dtype: type = _U64) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: ``count`` values of ``width`` bits; needs enough bytes.

    Works in chunks, so beyond the result (``dtype``, which must hold ``width`` bits) it needs a
    few MiB however long the stream: a decoder's memory stays a small multiple of its output."""
    out = np.zeros(count, dtype=dtype)
    if width == 0 or count == 0:
        return out
    if len(data) * 8 < count * width:
        raise ValueError(f"{count} values of {width} bits need {(count * width + 7) // 8} bytes, "
                         f"got {len(data)}")
    data = memoryview(data).cast("B")
    for i in range(0, count, UNPACK_CHUNK):
        j = min(i + UNPACK_CHUNK, count)
        start = i * width
        W = windows(data[start >> 3:(j * width + 7) >> 3])
        pos = np.arange(j - i, dtype=_U64) * _U64(width) + _U64(start & 7)
        out[i:j] = read_bits(W, pos, width)
    return out
