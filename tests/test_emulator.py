"""The emulated Android device at the wire level: address, handshake and AUTH, flow control,
streams, timeouts, shutdown, the sandbox's paths and the profile's shims."""
from __future__ import annotations

import json
import os
import platform
import select
import socket
import struct
import time
from pathlib import Path

import pytest

from dccore.errors import DeviceError
from device_harness import emulator
from device_harness._keys import AndroidPublicKey, ensure_adb_key, load_signer
from device_harness.emulator import _wire as w
from device_harness.emulator._profile import load_profile
from device_harness.emulator._sandbox import Sandbox, SandboxError

pytestmark = pytest.mark.emulator


class RawClient:
    """Just enough of an ADB host to poke the daemon message by message."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = w.MessageReader(self.sock, idle_timeout_s=5, message_timeout_s=5)

    def send(self, cmd: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        self.sock.sendall(w.pack(cmd, arg0, arg1, payload))

    def recv(self, timeout_s: float = 5.0) -> w.Message:
        self.reader.idle_timeout_s = timeout_s
        return self.reader.read(max_payload=w.MAX_PAYLOAD, verify_checksum=True)

    def cnxn(self, maxdata: int = w.MAX_PAYLOAD) -> w.Message:
        self.send(w.A_CNXN, w.VERSION_MIN, maxdata, b"host::test\0")
        return self.recv()

    def closed(self, timeout_s: float = 3.0) -> bool:
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    good, bad = ensure_adb_key(root / "good" / "adbkey"), ensure_adb_key(root / "bad" / "adbkey")
    return {"good": good, "bad": bad, "authorized": Path(f"{good}.pub")}


@pytest.fixture(scope="module")
def emu():
    with emulator.start(no_auth=True) as handle:
        yield handle


def open_stream(client: RawClient, service: str, local_id: int = 1) -> int:
    client.send(w.A_OPEN, local_id, 0, service.encode() + b"\0")
    reply = client.recv()
    assert (reply.command, reply.arg1) == (w.A_OKAY, local_id)
    return reply.arg0


def read_stream(client: RawClient, local_id: int, remote_id: int) -> bytes:
    out = b""
    while True:
        msg = client.recv()
        if msg.command == w.A_WRTE:
            out += msg.payload
            client.send(w.A_OKAY, local_id, remote_id)
        elif msg.command == w.A_CLSE:
            return out


# -- address -----------------------------------------------------------------------------------
def test_listens_on_loopback_only(emu):
    host, port = emu.address
    assert (host, port) == ("127.0.0.1", emu.port) and emu.serial == f"127.0.0.1:{emu.port}"
    # the kernel's own table: local address 0100007F (127.0.0.1, little-endian hex), state LISTEN
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    listening = [r[1] for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "0A"]
    assert listening == [f"0100007F:{port:04X}"]


# -- handshake and AUTH ------------------------------------------------------------------------
def test_no_auth_answers_cnxn_with_profile_banner_and_only_implemented_features(emu):
    client = RawClient(emu.port)
    reply = client.cnxn()
    client.close()
    banner = reply.payload.decode()
    assert reply.command == w.A_CNXN and reply.arg0 == w.VERSION_MIN  # the client's version
    assert banner.startswith("device::") and "ro.product.model=DeepCompress Emulated Device;" in banner
    features = banner.split("features=")[1].split(",")
    assert "shell_v2" not in features and "stat_v2" not in features and "fixed_push_mkdir" in features


def test_auth_accepts_authorized_signature_refuses_others(keys):
    with emulator.start(authorized_keys=[keys["authorized"]]) as handle:
        good, bad = load_signer(keys["good"]), load_signer(keys["bad"])
        client = RawClient(handle.port)
        token = client.cnxn()
        assert (token.command, token.arg0, len(token.payload)) == (w.A_AUTH, w.AUTH_TOKEN, 20)
        client.send(w.A_AUTH, w.AUTH_SIGNATURE, 0, bad.Sign(token.payload))
        retry = client.recv()  # a wrong signature earns a fresh token, as adbd does
        assert (retry.command, retry.arg0) == (w.A_AUTH, w.AUTH_TOKEN) and retry.payload != token.payload
        client.send(w.A_AUTH, w.AUTH_SIGNATURE, 0, good.Sign(token.payload))  # stale token
        stale = client.recv()
        assert stale.command == w.A_AUTH
        client.send(w.A_AUTH, w.AUTH_SIGNATURE, 0, good.Sign(stale.payload))
        assert client.recv().command == w.A_CNXN
        client.close()

        stranger = RawClient(handle.port)
        token = stranger.cnxn()
        stranger.send(w.A_AUTH, w.AUTH_SIGNATURE, 0, bad.Sign(token.payload))
        stranger.recv()
        stranger.send(w.A_AUTH, w.AUTH_RSAPUBLICKEY, 0, Path(f"{keys['bad']}.pub").read_bytes() + b"\0")
        assert stranger.closed()  # nobody to accept the key on an emulated device: refused at once
        stranger.close()


def test_an_authorized_public_key_without_a_signature_is_refused(keys):
    """AUTH(RSAPUBLICKEY) proves nothing: a public key is public. A client holding only the
    authorized key's public half must get no CNXN; its owner, who signs, still gets in."""
    with emulator.start(authorized_keys=[keys["authorized"]]) as handle:
        impostor = RawClient(handle.port)
        token = impostor.cnxn()
        assert (token.command, token.arg0) == (w.A_AUTH, w.AUTH_TOKEN)
        impostor.send(w.A_AUTH, w.AUTH_RSAPUBLICKEY, 0, keys["authorized"].read_bytes() + b"\0")
        impostor.send(w.A_OPEN, 1, 0, b"shell:echo let in\0")
        assert impostor.closed()  # no CNXN, no shell: the connection just ends
        impostor.close()

        owner = RawClient(handle.port)
        token = owner.cnxn()
        owner.send(w.A_AUTH, w.AUTH_SIGNATURE, 0, load_signer(keys["good"]).Sign(token.payload))
        assert owner.recv().command == w.A_CNXN
        assert read_stream(owner, 1, open_stream(owner, "shell:echo signed")) == b"signed\n"
        owner.close()


