"""Value blocks (format version 2): a run of n values of one unsigned width, stored as they are or
as coded byte planes.

    u8 layout: 0 as is, 1 byte planes
      as is   n values, little-endian
      planes  one stream per byte of a value, least significant byte first: n symbols each, of
              alphabet 256, coded like any stream (fixed width where coding would not pay)

Why byte planes: a float's bytes differ in kind. The top byte (sign and exponent) of trained
weights holds ~2.7 bits of information, the mantissa bytes nearly 8; coding each byte on its own
histogram (order 0) finds that, where a general-purpose compressor sees the four mixed together.
The block knows nothing of floats: the caller says which dtype the values are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _streams
from ._format import Reader
from ._streams import StreamInfo

AS_IS, PLANES = 0, 1
ALPHABET = 256


def le(dtype: type) -> np.dtype:
    """``dtype`` little-endian: the byte order every value in a file is stored in."""
    return np.dtype(dtype).newbyteorder("<")


def encode_as_is(bits: np.ndarray) -> bytes:
    return bytes([AS_IS]) + bits.astype(le(bits.dtype), copy=False).tobytes()


def encode_planes(bits: np.ndarray, coder: str, name: str) -> tuple[bytes, tuple[StreamInfo, ...]]:
    """The values as one coded stream per byte plane (streams ``name`` + "0", "1", ...)."""
    n = int(bits.size)
    itemsize = bits.dtype.itemsize
    by_byte = bits.astype(le(bits.dtype), copy=False).view(np.uint8).reshape(n, itemsize)
    parts, infos = [bytes([PLANES])], []
    for i in range(itemsize):
        plane = np.ascontiguousarray(by_byte[:, i])
        counts = np.bincount(plane, minlength=ALPHABET)
        # A near-uniform plane (low mantissa bytes) would only be coded to be thrown away.
        worth = _streams.estimate_bits(counts, ALPHABET, coder, exact=coder == "huffman") < 8 * n
        data, info = _streams.encode(plane, ALPHABET, coder if worth else "none", f"{name}{i}",
                                     counts)
        parts.append(data)
        infos.append(info)
    return b"".join(parts), tuple(infos)


def encode(bits: np.ndarray, coder: str, name: str,
           code: bool) -> tuple[bytes, tuple[StreamInfo, ...]]:
    """The smaller block: as is, or (when ``code`` and the coder is an entropy coder) planes."""
    plain = encode_as_is(bits)
    if not code or coder == "none" or bits.size == 0:
        return plain, ()
    planes, infos = encode_planes(bits, coder, name)
    return (planes, infos) if len(planes) < len(plain) else (plain, ())


@dataclass(frozen=True)
class Block:
    """A parsed value block: checked, located, not decoded."""

    count: int
    dtype: type                          # unsigned numpy type of the values
    raw: memoryview | None               # the values as is, or None for planes
    planes: tuple[_streams.Stream, ...]
    bytes: int

    @property
    def work_bytes(self) -> int:
        """Memory values() needs besides its result: one plane's decoding at a time."""
        return max((p.work_bytes for p in self.planes), default=0)

    def values(self) -> np.ndarray:
        if self.raw is not None:
            return np.frombuffer(self.raw, dtype=le(self.dtype)).astype(self.dtype)
        out = np.zeros(self.count, dtype=le(self.dtype))
        by_byte = out.view(np.uint8).reshape(self.count, np.dtype(self.dtype).itemsize)
        for i, plane in enumerate(self.planes):
            by_byte[:, i] = plane.symbols()
        return out.astype(self.dtype, copy=False)

    def infos(self, values: np.ndarray) -> tuple[StreamInfo, ...]:
        """The planes' StreamInfo, from the decoded values (a plane at a time)."""
        if not self.planes:
            return ()
        itemsize = np.dtype(self.dtype).itemsize
        by_byte = values.astype(le(self.dtype), copy=False).view(np.uint8).reshape(-1, itemsize)
        return tuple(p.info(by_byte[:, i]) for i, p in enumerate(self.planes))


def parse(r: Reader, count: int, dtype: type, name: str) -> Block:
    """Read a value block of ``count`` values of unsigned ``dtype``; check every claim."""
    start = r.pos
    layout = r.u8(f"{name} layout")
    itemsize = np.dtype(dtype).itemsize
    if layout == AS_IS:
        raw = r.take(count * itemsize, f"{name} values")
        return Block(count, dtype, raw, (), r.pos - start)
    if layout != PLANES:
        r.fail(f"{name}: unknown value layout {layout}")
    planes = []
    for i in range(itemsize):
        plane = _streams.parse(r, f"{name}{i}", count)
        if plane.count != count or plane.alphabet != ALPHABET:
            r.fail(f"{name}{i} stream holds {plane.count:,} symbols of alphabet "
                   f"{plane.alphabet:,}; expected {count:,} of {ALPHABET}")
        planes.append(plane)
    return Block(count, dtype, None, tuple(planes), r.pos - start)
