"""The emulated adbd at its limits (issue 19, items 5 and 14): a flood of connections at
``ulimit -n 256`` never makes it deaf; SEND with an absurd mode gets FAIL; pushed files lose
setuid/setgid/sticky as adbd's (mode & 0777); a shell command over 128 KiB gets adbd's answer."""
from __future__ import annotations

import contextlib
import json
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from device_harness import emulator
from device_harness.emulator import _wire as w

pytestmark = pytest.mark.emulator

FLOOD = 300     # connections held open at once: more than the 256 descriptors the daemon has
# The daemon under test in a child limited to 256 descriptors (``ulimit -n 256``, set by the child
# itself: a preexec_fn in this threaded test process could deadlock); argv[1]: max_connections
# (0: the default, from the limit; a huge one lets the flood run the process out of descriptors).
CHILD = """
import json, resource, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from device_harness import emulator
handle = emulator.start(no_auth=True, max_connections=int(sys.argv[1]) or None)
print(json.dumps({"port": handle.port}), flush=True)
threading.Event().wait()
"""


def answers(port: int, timeout_s: float = 5.0) -> bool:
    """A fresh client's CNXN gets the daemon's CNXN."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(w.pack(w.A_CNXN, w.VERSION_MIN, w.MAX_PAYLOAD, b"host::flood-test\0"))
        reader = w.MessageReader(sock, idle_timeout_s=timeout_s, message_timeout_s=timeout_s)
        return reader.read(max_payload=w.MAX_PAYLOAD, verify_checksum=True).command == w.A_CNXN


@pytest.mark.parametrize("max_connections", [0, 100_000], ids=["capped", "out-of-descriptors"])
def test_flood_at_ulimit_256_keeps_answering(max_connections):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(max_connections)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flood: list[socket.socket] = []
    try:
        port = json.loads(proc.stdout.readline())["port"]
        start = time.monotonic()
        for _ in range(FLOOD):   # each one connects and says nothing, holding its socket
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        flood_s = time.monotonic() - start
        t = time.monotonic()
        assert answers(port), "a fresh client during the flood"
        during_ms = (time.monotonic() - t) * 1000
        for sock in flood:
            sock.close()
        flood.clear()
        t = time.monotonic()
        assert answers(port), "a fresh client after the flood"
        after_ms = (time.monotonic() - t) * 1000
        assert proc.poll() is None
        print(f"flood of {FLOOD} connections at ulimit -n 256 ({max_connections or 'default'} "
              f"max connections): opened in {flood_s:.2f} s; a fresh client answered in "
              f"{during_ms:.0f} ms during it and {after_ms:.0f} ms after")
    finally:
        for sock in flood:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err[-3000:]


def test_connections_past_the_cap_shed_the_oldest_handshake_first():
    with emulator.start(no_auth=True, max_connections=4) as handle:
        quiet = [socket.create_connection(("127.0.0.1", handle.port), timeout=5) for _ in range(4)]
        assert answers(handle.port)           # the oldest quiet one made room
        quiet[0].settimeout(3)
        assert quiet[0].recv(1) == b""
        for sock in quiet:
            sock.close()


# -- sync SEND and shell (item 14) --------------------------------------------------------------
@contextlib.contextmanager
def open_service(port: int, service: bytes, timeout_s: float):
    """A connection past CNXN with ``service`` opened: (socket, read the next message, the
    daemon's stream id)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        reader = w.MessageReader(sock, idle_timeout_s=timeout_s, message_timeout_s=timeout_s)

        def recv() -> w.Message:
            return reader.read(max_payload=w.MAX_PAYLOAD, verify_checksum=True)

        sock.sendall(w.pack(w.A_CNXN, w.VERSION_MIN, w.MAX_PAYLOAD, b"host::test\0"))
        assert recv().command == w.A_CNXN
        sock.sendall(w.pack(w.A_OPEN, 1, 0, service + b"\0"))
        okay = recv()
        assert okay.command == w.A_OKAY
        yield sock, recv, okay.arg0


def sync_send(port: int, spec: bytes, data: bytes) -> bytes:
    """One SEND (spec 'path,mode') with its data; the sync reply (OKAY or FAIL + message)."""
    with open_service(port, b"sync:", timeout_s=5) as (sock, recv, remote):
        sock.sendall(w.pack(w.A_WRTE, 1, remote, struct.pack("<4sI", b"SEND", len(spec)) + spec
                            + struct.pack("<4sI", b"DATA", len(data)) + data
                            + struct.pack("<4sI", b"DONE", 1_700_000_000)))
        reply = b""
        while len(reply) < 8 or (reply[:4] == b"FAIL"
                                 and len(reply) < 8 + struct.unpack("<I", reply[4:8])[0]):
            msg = recv()
            assert msg.command != w.A_CLSE, f"stream closed without an answer after {reply!r}"
            if msg.command == w.A_WRTE:
                reply += msg.payload
                sock.sendall(w.pack(w.A_OKAY, 1, remote))
        return reply


@pytest.fixture(scope="module")
def emu():
    with emulator.start(no_auth=True) as handle:
        yield handle


@pytest.mark.parametrize("mode", [b"1" + b"0" * 30, str(2**64).encode(), b"9" * 200, b"\xc2\xb2",
                                  b"", b"12ab"])
def test_send_with_a_bad_mode_is_answered_with_fail(emu, mode, caplog):
    reply = sync_send(emu.port, b"/data/local/tmp/moded.bin," + mode, b"data")
    assert reply[:4] == b"FAIL" and b"bad mode" in reply[8:], reply
    assert not any(r.exc_info for r in caplog.records)     # no traceback in the log
    assert not (emu.sandbox / "moded.bin").exists()


@pytest.mark.parametrize("mode,expected", [(0o104755, 0o755), (0o102755, 0o755), (0o101777, 0o777),
                                           (0o107700, 0o700), (0o100640, 0o640),
                                           (2**64 - 1, 0o777)])
def test_pushed_files_keep_only_their_permission_bits(emu, mode, expected):
    reply = sync_send(emu.port, f"/data/local/tmp/m{mode}.bin,{mode}".encode(), b"data")
    assert reply[:4] == b"OKAY", reply
    path = emu.sandbox / f"m{mode}.bin"
    assert stat.S_IMODE(path.stat().st_mode) == expected and path.read_bytes() == b"data"


def test_mode_in_octal_or_hex_as_strtoul_reads_it(emu):
    for text, name in ((b"0755", "oct"), (b"0x1ed", "hex")):
        assert sync_send(emu.port, f"/data/local/tmp/{name}.bin,".encode() + text, b"x")[:4] == b"OKAY"
        assert stat.S_IMODE((emu.sandbox / f"{name}.bin").stat().st_mode) == 0o755


def shell(port: int, command: bytes) -> bytes:
    with open_service(port, b"shell:" + command, timeout_s=10) as (sock, recv, remote):
        out = b""
        while (msg := recv()).command != w.A_CLSE:
            if msg.command == w.A_WRTE:
                out += msg.payload
                sock.sendall(w.pack(w.A_OKAY, 1, remote))
        return out


def test_a_shell_command_over_128_kib_gets_adbds_answer(emu, caplog):
    """adbd runs ``sh -c CMD``; the kernel refuses one argument over 128 KiB (E2BIG) and adbd
    answers ``error: exec '/system/bin/sh' failed: Argument list too long``. So does the
    emulator (it used to answer nothing and log a traceback); a long command under the limit
    runs."""
    under = b"echo " + b"a" * (120 * 1024)
    assert shell(emu.port, under) == b"a" * (120 * 1024) + b"\n"
    over = b"echo " + b"a" * (200 * 1024)
    assert shell(emu.port, over) == b"error: exec '/system/bin/sh' failed: Argument list too long\n"
    assert not any(r.exc_info for r in caplog.records)