def test_messages_before_authentication_are_capped_at_4_kib(keys):
    """A client's CNXN may announce 1 MiB messages; until it has signed, it gets 4 KiB."""
    with emulator.start(authorized_keys=[keys["authorized"]]) as handle:
        client = RawClient(handle.port)
        assert client.cnxn(maxdata=w.MAX_PAYLOAD).command == w.A_AUTH
        client.send(w.A_AUTH, w.AUTH_SIGNATURE, 0, b"\x01" * 8192)
        assert client.closed()  # not a second token: the oversize message ends the connection
        client.close()


def test_handshake_deadline_covers_the_whole_handshake():
    """Each byte restarts the per-read timeouts; one byte every 0.1 s must not hold a connection
    past handshake_timeout_s."""
    with emulator.start(no_auth=True, handshake_timeout_s=0.5, message_timeout_s=5) as handle:
        client = RawClient(handle.port)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = w.pack(w.A_CNXN, w.VERSION_MIN, w.MAX_PAYLOAD, b"host::" + b"x" * 40 + b"\0")
        start = time.monotonic()
        for byte in message:  # 70 bytes: 7 s at this pace, unless the daemon hangs up
            try:
                client.sock.sendall(bytes([byte]))
            except OSError:
                break
            if select.select([client.sock], [], [], 0.1)[0]:
                break  # the daemon spoke or hung up
        assert client.closed(timeout_s=1)
        assert time.monotonic() - start < 2
        client.close()


def test_authorized_keys_file_errors_name_the_line(tmp_path, keys):
    bad = tmp_path / "keys"
    bad.write_text("# comment\n\nnot-a-key user@host\n")
    with pytest.raises(DeviceError, match=r"keys:3: not an adb public key"):
        emulator.start(authorized_keys=[bad])
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(DeviceError, match="no adb public keys"):
        emulator.start(authorized_keys=[empty])


def test_key_pair_is_generated_private_and_consistent(tmp_path):
    path = ensure_adb_key(tmp_path / "sub" / "adbkey")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    key = AndroidPublicKey.parse(Path(f"{path}.pub").read_text())
    token = os.urandom(20)
    assert key.verify(token, load_signer(path).Sign(token))
    assert not key.verify(os.urandom(20), load_signer(path).Sign(token))
    assert ensure_adb_key(path) == path and key == AndroidPublicKey.parse(Path(f"{path}.pub").read_text())


