"""The services the emulated device offers: ``shell:`` / ``exec:`` and ``sync:`` (v1).

sync (AOSP ``SYNC.TXT``/``sync.md``): requests are an 8-byte header (4-char id, u32 length)
and, for path requests, the path. Requests may arrive split or coalesced across WRTE packets
(adb pipelines SEND, DATA..., DONE), so the request stream is parsed as bytes.

* ``STAT path`` -> ``STAT`` mode size mtime (all zero when missing or refused: v1 has no error)
* ``LIST dir``  -> ``DENT`` mode size mtime namelen name ... then ``DONE`` (a zeroed dent)
* ``SEND path,mode`` ``DATA``... ``DONE mtime`` -> ``OKAY`` or ``FAIL`` message; the file appears
  under its name only when complete; missing parent folders are created (fixed_push_mkdir)
* ``RECV path`` -> ``DATA``... ``DONE``, or ``FAIL`` message
* ``QUIT`` -> the stream is closed
"""
from __future__ import annotations

import logging
import os
import signal
import stat
import struct
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path

from ._daemon import Stream, StreamClosed
from ._sandbox import Sandbox, SandboxError

log = logging.getLogger("device_harness.emulator")

SYNC_DATA_MAX = 64 * 1024
_REQ = struct.Struct("<4sI")
_STAT = struct.Struct("<4sIII")
_DENT = struct.Struct("<4sIIII")


# -- shell ----------------------------------------------------------------------------------------
def shell_service(stream: Stream, service: str, sandbox: Sandbox) -> None:
    """``shell:CMD`` / ``exec:CMD``: adb's raw shell, stdout and stderr in one stream; the
    stream closes when the command ends (no exit status: that needs shell_v2)."""
    name, _, command = service.partition(":")
    if "v2" in name.split(",")[1:]:
        stream.write(b"error: this device does not offer shell protocol v2\n")
        return
    proc = sandbox.spawn(command)
    feeder = threading.Thread(target=_feed_stdin, args=(stream, proc), daemon=True)
    feeder.start()
    finished = False
    try:
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 64 * 1024):
            stream.write(chunk)
        proc.wait()
        finished = True
    finally:
        if not finished:  # the peer left first: end the command, as a hung-up terminal would
            _end_process_group(proc)
        proc.stdout.close()


def _feed_stdin(stream: Stream, proc: subprocess.Popen[bytes]) -> None:
    try:
        while (data := stream.read()) is not None:
            proc.stdin.write(data)
    except (OSError, StreamClosed):
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
    if stream.closed and proc.poll() is None:
        _end_process_group(proc)


def _end_process_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGHUP, 0.5), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# -- sync -----------------------------------------------------------------------------------------
class _Requests:
    """The client's side of a sync stream, as bytes."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._head = 0  # offset into _chunks[0]

    def read_exact(self, n: int) -> bytes | None:
        if n == 0:
            return b""
        while self._size < n:
            data = self._stream.read()
            if data is None:
                return None
            self._chunks.append(data)
            self._size += len(data)
        first = self._chunks[0]
        if len(first) - self._head >= n:  # the common case: no joining
            out = first[self._head:self._head + n]
            self._head += n
            if self._head == len(first):
                self._chunks.popleft()
                self._head = 0
        else:
            parts, need = [], n
            while need:
                chunk = self._chunks[0]
                take = min(need, len(chunk) - self._head)
                parts.append(chunk[self._head:self._head + take])
                need -= take
                self._head += take
                if self._head == len(chunk):
                    self._chunks.popleft()
                    self._head = 0
            out = b"".join(parts)
        self._size -= n
        return out

    def buffered(self) -> bool:
        return self._size > 0


class _Replies:
    """Our side: replies are batched into WRTE packets and flushed before we wait for input."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= self._stream.conn.max_payload:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            self._stream.write(data)


def _fail(replies: _Replies, message: str) -> None:
    data = message.encode("utf-8", "replace")
    replies.add(_REQ.pack(b"FAIL", len(data)) + data)


def sync_service(stream: Stream, service: str, sandbox: Sandbox) -> None:
    requests, replies = _Requests(stream), _Replies(stream)
    while True:
        if not requests.buffered():
            replies.flush()
        header = requests.read_exact(_REQ.size)
        if header is None:
            return
        ident, length = _REQ.unpack(header)
        if ident == b"QUIT":
            replies.flush()
            return
        if ident not in (b"STAT", b"LIST", b"SEND", b"RECV"):
            _fail(replies, f"unknown sync request {ident!r}")
            replies.flush()
            return
        if length > 1024:
            _fail(replies, f"path too long ({length} bytes)")
            replies.flush()
            return
        raw = requests.read_exact(length)
        if raw is None:
            return
        path = raw.decode("utf-8", "surrogateescape")
        if ident == b"STAT":
            replies.add(_stat(sandbox, path))
        elif ident == b"LIST":
            _list(sandbox, path, replies)
        elif ident == b"RECV":
            _recv(sandbox, path, replies)
        elif not _send(sandbox, path, requests, replies):
            replies.flush()
            return


