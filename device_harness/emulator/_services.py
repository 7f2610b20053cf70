"""The services the emulated device offers: ``shell:`` / ``exec:`` and ``sync:`` (v1).

sync (AOSP ``SYNC.TXT``/``sync.md``): requests are an 8-byte header (4-char id, u32 length)
and, for path requests, the path. Requests may arrive split or coalesced across WRTE packets
(adb pipelines SEND, DATA..., DONE), so the request stream is parsed as bytes.

* ``STAT path`` -> ``STAT`` mode size mtime (all zero when missing or refused: v1 has no error)
* ``LIST dir``  -> ``DENT`` mode size mtime namelen name ... then ``DONE`` (a zeroed dent)
* ``SEND path,mode`` ``DATA``... ``DONE mtime`` -> ``OKAY`` or ``FAIL`` message; the file appears
  under its name only when complete; missing parent folders are created (fixed_push_mkdir).
  With ``early_sync_fail`` (old adbd), a target that cannot be opened gets ``FAIL`` at once,
  before its data, which is then drained until ``DONE``, and the stream is closed
* Paths are opened folder by folder with O_NOFOLLOW (``Sandbox.open_parent``): no symbolic link
  is followed, not even one swapped in while a request is served
* ``RECV path`` -> ``DATA``... ``DONE``, or ``FAIL`` message
* ``QUIT`` -> the stream is closed
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import stat
import struct
import subprocess
import threading
from collections import deque

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
    stream closes when the command ends (no exit status: that needs shell_v2).

    adbd runs ``sh -c CMD``; a command the kernel cannot pass to sh (one argument over 128 KiB:
    E2BIG) is answered as adbd answers it, with ``error: exec '/system/bin/sh' failed: ...``."""
    name, _, command = service.partition(":")
    if "v2" in name.split(",")[1:]:
        stream.write(b"error: this device does not offer shell protocol v2\n")
        return
    try:
        proc = sandbox.spawn(command)
    except OSError as exc:
        log.info("shell command of %d bytes not started: %s", len(command), exc)
        stream.write(f"error: exec '/system/bin/sh' failed: {exc.strerror or exc}\n".encode())
        return
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
        elif not _send(sandbox, path, requests, replies,
                       early_fail=stream.conn.config.early_sync_fail):
            replies.flush()
            return


def _os_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{path}: is a symbolic link (the emulated device's file service follows none)"
    return f"{path}: {exc.strerror or exc}"


def _stat(sandbox: Sandbox, path: str) -> bytes:
    try:
        with sandbox.open_parent(path) as (folder, name):
            st = os.stat(name, dir_fd=folder, follow_symlinks=False) if name else os.fstat(folder)
    except (SandboxError, OSError):
        return _STAT.pack(b"STAT", 0, 0, 0)
    return _STAT.pack(b"STAT", st.st_mode & 0xFFFFFFFF, min(st.st_size, 0xFFFFFFFF),
                      int(st.st_mtime) & 0xFFFFFFFF)


def _list(sandbox: Sandbox, path: str, replies: _Replies) -> None:
    entries: list[tuple[str, os.stat_result]] = []
    try:
        with sandbox.open_parent(path) as (folder, name):
            fd = (os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=folder) if name else os.dup(folder))
            try:
                for entry in [".", ".."] + sorted(os.listdir(fd)):
                    with contextlib.suppress(OSError):
                        entries.append((entry, os.stat(entry, dir_fd=fd, follow_symlinks=False)))
            finally:
                os.close(fd)
    except SandboxError as exc:
        _fail(replies, str(exc))
        return
    except OSError:
        entries = []  # adbd lists nothing for a folder it cannot open
    for entry, st in entries:
        encoded = entry.encode("utf-8", "surrogateescape")
        replies.add(_DENT.pack(b"DENT", st.st_mode & 0xFFFFFFFF, min(st.st_size, 0xFFFFFFFF),
                               int(st.st_mtime) & 0xFFFFFFFF, len(encoded)) + encoded)
    replies.add(_DENT.pack(b"DONE", 0, 0, 0, 0))


def _recv(sandbox: Sandbox, path: str, replies: _Replies) -> None:
    try:
        with sandbox.open_parent(path) as (folder, name):
            if not name:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            # O_NONBLOCK: a FIFO must not hang the service; reads are made blocking again below
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=folder)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.set_blocking(fd, True)
            while chunk := fh.read(SYNC_DATA_MAX):
                replies.add(_REQ.pack(b"DATA", len(chunk)) + chunk)
    except SandboxError as exc:
        _fail(replies, str(exc))
        return
    except OSError as exc:
        _fail(replies, _os_error(path, exc))
        return
    replies.add(_REQ.pack(b"DONE", 0))