# -- robustness of the connection ---------------------------------------------------------------
def test_garbage_closes_only_that_connection(emu):
    client, other = RawClient(emu.port), RawClient(emu.port)
    other.cnxn()
    client.sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\0" * 8)
    assert client.closed()
    assert read_stream(other, 1, open_stream(other, "shell:echo still here")) == b"still here\n"
    client.close(), other.close()


def test_handshake_and_idle_timeouts_close_connections():
    with emulator.start(no_auth=True, handshake_timeout_s=0.3, idle_timeout_s=0.5) as handle:
        silent = RawClient(handle.port)  # never sends CNXN
        start = time.monotonic()
        assert silent.closed(timeout_s=3)
        assert time.monotonic() - start < 2.5
        busy = RawClient(handle.port)
        busy.cnxn()  # a silent command outlasting the idle timeout keeps its connection
        assert read_stream(busy, 1, open_stream(busy, "shell:sleep 1.2; echo done")) == b"done\n"
        idle = RawClient(handle.port)
        idle.cnxn()
        assert idle.closed(timeout_s=3)  # connected, then nothing for longer than idle_timeout_s
        assert busy.closed(timeout_s=3)  # and once its stream is done, busy is idle too
        silent.close(), idle.close(), busy.close()


def test_unknown_service_is_refused_with_clse(emu):
    client = RawClient(emu.port)
    client.cnxn()
    client.send(w.A_OPEN, 7, 0, b"reboot:bootloader\0")
    reply = client.recv()
    assert (reply.command, reply.arg0, reply.arg1) == (w.A_CLSE, 0, 7)
    client.close()


def test_flow_control_one_wrte_outstanding_until_okay(emu):
    client = RawClient(emu.port)
    client.cnxn(maxdata=4096)  # a v1 peer: 4 KiB packets, so 12 KiB of output is 3 WRTEs
    remote = open_stream(client, "shell:head -c 12288 /dev/zero")
    first = client.recv()
    assert first.command == w.A_WRTE and len(first.payload) == 4096
    with pytest.raises(TimeoutError):  # no OKAY from us: nothing more may come
        client.recv(timeout_s=0.5)
    client.send(w.A_OKAY, 1, remote)
    second = client.recv()
    assert second.command == w.A_WRTE and len(second.payload) == 4096
    client.send(w.A_OKAY, 1, remote)
    assert read_stream(client, 1, remote) == b"\0" * 4096
    client.close()


def test_concurrent_streams_on_one_connection_and_many_clients(emu):
    clients = [RawClient(emu.port) for _ in range(3)]
    for c in clients:
        c.cnxn()
    a = clients[0]
    ra = open_stream(a, "shell:sleep 0.3; echo A", local_id=1)
    rb = open_stream(a, "shell:echo B", local_id=2)
    outputs: dict[int, bytes] = {1: b"", 2: b""}
    open_ids = {1: ra, 2: rb}
    while open_ids:
        msg = a.recv()
        if msg.command == w.A_WRTE:
            outputs[msg.arg1] += msg.payload
            a.send(w.A_OKAY, msg.arg1, open_ids[msg.arg1])
        elif msg.command == w.A_CLSE:
            open_ids.pop(msg.arg1)
    assert outputs == {1: b"A\n", 2: b"B\n"}
    for i, c in enumerate(clients[1:]):
        assert read_stream(c, 1, open_stream(c, f"exec:echo {i}")) == f"{i}\n".encode()
    for c in clients:
        c.close()


def test_stop_ends_running_commands_and_connections():
    handle = emulator.start(no_auth=True)
    client = RawClient(handle.port)
    client.cnxn()
    remote = open_stream(client, "shell:echo $$; exec sleep 30")
    msg = client.recv()
    client.send(w.A_OKAY, 1, remote)
    pid = int(msg.payload)
    start = time.monotonic()
    handle.stop()
    assert time.monotonic() - start < 5
    assert client.closed()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", handle.port), timeout=1).close()
    client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may be reaped between the kill() and this read
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


