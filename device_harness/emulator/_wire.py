"""The ADB message layer (AOSP ``packages/modules/adb/protocol.txt``).

A message is a 24-byte header of six little-endian u32 -- command, arg0, arg1, payload length,
payload checksum (a plain byte sum), magic (command XOR 0xffffffff) -- followed by the payload.
Peers at version 0x01000001 or later may send 0 as the checksum and skip checking it.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass


def _cmd(name: bytes) -> int:
    return int.from_bytes(name, "little")


A_SYNC, A_CNXN, A_AUTH, A_OPEN = _cmd(b"SYNC"), _cmd(b"CNXN"), _cmd(b"AUTH"), _cmd(b"OPEN")
A_OKAY, A_CLSE, A_WRTE, A_STLS = _cmd(b"OKAY"), _cmd(b"CLSE"), _cmd(b"WRTE"), _cmd(b"STLS")
KNOWN_COMMANDS = frozenset({A_SYNC, A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_STLS})

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3

VERSION_MIN = 0x01000000           # checksums computed and checked
VERSION_SKIP_CHECKSUM = 0x01000001  # checksum may be 0; receiver checks magic and length only
MAX_PAYLOAD_V1 = 4096               # what a 0x01000000 peer may assume, and the CNXN/AUTH limit
MAX_PAYLOAD = 1024 * 1024           # today's adbd

HEADER = struct.Struct("<6I")
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # several 1 MiB payloads in flight without a stall


class ProtocolError(Exception):
    """The peer sent something that is not an ADB message."""


class IdleTimeout(TimeoutError):
    """No message started within the idle timeout (as opposed to a message left half-sent)."""


def magic_ok(cmd: int, magic: int) -> bool:
    """The header's own consistency check: magic is the command XOR 0xffffffff."""
    return magic == cmd ^ 0xFFFFFFFF


def tune_socket(sock: socket.socket, buffer_bytes: int = SOCKET_BUFFER_BYTES) -> None:
    """Socket options for either end of an ADB connection: TCP_NODELAY (a small message must not
    wait for the peer's delayed ACK of the last one), keepalive (notice a peer that vanished
    without closing), and large buffers (a 1 MiB WRTE is not cut into many small reads)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)


def command_name(cmd: int) -> str:
    raw = cmd.to_bytes(4, "little")
    return raw.decode("ascii") if raw.isalpha() else f"0x{cmd:08x}"


def checksum(data: bytes | bytearray | memoryview) -> int:
    if len(data) < 4096:
        return sum(data) & 0xFFFFFFFF
    import numpy as np  # a C loop: Python's sum() takes ~4 ms per MiB

    return int(np.frombuffer(data, dtype=np.uint8).sum(dtype=np.uint64)) & 0xFFFFFFFF


def pack(cmd: int, arg0: int, arg1: int, payload: bytes = b"", *, with_checksum: bool = True) -> bytes:
    """Header and payload as one buffer, so each message goes out in one write."""
    header = HEADER.pack(cmd, arg0, arg1, len(payload),
                         checksum(payload) if with_checksum and payload else 0, cmd ^ 0xFFFFFFFF)
    return header + payload if payload else header


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    payload: bytes

    @property
    def name(self) -> str:
        return command_name(self.command)


class MessageReader:
    """Reads whole messages from a socket through one large receive buffer.

    ``idle_timeout_s`` bounds the wait for the first byte of a message (IdleTimeout),
    ``message_timeout_s`` the time for the rest of it once started (TimeoutError). Both restart
    with every byte that arrives, so a peer trickling one byte at a time is bounded only by
    ``deadline`` (a ``time.monotonic()`` instant, or None): past it, every read fails.
    """

    def __init__(self, sock: socket.socket, *, idle_timeout_s: float | None,
                 message_timeout_s: float) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.idle_timeout_s = idle_timeout_s
        self.message_timeout_s = message_timeout_s
        self.deadline: float | None = None

    def _limit(self, timeout_s: float | None) -> float | None:
        if self.deadline is None:
            return timeout_s
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left if timeout_s is None else min(timeout_s, left)

    def _fill(self, n: int, timeout_s: float | None, *, idle: bool = False) -> None:
        while len(self._buf) < n:
            self._sock.settimeout(self._limit(timeout_s))
            try:
                chunk = self._sock.recv(max(n - len(self._buf), 256 * 1024))
            except TimeoutError:
                if idle and not self._buf:
                    raise IdleTimeout(f"no message for {timeout_s} s") from None
                raise
            if not chunk:
                raise ConnectionResetError("peer closed the connection")
            self._buf += chunk
            timeout_s = self.message_timeout_s

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read(self, *, max_payload: int, verify_checksum: bool) -> Message:
        if self._buf:
            self._fill(HEADER.size, self.message_timeout_s)
        else:
            self._fill(HEADER.size, self.idle_timeout_s, idle=True)
        cmd, arg0, arg1, length, check, magic = HEADER.unpack(self._take(HEADER.size))
        if not magic_ok(cmd, magic) or cmd not in KNOWN_COMMANDS:
            raise ProtocolError(f"bad message header (command 0x{cmd:08x}, magic 0x{magic:08x})")
        if length > max_payload:
            raise ProtocolError(f"{command_name(cmd)} payload of {length} bytes exceeds {max_payload}")
        self._fill(length, self.message_timeout_s)
        payload = self._take(length)
        if verify_checksum and payload and checksum(payload) != check:
            raise ProtocolError(f"{command_name(cmd)} payload checksum mismatch")
        return Message(cmd, arg0, arg1, payload)
