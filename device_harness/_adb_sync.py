"""A push (sync ``SEND``), done here over adb-shell's stream API instead of by its ``push``.

adb-shell's push has two faults that this replaces:

* it waits for an OKAY after each WRTE and drops any data packet that comes instead; real (old C)
  adbd answers a SEND it cannot open with FAIL at once, before reading the data, so that FAIL
  was lost and the push hung until its deadline, then looked like a transient timeout;
* it sends one DATA chunk of half the device's message size per WRTE, so against a 4 KiB device
  it needs twice the messages (each a round trip) of Google's adb.

Here the sync request stream -- ``SEND path,mode``, ``DATA`` chunks of 64 KiB (the sync
protocol's largest), ``DONE mtime`` -- is cut into WRTE packets that fill the device's maximum
payload, a chunk straddling two packets where it must (adbd parses the stream as bytes, and so
does the emulated device). File data is read straight into the packet buffer behind room kept
for the message header, and the packet leaves in one write: the data is never copied in Python.
One WRTE is outstanding at a time (adb's flow control); whatever the device sends meanwhile is
read as it comes, so a FAIL ends the push at once with the device's own message.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from .emulator import _wire as w

SYNC_DATA_MAX = 64 * 1024  # the sync protocol's largest DATA chunk (adbd refuses more)
_SYNC = struct.Struct("<4sI")


class PushRefused(Exception):
    """The device answered the SEND with FAIL; ``args[0]`` is its message. ``stream_closed``
    says whether the sync stream was closed cleanly afterwards (else drop the connection)."""

    stream_closed = True


class _Sender:
    def __init__(self, adb: Any, info: Any) -> None:
        self.adb, self.info = adb, info
        self.io = adb._io_manager
        self.transport = self.io._transport
        size = min(int(adb._maxdata or w.MAX_PAYLOAD_V1), w.MAX_PAYLOAD)
        self.buf = bytearray(w.HEADER.size + size)
        self.view = memoryview(self.buf)
        self.pos = w.HEADER.size
        self.reply = bytearray()
        self.replied_okay = False

    # -- the request stream, packed into full WRTE packets ----------------------------------------
    def put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), len(self.buf) - self.pos)
            self.buf[self.pos:self.pos + n] = view[:n]
            self.pos += n
            view = view[n:]
            if self.pos == len(self.buf):
                self.flush()

    def put_file(self, fh: BinaryIO, count: int, name: str) -> None:
        while count:
            n = min(count, len(self.buf) - self.pos)
            end = self.pos + n
            while self.pos < end:
                got = fh.readinto(self.view[self.pos:end])
                if not got:
                    raise OSError(f"{name} shrank while it was being pushed")
                self.pos += got
            count -= n
            if self.pos == len(self.buf):
                self.flush()

    def flush(self) -> None:
        n = self.pos - w.HEADER.size
        if not n:
            return
        packet = self.view[:self.pos]
        # A device at protocol 0x01000001 ignores checksums; an older one verifies every one.
        check = (w.checksum(packet[w.HEADER.size:])
                 if getattr(self.transport, "checksums_needed", True) else 0)
        w.HEADER.pack_into(self.buf, 0, w.A_WRTE, self.info.local_id, self.info.remote_id, n,
                           check, w.A_WRTE ^ 0xFFFFFFFF)
        send_raw = getattr(self.transport, "send_raw", None)
        if send_raw is not None:  # our TCP transport: header and payload in one write, no copy
            send_raw(packet, self.info.transport_timeout_s)
        else:  # any other transport (USB): through adb-shell, which packs its own header
            from adb_shell.adb_message import AdbMessage

            self.io.send(AdbMessage(b"WRTE", self.info.local_id, self.info.remote_id,
                                    bytes(packet[w.HEADER.size:])), self.info)
        self.pos = w.HEADER.size
        self._wait(for_okay=True)

    def finish(self) -> None:
        """Send what is buffered (DONE included) and wait for the device's verdict."""
        self.flush()
        self._wait(for_okay=False)

    # -- what comes back ----------------------------------------------------------------------------
    def _wait(self, *, for_okay: bool) -> None:
        """Read this stream's packets until the device OKAYs our WRTE (``for_okay``) or, after
        DONE, until its sync reply is complete. A FAIL raises PushRefused as soon as it is whole."""
        while for_okay or not self.replied_okay:
            cmd, _a0, _a1, data = self.io.read([b"OKAY", b"WRTE", b"CLSE"], self.info)
            if cmd == b"OKAY":
                if for_okay:
                    return
            elif cmd == b"CLSE":
                raise ConnectionResetError("the device closed the sync stream during a push")
            else:
                self._okay_theirs()
                self.reply += data
                self._parse_reply()

    def _okay_theirs(self) -> None:
        from adb_shell.adb_message import AdbMessage

        self.io.send(AdbMessage(b"OKAY", self.info.local_id, self.info.remote_id), self.info)

    def _parse_reply(self) -> None:
        if len(self.reply) < _SYNC.size:
            return
        ident, length = _SYNC.unpack_from(self.reply)
        if ident == b"FAIL":
            if len(self.reply) >= _SYNC.size + length:
                raise PushRefused(bytes(self.reply[_SYNC.size:_SYNC.size + length])
                                  .decode("utf-8", "replace"))
        elif ident == b"OKAY":
            self.replied_okay = True
        else:
            from adb_shell.exceptions import InvalidResponseError

            raise InvalidResponseError(f"unexpected sync reply {bytes(ident)!r} to a push")


def sync_send(adb: Any, local: Path, remote: str, *, mode: int, mtime: int, timeout_s: float) -> None:
    """Push ``local`` to ``remote`` on an adb-shell AdbDevice that is connected; raise
    PushRefused with the device's message when it says FAIL."""
    path = f"{remote},{mode}".encode("utf-8")
    if len(path) > 1024:  # adbd's limit on a sync request's path
        raise PushRefused(f"{remote}: device path too long ({len(path)} bytes, at most 1024)")
    info = adb._open(b"sync:", timeout_s, timeout_s, None)
    try:
        sender = _Sender(adb, info)
        with open(local, "rb", buffering=0) as fh:  # unbuffered: read straight into packets
            size = os.fstat(fh.fileno()).st_size
            sender.put(_SYNC.pack(b"SEND", len(path)) + path)
            for offset in range(0, size, SYNC_DATA_MAX):
                chunk = min(SYNC_DATA_MAX, size - offset)
                sender.put(_SYNC.pack(b"DATA", chunk))
                sender.put_file(fh, chunk, str(local))
        sender.put(_SYNC.pack(b"DONE", mtime & 0xFFFFFFFF))
        sender.finish()
    except PushRefused as refused:
        try:
            adb._clse(info)  # the device may still be waiting for our data: end the stream
        except Exception:  # noqa: BLE001 - any failure here: the caller drops the connection
            refused.stream_closed = False
        raise
    adb._clse(info)