def test_closing_a_stream_ends_its_command(emu):
    client = RawClient(emu.port)
    client.cnxn()
    remote = open_stream(client, "shell:echo $$; exec sleep 30")
    pid = int(client.recv().payload)
    client.send(w.A_OKAY, 1, remote)
    client.send(w.A_CLSE, 1, remote)
    reply = client.recv()
    assert (reply.command, reply.arg1) == (w.A_CLSE, 1)  # the daemon answers CLSE with CLSE
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)
    client.close()


def test_early_sync_fail_answers_before_the_data(tmp_path):
    """Old adbd's behaviour (early_sync_fail): a SEND whose target cannot be opened gets FAIL at
    once, while the client is still sending data; the default daemon answers after DONE."""
    with emulator.start(no_auth=True, early_sync_fail=True) as handle:
        (handle.sandbox / "a-file").write_bytes(b"x")
        client = RawClient(handle.port)
        client.cnxn()
        remote = open_stream(client, "sync:")
        path = b"/data/local/tmp/a-file/inside.bin,33188"
        chunk = b"\0" * 1000
        client.send(w.A_WRTE, 1, remote, struct.pack("<4sI", b"SEND", len(path)) + path
                    + struct.pack("<4sI", b"DATA", len(chunk)) + chunk)  # no DONE yet
        reply = b""
        while len(reply) < 8 or len(reply) < 8 + struct.unpack("<I", reply[4:8])[0]:
            msg = client.recv(timeout_s=2)
            if msg.command == w.A_WRTE:
                reply += msg.payload
                client.send(w.A_OKAY, 1, remote)
        assert reply[:4] == b"FAIL" and b"Not a directory" in reply
        client.close()


# -- sandbox and profile --------------------------------------------------------------------------
@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(load_profile(), tmp_path / "tmp folder")  # a name that needs quoting
    yield box
    box.cleanup()


def test_sandbox_maps_device_paths_and_refuses_escapes(sandbox, tmp_path):
    folder = sandbox.folder
    assert sandbox.host_path("/data/local/tmp/a/b.bin") == folder / "a" / "b.bin"
    assert sandbox.host_path("rel.txt") == folder / "rel.txt"
    assert sandbox.host_path("/sdcard/x") == folder / "sdcard" / "x"
    assert sandbox.host_path("/data/local/tmp") == folder
    for bad in ("/etc/passwd", "/data/local/tmp/../../etc/passwd", "../x", "/data/local",
                "/sdcard/../data/local/tmp/x", "/system/bin/sh"):
        with pytest.raises(SandboxError):
            sandbox.host_path(bad)
    os.symlink("/etc", folder / "link")
    with pytest.raises(SandboxError, match="symbolic link"):
        sandbox.host_path("/data/local/tmp/link/passwd")