class _Upload:
    """A file arriving by sync SEND: written under a hidden name in its folder, which is held by
    descriptor (so a link swapped in for a folder on the way changes nothing), and renamed onto
    its name within that folder when complete; removed otherwise."""

    def __init__(self, folder: int, name: str, path: str) -> None:
        if not name:
            raise SandboxError(f"{path}: is a directory")
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                raise SandboxError(f"{path}: is a directory")
        self.folder, self.name = folder, name
        self.tmp = f".{name[:50]}.{secrets.token_hex(4)}.part"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=folder)
        self.fh = os.fdopen(fd, "wb")
        self.done = False

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def commit(self, mode: int, mtime: int) -> None:
        self.fh.flush()
        # adbd keeps the permission bits only (mode & 0777): no setuid, setgid or sticky bit
        os.fchmod(self.fh.fileno(), mode & 0o777 or 0o644)
        os.utime(self.fh.fileno(), (mtime, mtime))
        self.fh.close()
        os.rename(self.tmp, self.name, src_dir_fd=self.folder, dst_dir_fd=self.folder)
        self.done = True

    def close(self) -> None:
        self.fh.close()
        if not self.done:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp, dir_fd=self.folder)


def _send(sandbox: Sandbox, spec: str, requests: _Requests, replies: _Replies, *,
          early_fail: bool = False) -> bool:
    """Receive one file. False when the stream must end (a protocol error, a closed peer, or a
    refusal sent early, after which old adbd drains the data and closes the stream)."""
    path, comma, mode_text = spec.rpartition(",")
    error, mode = None, 0o644
    with contextlib.ExitStack() as stack:
        upload: _Upload | None = None
        try:
            if not comma:
                raise SandboxError(f"bad SEND request {spec[:200]!r}: expected 'path,mode'")
            mode = _send_mode(mode_text)
            if stat.S_ISLNK(mode):
                raise SandboxError(f"{path}: symbolic links are not supported by the emulated device")
            sandbox.host_path(path)  # the readable refusals: '..', outside the storage, a link out
            folder, name = stack.enter_context(sandbox.open_parent(path, create=True))
            upload = _Upload(folder, name, path)
            stack.callback(upload.close)
        except SandboxError as exc:
            error = str(exc)
        except OSError as exc:
            error = _os_error(path, exc)
        if error is not None and early_fail:
            log.info("sync SEND refused before its data: %s", error)
            _fail(replies, error)
            replies.flush()
            _drain_data(requests)
            return False
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
            if upload is not None and error is None:
                try:
                    upload.write(data)
                except OSError as exc:
                    error = _os_error(path, exc)
        if error is None and upload is not None:
            try:
                upload.commit(mode, mtime)
            except OSError as exc:
                error = _os_error(path, exc)
        if error is None:
            replies.add(_REQ.pack(b"OKAY", 0))
        else:
            log.info("sync SEND refused: %s", error)
            _fail(replies, error)
        return True


def _send_mode(text: str) -> int:
    """SEND's mode as adbd reads it (``strtoul(text, nullptr, 0)`` into a 32-bit mode_t): decimal,
    0-octal or 0x-hex; a value past 2**64 - 1 is adbd's "bad mode"."""
    if text[:2].lower() == "0x":
        digits, base = text[2:], 16
    else:
        digits, base = text, 8 if len(text) > 1 and text[0] == "0" else 10
    try:
        if not digits.isascii() or not digits.isalnum():
            raise ValueError(text)
        mode = int(digits, base)
    except ValueError:
        raise SandboxError(f"bad mode {text[:40]!r} in SEND: expected a number") from None
    if mode >= 2**64:
        raise SandboxError(f"bad mode {text[:40]}{'...' if len(text) > 40 else ''} in SEND: "
                           "out of range")
    return mode & 0xFFFFFFFF


def _drain_data(requests: _Requests) -> None:
    """What old adbd does after an early FAIL: discard DATA until DONE (or anything else)."""
    while (header := requests.read_exact(_REQ.size)) is not None:
        ident, length = _REQ.unpack(header)
        if ident != b"DATA" or length > SYNC_DATA_MAX or requests.read_exact(length) is None:
            return


SERVICES = {"shell:": shell_service, "shell,": shell_service, "exec:": shell_service,
            "sync:": sync_service}
