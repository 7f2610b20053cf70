"""The .dcz byte layout: file header, CRC-guarded sections, and a bounds-checked reader.

File::

    magic   8 bytes  b"\\x89DCZ\\r\\n\\x1a\\n"  (PNG-style: catches text-mode and 7-bit mangling)
    version u32 LE   1, or 2 where a tensor uses a storage kind version 2 added
    crc     u32 LE   CRC32 of the 12 bytes above
    sections...      META (deflated JSON), one TENS per tensor, END

Section::

    tag     4 bytes  b"META" | b"TENS" | b"END "
    length  u64 LE   payload bytes
    payload
    crc     u32 LE   CRC32 of tag + length + payload

All integers are little-endian. Every length read from the file is checked against the bytes
that remain *before* anything is allocated, so a corrupt header fails fast with a
:class:`ContainerError` naming the file and the section.
"""
from __future__ import annotations

import struct
import zlib
from typing import NoReturn

from dccore.errors import ContainerError

MAGIC = b"\x89DCZ\r\n\x1a\n"
FORMAT_VERSION = 2   # the newest this reader understands; a writer writes the oldest it can
HEADER = struct.Struct("<8sII")
SECTION_HEAD = struct.Struct("<4sQ")
CRC = struct.Struct("<I")
END = struct.Struct("<IQ")    # END section payload: tensor count, bytes before the END section
TAG_META, TAG_TENSOR, TAG_END = b"META", b"TENS", b"END "
TAG_NAMES = {TAG_META: "metadata", TAG_TENSOR: "tensor", TAG_END: "end marker"}


def file_header(version: int = 1) -> bytes:
    head = MAGIC + struct.pack("<I", version)
    return head + CRC.pack(zlib.crc32(head))


def section(tag: bytes, payload: bytes) -> bytes:
    head = SECTION_HEAD.pack(tag, len(payload))
    return head + payload + CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


class Reader:
    """Sequential reads over a buffer; every read is bounds-checked and failures name ``where``."""

    def __init__(self, buf: memoryview | bytes, where: str, offset: int = 0) -> None:
        self.buf = memoryview(buf)
        self.where = where
        self.pos = offset

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def fail(self, message: str) -> NoReturn:
        raise ContainerError(f"{self.where}: {message}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.remaining:
            self.fail(f"{what} claims {n:,} bytes but only {self.remaining:,} remain "
                      "(file truncated or corrupt)")

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def done(self) -> None:
        if self.remaining:
            self.fail(f"{self.remaining:,} unexpected bytes at the end of the section")


def check_header(buf: memoryview, path: str) -> int:
    """Validate the file header; return the format version."""
    if len(buf) < HEADER.size:
        if MAGIC.startswith(bytes(buf[:len(MAGIC)])):
            raise ContainerError(f"{path}: file header: truncated ({len(buf)} bytes; a .dcz file "
                                 f"starts with a {HEADER.size}-byte header)")
        raise ContainerError(f"{path}: file header: not a .dcz file (wrong magic bytes)")
    magic, version, crc = HEADER.unpack(buf[:HEADER.size])
    if magic != MAGIC:
        raise ContainerError(f"{path}: file header: not a .dcz file (wrong magic bytes "
                             f"{magic[:8]!r}; expected {MAGIC!r})")
    if zlib.crc32(buf[:HEADER.size - 4]) != crc:
        raise ContainerError(f"{path}: file header: CRC32 mismatch; the file is corrupt")
    if version > FORMAT_VERSION:
        raise ContainerError(f"{path}: file header: format version {version} is newer than this "
                             f"deepcompress understands (version {FORMAT_VERSION}); upgrade "
                             "deepcompress to read it")
    if version < 1:
        raise ContainerError(f"{path}: file header: invalid format version {version}")
    return version


def read_section(reader: Reader, index: int, path: str) -> tuple[bytes, memoryview, str]:
    """Read section ``index`` at the reader's position; return (tag, payload, description)."""
    start = reader.pos
    where = f"{path}: section {index} (at byte {start})"
    if reader.remaining == 0:
        raise ContainerError(f"{where}: file ends before the end marker (truncated)")
    if reader.remaining < SECTION_HEAD.size:
        raise ContainerError(f"{where}: section header truncated ({reader.remaining} of "
                             f"{SECTION_HEAD.size} bytes)")
    tag, length = SECTION_HEAD.unpack(reader.buf[start:start + SECTION_HEAD.size])
    name = TAG_NAMES.get(tag)
    if name is None:
        raise ContainerError(f"{where}: unknown section tag {tag!r} (corrupt file, or written by "
                             "a newer deepcompress: upgrade)")
    where = f"{path}: section {index} ({name})"
    room = reader.remaining - SECTION_HEAD.size - CRC.size
    if length > room:
        raise ContainerError(f"{where}: claims {length:,} payload bytes but only {max(room, 0):,} "
                             "remain (file truncated or corrupt)")
    body = reader.buf[start:start + SECTION_HEAD.size + length]
    (crc,) = CRC.unpack(reader.buf[start + SECTION_HEAD.size + length:
                                   start + SECTION_HEAD.size + length + CRC.size])
    if zlib.crc32(body) != crc:
        raise ContainerError(f"{where}{_peek_name(tag, body)}: CRC32 mismatch; the file is corrupt")
    reader.pos = start + SECTION_HEAD.size + length + CRC.size
    return tag, body[SECTION_HEAD.size:], where


def _peek_name(tag: bytes, body: memoryview) -> str:
    """Best-effort tensor name for an error message about a section that failed its CRC."""
    if tag != TAG_TENSOR or len(body) < SECTION_HEAD.size + 2:
        return ""
    n = struct.unpack("<H", body[SECTION_HEAD.size:SECTION_HEAD.size + 2])[0]
    raw = bytes(body[SECTION_HEAD.size + 2:SECTION_HEAD.size + 2 + n])
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return f", probably tensor {name!r}" if name.isprintable() and len(raw) == n else ""