def test_sync_send_never_follows_a_link_swapped_in_after_the_check(keys, tmp_path, monkeypatch):
    """The folder of a SEND target is swapped for a link leading out of the sandbox at the
    worst moment: when the file is being opened, after the path was checked. Nothing may be
    written outside; the file lands in the folder that was checked (now renamed aside)."""
    from device_harness._adb import AdbDevice

    outside = tmp_path / "outside"
    outside.mkdir()
    local = tmp_path / "payload"
    local.write_bytes(os.urandom(10_000))
    with emulator.start(no_auth=True) as handle:
        folder = handle.sandbox / "d"
        folder.mkdir()
        real_open = os.open

        def open_and_swap(path, *args, **kwargs):
            if "swapped.bin" in os.fsdecode(path) and not folder.is_symlink():
                os.rename(folder, handle.sandbox / "d-aside")
                os.symlink(outside, folder)
            return real_open(path, *args, **kwargs)

        with AdbDevice.connect(handle.serial, key_path=keys["good"], retries=0) as device:
            monkeypatch.setattr(os, "open", open_and_swap)
            try:
                device.push(local, "/data/local/tmp/d/swapped.bin")
            finally:
                monkeypatch.undo()
            assert list(outside.iterdir()) == []
            assert (handle.sandbox / "d-aside" / "swapped.bin").read_bytes() == local.read_bytes()
            (outside / "secret").write_text("not yours")  # and the link is not followed later
            with pytest.raises(DeviceError, match="symbolic link"):
                device.pull("/data/local/tmp/d/secret", tmp_path / "stolen")
            with pytest.raises(DeviceError, match="symbolic link"):
                device.push(local, "/data/local/tmp/d/again.bin")
            assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_command_rewrite_maps_only_whole_prefixes(sandbox):
    out = sandbox.rewrite("cat '/data/local/tmp/a b' /data/local/tmpx /sdcard/y x/data/local/tmp "
                          "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    root = sandbox.root
    assert f"'{root}/data/local/tmp/a b'" in out  # the folder needs quoting: through the link
    assert " /data/local/tmpx " in out and " x/data/local/tmp " in out
    assert f"{root}/sdcard/y" in out
    assert f"{root}/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq" in out


def test_profile_layout_host_values_and_validation(tmp_path):
    def profile(obj):
        path = tmp_path / "p.json"
        path.write_text(json.dumps(obj))
        return load_profile(path)

    p = profile({"cpu": {"cores": 8, "max_freq_khz": [1000, 2000]}, "properties": {"ro.product.cpu.abi": "host"}})
    assert p.max_freq_khz == (1000,) * 4 + (2000,) * 4
    abi = p.properties["ro.product.cpu.abi"]
    assert abi != "host" and (platform.machine() != "x86_64" or abi == "x86_64")
    assert profile({"cpu": {"cores": 3, "max_freq_khz": [1, 2, 3, 4, 5, 6]}}).max_freq_khz == (1, 3, 5)
    for bad, field in (({"cpus": {}}, "unknown key"), ({"cpu": {"cores": 0}}, "cpu.cores"),
                       ({"cpu": {"max_freq_khz": []}}, "max_freq_khz"),
                       ({"thermal": {"status": 9}}, "thermal.status"),
                       ({"properties": {"a": "x\ny"}}, "single lines")):
        with pytest.raises(DeviceError, match=field):
            profile(bad)


# -- shims, through a raw shell stream -----------------------------------------------------------
def run(emu, command: str) -> str:
    client = RawClient(emu.port)
    client.cnxn()
    try:
        return read_stream(client, 1, open_stream(client, f"shell:{command}")).decode()
    finally:
        client.close()


def test_getprop_and_cpu_sysfs_come_from_the_profile(emu):
    props = emu.profile.properties
    assert run(emu, "getprop ro.product.model") == props["ro.product.model"] + "\n"
    assert run(emu, "getprop no.such.prop fallback") == "fallback\n"
    assert run(emu, "getprop no.such.prop") == "\n"
    listing = run(emu, "getprop")
    assert f"[ro.build.version.sdk]: [{props['ro.build.version.sdk']}]" in listing.splitlines()
    freqs = run(emu, "cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq").split()
    assert tuple(map(int, freqs)) == emu.profile.max_freq_khz
    assert run(emu, "cat /sys/devices/system/cpu/possible").strip() in ("0", f"0-{emu.profile.cores - 1}")


def test_dumpsys_thermal_follows_overrides(emu):
    assert "Thermal Status: 0\n" in run(emu, "dumpsys thermalservice")
    emu.set_thermal_status(4)
    try:
        assert "Thermal Status: 4\n" in run(emu, "dumpsys thermalservice")
    finally:
        emu.set_thermal_status(0)


def test_dumpsys_meminfo_reports_this_hosts_pss(emu):
    pss = int(next(line.split()[1] for line in Path("/proc/self/smaps_rollup").read_text().splitlines()
                   if line.startswith("Pss:")))
    out = run(emu, f"dumpsys meminfo {os.getpid()}")
    total = int(next(line.split()[1] for line in out.splitlines() if line.strip().startswith("TOTAL ")))
    summary = int(out.split("TOTAL PSS:")[1].split()[0])
    assert total == summary and abs(total - pss) <= 0.2 * pss
    assert "No process found for: 999999999" in run(emu, "dumpsys meminfo 999999999")


def test_shell_runs_in_the_sandbox_with_host_python(emu):
    assert run(emu, "pwd").strip() == str(emu.sandbox)
    assert Path(run(emu, "python3 -c 'import sys; print(sys.executable)'").strip()).resolve() == \
        Path(os.sys.executable).resolve()
    assert run(emu, "echo hi > /data/local/tmp/made-by-shell; cat made-by-shell") == "hi\n"
    assert (emu.sandbox / "made-by-shell").read_text() == "hi\n"
    assert run(emu, "echo oops 1>&2") == "oops\n"  # stderr shares the stream, as in adb's raw shell

