"""adb-shell's TCP transport made fast and strict: TCP_NODELAY, coalesced writes, buffered reads,
EOF detection, an overall deadline, protocol 0x01000001 (see ``device_harness._adb``). Imported
when a device is first reached, so that importing the harness does not import adb-shell."""
from __future__ import annotations

import socket
import struct
import time

from adb_shell.exceptions import TcpTimeoutException
from adb_shell.transport.tcp_transport import TcpTransport

from .emulator._wire import (A_CNXN, HEADER, VERSION_MIN, VERSION_SKIP_CHECKSUM, checksum,
                             magic_ok, tune_socket)


class FastTcpTransport(TcpTransport):
    """adb-shell's TcpTransport with TCP_NODELAY, coalesced header+payload writes, sendall,
    buffered reads, EOF detection and an overall deadline (see the module docstring).

    Protocol version: adb-shell announces only 0x01000000, under which both ends compute
    and verify the byte sum of every payload (in Python, on this side). Like Google's adb,
    this transport announces 0x01000001 instead; a device that speaks it then skips
    checksums both ways (``checksums_needed`` is False), and the sums adb-shell still
    verifies on what it reads are filled in here for the packets that came without one."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.deadline: float | None = None
        self._rbuf = bytearray()
        self._header: bytes | None = None
        self._left = 0  # bytes of the current incoming message not yet handed to adb-shell
        self.device_version: int | None = None  # from the device's CNXN
        self.banner: bytes | None = None        # the device's CNXN payload (adb-shell drops it)

    @property
    def checksums_needed(self) -> bool:
        return self.device_version is None or self.device_version < VERSION_SKIP_CHECKSUM

    def _timeout(self, transport_timeout_s: float | None) -> float | None:
        if self.deadline is None:
            return transport_timeout_s
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TcpTimeoutException(f"{self._host}:{self._port}: deadline passed")
        return left if transport_timeout_s is None else min(transport_timeout_s, left)

    def connect(self, transport_timeout_s: float | None) -> None:
        self.close()
        self._rbuf.clear()
        self._header = None
        self._left = 0
        self.device_version = None
        self.banner = None
        sock = socket.create_connection((self._host, self._port),
                                        timeout=self._timeout(transport_timeout_s))
        tune_socket(sock)
        self._connection = sock

    def _fill(self, n: int, transport_timeout_s: float | None) -> None:
        while len(self._rbuf) < n:
            sock = self._socket()
            sock.settimeout(self._timeout(transport_timeout_s))
            try:
                chunk = sock.recv(max(n - len(self._rbuf), 256 * 1024))
            except TimeoutError:
                raise TcpTimeoutException(f"reading from {self._host}:{self._port} timed out "
                                          f"({transport_timeout_s} s)") from None
            if not chunk:
                raise ConnectionResetError(f"{self._host}:{self._port} closed the connection")
            self._rbuf += chunk

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        if not self._left:  # a message starts here: adb-shell reads its header first
            self._fill(HEADER.size, transport_timeout_s)
            self._left = HEADER.size + self._inspect(transport_timeout_s)
        self._fill(1, transport_timeout_s)
        n = min(numbytes, self._left, len(self._rbuf))
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        self._left -= n
        return out

    def _inspect(self, transport_timeout_s: float | None) -> int:
        """The payload length of the message whose header is buffered; note the device's
        version from its CNXN, and fill in a checksum the device left out."""
        cmd, arg0, _a1, length, check, magic = HEADER.unpack_from(self._rbuf)
        if not magic_ok(cmd, magic):
            return 0  # not a message: adb-shell reports it
        if cmd == A_CNXN:
            self.device_version = arg0
            self._fill(HEADER.size + length, transport_timeout_s)
            self.banner = bytes(self._rbuf[HEADER.size:HEADER.size + length])
        if length and not check:  # a non-empty payload never sums to 0: it was skipped
            self._fill(HEADER.size + length, transport_timeout_s)
            with memoryview(self._rbuf) as buf, buf[HEADER.size:HEADER.size + length] as payload:
                total = checksum(payload)
            struct.pack_into("<I", self._rbuf, 16, total)
        return length

    def bulk_write(self, data: bytes, transport_timeout_s: float | None) -> int:
        data = bytes(data)
        if self._header is None and len(data) == HEADER.size:
            cmd, a0, a1, length, check, magic = HEADER.unpack(data)
            if cmd == A_CNXN and a0 == VERSION_MIN and magic_ok(cmd, magic):
                data = HEADER.pack(cmd, VERSION_SKIP_CHECKSUM, a1, length, check, magic)
                self.device_version = None
            if length and magic_ok(cmd, magic):  # its payload is the next write
                self._header = data
                return len(data)
        if self._header is not None:
            data, self._header = self._header + data, None
        self.send_raw(data, transport_timeout_s)
        return len(data)

    def send_raw(self, packet: bytes | memoryview, transport_timeout_s: float | None) -> None:
        """One whole message, header and payload already packed (the push's path: its
        buffer is sent as it is, with no copy)."""
        if self._header is not None:
            raise RuntimeError("send_raw between a message header and its payload")
        sock = self._socket()
        sock.settimeout(self._timeout(transport_timeout_s))
        try:
            sock.sendall(packet)
        except TimeoutError:
            raise TcpTimeoutException(f"writing to {self._host}:{self._port} timed out "
                                      f"({transport_timeout_s} s)") from None

    def _socket(self) -> socket.socket:
        if self._connection is None:
            raise ConnectionResetError(f"{self._host}:{self._port}: not connected")
        return self._connection