def _stat(sandbox: Sandbox, path: str) -> bytes:
    try:
        st = os.lstat(sandbox.host_path(path))
    except (SandboxError, OSError):
        return _STAT.pack(b"STAT", 0, 0, 0)
    return _STAT.pack(b"STAT", st.st_mode & 0xFFFFFFFF, min(st.st_size, 0xFFFFFFFF),
                      int(st.st_mtime) & 0xFFFFFFFF)


def _list(sandbox: Sandbox, path: str, replies: _Replies) -> None:
    try:
        folder = sandbox.host_path(path)
        names = [".", ".."] + sorted(os.listdir(folder))
    except SandboxError as exc:
        _fail(replies, str(exc))
        return
    except OSError:
        names = []  # adbd lists nothing for a folder it cannot open
    for name in names:
        try:
            st = os.lstat(folder / name)
        except OSError:
            continue
        encoded = name.encode("utf-8", "surrogateescape")
        replies.add(_DENT.pack(b"DENT", st.st_mode & 0xFFFFFFFF, min(st.st_size, 0xFFFFFFFF),
                               int(st.st_mtime) & 0xFFFFFFFF, len(encoded)) + encoded)
    replies.add(_DENT.pack(b"DONE", 0, 0, 0, 0))


def _recv(sandbox: Sandbox, path: str, replies: _Replies) -> None:
    try:
        host = sandbox.host_path(path)
        with open(host, "rb") as fh:
            while chunk := fh.read(SYNC_DATA_MAX):
                replies.add(_REQ.pack(b"DATA", len(chunk)) + chunk)
    except SandboxError as exc:
        _fail(replies, str(exc))
        return
    except OSError as exc:
        _fail(replies, f"{path}: {exc.strerror or exc}")
        return
    replies.add(_REQ.pack(b"DONE", 0))


def _send(sandbox: Sandbox, spec: str, requests: _Requests, replies: _Replies) -> bool:
    """Receive one file. False when the stream must end (a protocol error or a closed peer)."""
    path, comma, mode_text = spec.rpartition(",")
    error, fh, tmp, host, mode = None, None, None, None, 0o644
    try:
        if not comma or not mode_text.isdigit():
            raise SandboxError(f"bad SEND request {spec!r}: expected 'path,mode'")
        mode = int(mode_text)
        if stat.S_ISLNK(mode):
            raise SandboxError(f"{path}: symbolic links are not supported by the emulated device")
        host = sandbox.host_path(path)
        if host.is_dir():
            raise SandboxError(f"{path}: is a directory")
        host.parent.mkdir(parents=True, exist_ok=True)
        sandbox.host_path(path)  # re-check: the parent may be a symlink that leads out
        fd, tmp_name = tempfile.mkstemp(prefix=f".{host.name[:50]}.", suffix=".part", dir=host.parent)
        tmp, fh = Path(tmp_name), os.fdopen(fd, "wb")
    except (SandboxError, OSError) as exc:
        error = str(exc) if isinstance(exc, SandboxError) else f"{path}: {exc.strerror or exc}"
    try:
        while True:  # read DATA... DONE even after an error: the client has already sent them
            header = requests.read_exact(_REQ.size)
            if header is None:
                return False
            ident, length = _REQ.unpack(header)
            if ident == b"DONE":
                mtime = length
                break
            if ident != b"DATA" or length > SYNC_DATA_MAX:
                _fail(replies, "oversize data message" if ident == b"DATA"
                      else f"expected DATA or DONE, got {ident!r}")
                return False
            data = requests.read_exact(length)
            if data is None:
                return False
            if fh is not None and error is None:
                try:
                    fh.write(data)
                except OSError as exc:
                    error = f"{path}: {exc.strerror or exc}"
        if error is None and fh is not None:
            try:
                fh.close()
                fh = None
                os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
                os.utime(tmp, (mtime, mtime))
                os.replace(tmp, host)
                tmp = None
            except OSError as exc:
                error = f"{path}: {exc.strerror or exc}"
        if error is None:
            replies.add(_REQ.pack(b"OKAY", 0))
        else:
            log.info("sync SEND refused: %s", error)
            _fail(replies, error)
        return True
    finally:
        if fh is not None:
            fh.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


SERVICES = {"shell:": shell_service, "shell,": shell_service, "exec:": shell_service,
            "sync:": sync_service}
