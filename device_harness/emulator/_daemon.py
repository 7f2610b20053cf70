"""An ADB daemon on 127.0.0.1: connections, authentication, streams with flow control.

One thread accepts; each connection has a reader thread that does the handshake and then
dispatches messages; each stream (an OPENed service) runs in its own thread. Writes to a socket
are serialised by a lock and each message leaves in one ``sendall`` (header and payload
together, TCP_NODELAY set): a header and payload written separately meet Nagle's algorithm and
the peer's delayed ACK and cost ~40 ms per message.

Flow control is adb's: a stream sends one WRTE and waits for the peer's OKAY before the next;
an incoming WRTE is acknowledged when the service takes it, so a slow service slows its peer
instead of queueing without bound.

A flood of connections never makes the daemon deaf: past ``max_connections`` the oldest one
still in its handshake is dropped (none: the newcomer is), and when the process runs out of file
descriptors anyway (EMFILE) the accept loop sheds the waiting connection through a descriptor it
keeps in reserve and goes on serving.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import queue
import resource
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from dccore.errors import DeviceError

from . import _wire as w
from ._profile import DeviceProfile
from ._sandbox import Sandbox
from .._keys import AndroidPublicKey

log = logging.getLogger("device_harness.emulator")

LISTEN_HOST = "127.0.0.1"  # never another interface: the shell runs host commands
# Only what is implemented: without shell_v2/stat_v2/ls_v2 clients use plain `shell:` and sync v1.
# fixed_push_mkdir: SEND creates missing parent directories, so clients need not `mkdir` first.
FEATURES = ("fixed_push_mkdir",)
# accept() failing for want of memory or descriptors: shed the waiting connection and go on.
_SHED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_WARN_EVERY_S = 10.0   # a flood logs one line per this many seconds, not one per connection


@dataclass
class DaemonConfig:
    no_auth: bool = False
    authorized_keys: tuple[AndroidPublicKey, ...] = ()
    handshake_timeout_s: float = 30.0   # the whole of CNXN/AUTH must finish within this
    idle_timeout_s: float | None = 3600.0  # no traffic and no open stream: the connection is dropped
    message_timeout_s: float = 30.0     # a message, once started, must arrive within this
    write_timeout_s: float = 120.0      # a peer must OKAY our WRTE within this
    socket_buffer_bytes: int = w.SOCKET_BUFFER_BYTES
    max_payload: int = w.MAX_PAYLOAD      # advertised in CNXN: 1 MiB today, 256 KiB on Android 7-8
    # The newest protocol spoken: 0x01000001 lets peers skip checksums; 0x01000000 plays old adbd,
    # which computes and checks the byte sum of every payload.
    max_version: int = w.VERSION_SKIP_CHECKSUM
    # Old (C) adbd answers a sync SEND it cannot open with FAIL at once, before reading the data
    # (then drains DATA until DONE and closes the stream); off: FAIL after DONE, stream kept.
    early_sync_fail: bool = False
    # Connections served at once; None: from the descriptor limit (see connection_limit).
    max_connections: int | None = None

    @classmethod
    def old_adbd(cls, **overrides: object) -> "DaemonConfig":
        """An old adbd (REFERENCE.md §10): protocol 0x01000000 with checksums, 4 KiB messages,
        sync FAIL before the data; the emulated device never offers shell v2 anyway."""
        settings: dict = {"max_payload": w.MAX_PAYLOAD_V1, "max_version": w.VERSION_MIN,
                          "early_sync_fail": True, **overrides}
        return cls(**settings)


def connection_limit() -> int:
    """Connections the descriptor limit leaves room for: a quarter of what is left after 64 for
    the process itself (a connection holds its socket, and its commands a few pipes and files
    each), between 4 and 1024 (adb's server keeps one connection to a device)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(4, min(1024, (soft - 64) // 4))


class StreamClosed(Exception):
    pass


class Stream:
    """One open service as seen by its handler thread."""

    def __init__(self, conn: "Connection", local_id: int, remote_id: int, service: str) -> None:
        self.conn, self.local_id, self.remote_id, self.service = conn, local_id, remote_id, service
        self._inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._can_write = threading.Event()
        self._can_write.set()  # after our OKAY to OPEN, the first WRTE may go
        self._closed = threading.Event()

    # called by the connection's reader thread
    def _on_write(self, data: bytes) -> None:
        self._inbox.put(data)

    def _on_okay(self) -> None:
        self._can_write.set()

    def _on_close(self) -> None:
        self._closed.set()
        self._inbox.put(None)
        self._can_write.set()

    # called by the handler
    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def read(self, timeout_s: float | None = None) -> bytes | None:
        """Next payload from the peer (acknowledged now), or None once the stream is closed."""
        try:
            data = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no data on {self.service!r} for {timeout_s} s") from None
        if data is None:
            self._inbox.put(None)  # stay closed for later readers
            return None
        if not self.closed:
            self.conn.send(w.A_OKAY, self.local_id, self.remote_id)
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        step = self.conn.max_payload
        for start in range(0, len(view), step):
            if not self._can_write.wait(self.conn.config.write_timeout_s):
                self.close()
                raise StreamClosed(f"peer did not acknowledge data on {self.service!r} in "
                                   f"{self.conn.config.write_timeout_s} s")
            if self.closed:
                raise StreamClosed(self.service)
            self._can_write.clear()
            self.conn.send(w.A_WRTE, self.local_id, self.remote_id, bytes(view[start:start + step]))

    def close(self) -> None:
        if not self._closed.is_set():
            self._on_close()
            self.conn.send(w.A_CLSE, self.local_id, self.remote_id, quiet=True)
        self.conn.forget(self)


Handler = Callable[[Stream, str, Sandbox], None]


class Connection:
    def __init__(self, daemon: "AdbDaemon", sock: socket.socket, peer: tuple) -> None:
        self.daemon, self.sock, self.peer = daemon, sock, peer
        self.config = daemon.config
        self.version = w.VERSION_MIN
        self.max_payload = w.MAX_PAYLOAD_V1
        self.checksums = True
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._streams_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.opened = time.monotonic()
        self.handshaking = True      # dropped first when the daemon is full

    # -- output ---------------------------------------------------------------------------------
    def send(self, cmd: int, arg0: int, arg1: int, payload: bytes = b"", *, quiet: bool = False) -> None:
        data = w.pack(cmd, arg0, arg1, payload, with_checksum=self.checksums)
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError:
            if not quiet:
                raise StreamClosed("connection lost") from None

    def forget(self, stream: Stream) -> None:
        with self._streams_lock:
            if self._streams.get(stream.local_id) is stream:
                del self._streams[stream.local_id]

    # -- input ----------------------------------------------------------------------------------
    def run(self) -> None:
        reader = w.MessageReader(self.sock, idle_timeout_s=self.config.handshake_timeout_s,
                                 message_timeout_s=self.config.message_timeout_s)
        # One deadline for the whole handshake: per-read timeouts restart with every byte, so a
        # client trickling a byte a second would otherwise hold the connection open for ever.
        reader.deadline = time.monotonic() + self.config.handshake_timeout_s
        try:
            self.sock.settimeout(self.config.handshake_timeout_s)
            if not self._handshake(reader):
                return
            self.handshaking = False
            reader.deadline = None
            reader.idle_timeout_s = self.config.idle_timeout_s
            self._serve(reader)
        except (OSError, w.ProtocolError, StreamClosed) as exc:
            if not self.daemon.stopping:
                log.info("%s:%s: connection ended: %s", *self.peer[:2], exc or type(exc).__name__)
        finally:
            self._teardown()

    def _read(self, reader: w.MessageReader, *, authenticated: bool = True) -> w.Message:
        # Before authentication nobody has earned more than the 4 KiB every CNXN/AUTH fits in,
        # whatever maxdata the client's CNXN announced.
        limit = max(self.max_payload, w.MAX_PAYLOAD_V1) if authenticated else w.MAX_PAYLOAD_V1
        return reader.read(max_payload=limit, verify_checksum=self.checksums)

    def _handshake(self, reader: w.MessageReader) -> bool:
        msg = self._read(reader, authenticated=False)
        if msg.command != w.A_CNXN:
            raise w.ProtocolError(f"expected CNXN, got {msg.name}")
        self._accept_cnxn(msg)
        if self.config.no_auth:
            self._send_cnxn()
            return True
        token = os.urandom(20)
        self.send(w.A_AUTH, w.AUTH_TOKEN, 0, token)
        for _ in range(16):  # a client signs with each of its keys, then offers one public key
            msg = self._read(reader, authenticated=False)
            if msg.command == w.A_CNXN:
                self._accept_cnxn(msg)
            elif msg.command != w.A_AUTH:
                raise w.ProtocolError(f"expected AUTH, got {msg.name}")
            elif msg.arg0 == w.AUTH_SIGNATURE:
                if any(k.verify(token, msg.payload) for k in self.config.authorized_keys):
                    self._send_cnxn()
                    return True
            elif msg.arg0 == w.AUTH_RSAPUBLICKEY:
                return self._offered_key(msg.payload)
            else:
                raise w.ProtocolError(f"unknown AUTH type {msg.arg0}")
            token = os.urandom(20)
            self.send(w.A_AUTH, w.AUTH_TOKEN, 0, token)
        raise w.ProtocolError("too many failed AUTH attempts")

    def _offered_key(self, payload: bytes) -> bool:
        """AUTH(RSAPUBLICKEY): the client signed no token with a key we trust. A public key is
        public: holding one proves nothing. adbd admits it only after a person presses "Allow"
        on the phone (REFERENCE.md §10); an emulated device has nobody to ask, so it is always
        refused -- even a key in the authorized list, whose owner would have signed the token."""
        try:
            key = AndroidPublicKey.parse(payload)
        except ValueError as exc:
            raise w.ProtocolError(f"unreadable public key: {exc}") from None
        if any(k.modulus == key.modulus for k in self.config.authorized_keys):
            why = ("an authorized key, but no valid signature of our token came with it (a "
                   "client holding only the public key cannot sign)")
        else:
            why = ("not in the authorized keys; start the emulator with --authorized-keys FILE "
                   "holding it (or with the default, ~/.android/adbkey.pub of the same user)")
        # adb's server retries every few seconds: warn once per key, then keep it quiet.
        first = key.modulus not in self.daemon.refused_keys
        self.daemon.refused_keys.add(key.modulus)
        log.log(logging.WARNING if first else logging.DEBUG, "refused adb key %s (%s) from %s:%s: %s",
                key.fingerprint, key.comment or "no comment", *self.peer[:2], why)
        return False

    def _accept_cnxn(self, msg: w.Message) -> None:
        version, max_payload = msg.arg0, msg.arg1
        if version < w.VERSION_MIN:
            raise w.ProtocolError(f"unsupported protocol version 0x{version:08x}")
        self.version = min(version, self.config.max_version)
        self.max_payload = max(min(max_payload, self.config.max_payload), w.MAX_PAYLOAD_V1)
        self.checksums = self.version < w.VERSION_SKIP_CHECKSUM
        log.debug("CNXN from %s:%s version 0x%08x maxdata %d banner %r", *self.peer[:2],
                  version, max_payload, msg.payload[:200])

    def _send_cnxn(self) -> None:
        banner = f"device::{self.daemon.profile.banner()}features={','.join(FEATURES)}"
        self.send(w.A_CNXN, self.version, self.config.max_payload, banner.encode())
        log.info("%s:%s: connected (version 0x%08x, max payload %d)", *self.peer[:2],
                 self.version, self.max_payload)

    def _serve(self, reader: w.MessageReader) -> None:
        while not self.daemon.stopping:
            try:
                msg = self._read(reader)
            except w.IdleTimeout:
                with self._streams_lock:
                    busy = bool(self._streams)
                if busy:  # a long silent command is not an idle connection
                    continue
                raise
            if msg.command == w.A_OPEN:
                self._open(msg.arg0, msg.payload.rstrip(b"\0").decode("utf-8", "surrogateescape"))
                continue
            with self._streams_lock:
                stream = self._streams.get(msg.arg1)
            if msg.command == w.A_CNXN:
                raise w.ProtocolError("peer restarted the connection")
            if stream is None or stream.remote_id != msg.arg0:
                if msg.command == w.A_WRTE:  # data for a stream we do not have: tell the peer
                    self.send(w.A_CLSE, 0, msg.arg0)
                continue
            if msg.command == w.A_WRTE:
                stream._on_write(msg.payload)
            elif msg.command == w.A_OKAY:
                stream._on_okay()
            elif msg.command == w.A_CLSE:  # answer with our CLSE, as adbd does
                if not stream.closed:
                    stream._on_close()
                    self.send(w.A_CLSE, stream.local_id, stream.remote_id)
                self.forget(stream)

    def _open(self, remote_id: int, service: str) -> None:
        handler = self.daemon.handler_for(service)
        if remote_id == 0 or handler is None:
            log.info("%s:%s: refused service %r", *self.peer[:2], service[:100])
            self.send(w.A_CLSE, 0, remote_id)
            return
        stream = Stream(self, next(self._ids), remote_id, service)
        with self._streams_lock:
            self._streams[stream.local_id] = stream
        self.send(w.A_OKAY, stream.local_id, remote_id)
        self.daemon.spawn(self._run_service, (handler, stream), f"adb-stream-{stream.local_id}")

    def _run_service(self, handler: Handler, stream: Stream) -> None:
        try:
            handler(stream, stream.service, self.daemon.sandbox)
        except StreamClosed:
            pass
        except Exception:  # a bug in a service must not take the daemon down
            log.exception("service %r failed", stream.service[:100])
        finally:
            stream.close()

    def _teardown(self) -> None:
        with self._streams_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream._on_close()
        self.abort()
        self.sock.close()
        self.daemon.forget(self)

    def abort(self) -> None:
        """Drop the connection now (shutdown and tests of a dropped link)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class AdbDaemon:
    """Listens on 127.0.0.1:port; ``serve_forever`` until ``stop``."""

    def __init__(self, *, port: int, profile: DeviceProfile, sandbox: Sandbox,
                 config: DaemonConfig, services: dict[str, Handler]) -> None:
        self.profile, self.sandbox, self.config, self._services = profile, sandbox, config, services
        self.stopping = False
        self.max_connections = config.max_connections or connection_limit()
        self.refused_keys: set[int] = set()
        self.shed = 0                  # connections dropped or refused for want of room
        self._last_warning = -_WARN_EVERY_S
        self._connections: set[Connection] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((LISTEN_HOST, port))
        except OSError as exc:
            self.listener.close()
            raise DeviceError(f"cannot listen on {LISTEN_HOST}:{port}: {exc.strerror} (another "
                              "emulator or adbd there? pick another port with --port)") from exc
        self.listener.listen(128)  # a burst of clients waits in the backlog, not in SYN retries
        self.listener.settimeout(0.2)  # so serve_forever notices stop() promptly
        self.port = self.listener.getsockname()[1]
        # Kept free so that, out of descriptors, a waiting connection can still be accepted and
        # closed: the peer hears "closed" instead of waiting in the backlog for ever.
        self._reserve: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def handler_for(self, service: str) -> Handler | None:
        for prefix, handler in self._services.items():
            if service.startswith(prefix):
                return handler
        return None

    def serve_forever(self) -> None:
        """Accept until ``stop``. Nothing a client does ends this loop: a failed accept sheds a
        connection (out of descriptors) or is logged, and the loop goes on."""
        while not self.stopping:
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stopping:
                    break
                self._accept_failed(exc)
                continue
            try:
                self._admit(sock, peer)
            except Exception as exc:  # noqa: BLE001 - e.g. "can't start new thread"
                sock.close()
                self._warn(f"dropped a connection from {peer[0]}:{peer[1]}: {exc}")

    def _admit(self, sock: socket.socket, peer: tuple) -> None:
        with self._lock:
            full = len(self._connections) >= self.max_connections
        if full:
            dropped = self._evict_handshaking()
            if dropped is None:
                sock.close()
                self._warn(f"{self.max_connections} connections open; refused {peer[0]}:{peer[1]}")
                return
            self._warn(f"{self.max_connections} connections open; dropped {dropped}, which had "
                       "not finished its handshake")
        w.tune_socket(sock, self.config.socket_buffer_bytes)
        conn = Connection(self, sock, peer)
        with self._lock:
            self._connections.add(conn)
        try:
            self.spawn(conn.run, (), f"adb-conn-{peer[1]}")
        except BaseException:
            self.forget(conn)
            raise

    def _evict_handshaking(self) -> str | None:
        """Drop the oldest connection still in its handshake (a client that connected and went
        quiet) and say whose it was; None when every connection is a connected client."""
        waiting = [c for c in self.connections() if c.handshaking]
        if not waiting:
            return None
        oldest = min(waiting, key=lambda c: c.opened)
        self.forget(oldest)     # its place is free now; its thread closes its socket
        oldest.abort()
        return f"{oldest.peer[0]}:{oldest.peer[1]}"

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in _SHED_ERRNOS:
            self._warn(f"accept failed: {exc}")
            time.sleep(0.05)
            return
        # Out of descriptors: free the reserve, accept the waiting connection and close it,
        # take the reserve back; and make room for later ones.
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        try:
            sock, _ = self.listener.accept()
            sock.close()
        except OSError:
            pass
        self._evict_handshaking()
        self._warn(f"out of file descriptors ({exc.strerror}); shedding connections (raise "
                   "the limit, ulimit -n, or open fewer at once)")
        time.sleep(0.05)   # let dropped connections close their sockets
        try:
            self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass             # tried again after the next failure

    def _warn(self, message: str) -> None:
        self.shed += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning("%s (%d so far)", message, self.shed)

    def spawn(self, target: Callable[..., None], args: tuple, name: str) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    def drop_connections(self) -> int:
        """Cut every client connection, as a cable pulled out would (a test hook)."""
        conns = self.connections()
        for conn in conns:
            conn.abort()
        return len(conns)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, drop every connection, and wait (up to ``timeout_s``) for their
        commands to be ended and their threads to finish."""
        self.stopping = True
        self.listener.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self.drop_connections()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
