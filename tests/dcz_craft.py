"""Crafting .dcz files byte by byte, for the tests that feed the reader what pack never writes
(false claims, hostile metadata, streams at their limits), and measuring what a load costs."""
from __future__ import annotations

import struct
import tracemalloc
import zlib

from dccore.errors import ContainerError
from dcz import _format, load

F32, F16, BF16, F64 = 1, 2, 3, 4   # dtype codes


def tensor(shape, storage, body, dtype=F32, name="fc.weight") -> bytes:
    """A tensor section's payload: name, dtype, shape, storage kind, then ``body`` as given."""
    raw = name.encode()
    return (struct.pack("<H", len(raw)) + raw + bytes([dtype, len(shape)])
            + b"".join(struct.pack("<Q", d) for d in shape) + bytes([storage]) + body)


def constant(alphabet: int, n: int, symbol: int) -> bytes:
    """A constant stream: ``n`` copies of ``symbol``, no payload."""
    return bytes([3]) + struct.pack("<IQI", alphabet, n, symbol)


def write(path, *payloads: bytes, meta: bytes = zlib.compress(b"{}"), version: int = 1) -> None:
    """A whole file (header, metadata, one tensor section a payload, end) with valid CRCs."""
    data = _format.file_header(version) + _format.section(_format.TAG_META, meta)
    for payload in payloads:
        data += _format.section(_format.TAG_TENSOR, payload)
    path.write_bytes(data + _format.section(_format.TAG_END,
                                            struct.pack("<IQ", len(payloads), len(data))))


def load_measured(path, **kwargs):
    """(result or ContainerError, peak bytes traced). The peak, not a time: the work a decoder
    does for a file is bounded by what it allocates, and that does not depend on how fast or
    how loaded the machine is."""
    tracemalloc.start()
    try:
        try:
            out = load(path, **kwargs)
        except ContainerError as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
