"""The ADB backend: talks to a device's adbd directly with ``adb-shell`` (no adb server needed).

``AdbDevice.connect("HOST:PORT")`` for adbd over TCP (the emulated device, ``adb tcpip``
phones, Android emulators), ``AdbDevice.connect(SERIAL)`` for USB (needs ``adb-shell[usb]``).
The host key is ``~/.android/adbkey`` (generated if missing), the one Google's adb uses, so a
phone that trusts this computer's adb trusts us too.

What this adds to adb-shell:

* speed -- adb-shell's TCP transport writes each message header and payload separately on a
  socket with Nagle's algorithm on; the payload then waits for the peer's delayed ACK of the
  header (~40 ms per message on loopback). Our transport sets TCP_NODELAY and sends header and
  payload in one write; it also uses ``sendall`` (the stock one ignores short writes on its
  non-blocking socket, which corrupts the stream once a 1 MiB packet exceeds the socket buffer)
  and buffers reads. It announces protocol 0x01000001, as Google's adb does, so that a device
  speaking it skips checksums (adb-shell speaks only 0x01000000, summing every byte in Python);
* exit status -- the plain ``shell:`` service returns none, so each command is followed by
  ``; echo __DC_RC=$?`` and the marker is parsed off the output;
* timeouts -- every call has an overall deadline, enforced by the transport on each read/write;
* retries -- a dropped connection is reconnected with exponential backoff and the call re-run
  (push/pull and the harness's commands are idempotent); a timeout is reported, not retried
  here. Both errors carry ``DeviceError.transient``: a caller with its own retry loop
  (``bench_many``, which re-runs a whole benchmark) connects with ``retries=0`` and decides.
  A call that succeeded after a reconnection is remembered (``recovered_errors``), and hooks
  registered with ``after_reconnect`` run before the call is made again (the runners kill
  what they left running). A device's refusal (a push it answers with FAIL) is permanent;
* pushes -- the sync SEND is ours (``_adb_sync``): full packets, no copies, and a FAIL the
  device sends before the data ends the push at once;
* quoting -- ``shell`` takes an argument list and quotes every element with ``shlex.quote``.
"""
from __future__ import annotations

import re
import shlex
import stat
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from dccore.outputs import atomic_path
from dccore.errors import DeviceError

from ._backends import BACKENDS, Backend
from ._device import AndroidDevice, DeviceInfo, ShellResult
from ._keys import default_key_path, load_signer

T = TypeVar("T")

WORKDIR = "/data/local/tmp/deepcompress"
_RC_MARKER = "__DC_RC="
_RC_RE = re.compile(r"__DC_RC=(\d+)(\r?\n)?\Z")
_PROP_RE = re.compile(r"^\[(.+?)\]: \[(.*)\]\s*$", re.M)
# cpuinfo_max_freq per core, in core order, from sysfs (the same files on phones and the emulator)
_CPU_SCRIPT = ("for d in /sys/devices/system/cpu/cpu[0-9]*; do "
               "f=$(cat \"$d/cpufreq/cpuinfo_max_freq\" 2>/dev/null); echo \"cpu ${d##*/cpu} ${f:-0}\"; "
               "done")


def banner_props(banner: bytes | None) -> dict[str, str]:
    """The properties a device announces when it connects, as Google's adb reads them for
    ``adb devices -l``: the CNXN banner ``device::ro.product.name=N;ro.product.model=M;
    ro.product.device=D;features=...`` (SYSTEM-TYPE:SERIAL:KEY=VALUE;...)."""
    if not banner:
        return {}
    fields = banner.rstrip(b"\0").decode("utf-8", "replace").split(":", 2)
    if len(fields) < 3:
        return {}
    pairs = (item.partition("=") for item in fields[2].split(";"))
    return {k: v for k, sep, v in pairs if sep and k.startswith("ro.") and v}


_USB_SERIAL = re.compile(r"[A-Za-z0-9]+")  # what `adb devices` lists for a phone on USB
_TCP_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")


def is_adb_spec(spec: str) -> bool:
    """``HOST:PORT`` (a host name or address, a port 1-65535), ``emulator-N``, or a USB serial."""
    host, colon, port = spec.rpartition(":")
    if colon and _TCP_HOST.fullmatch(host) and port.isdigit() and 0 < int(port) < 65536:
        return True
    return bool(re.fullmatch(r"emulator-\d+", spec) or _USB_SERIAL.fullmatch(spec))


def parse_spec(spec: str) -> tuple[str, int] | None:
    """``HOST:PORT`` / ``[v6]:PORT`` / ``emulator-5554`` -> (host, port); a USB serial -> None."""
    m = re.fullmatch(r"emulator-(\d+)", spec)
    if m:  # the adb server's name for the emulator whose adbd is on the next port
        return "127.0.0.1", int(m.group(1)) + 1
    host, sep, port = spec.rpartition(":")
    if sep and port.isdigit() and host:
        return host.strip("[]"), int(port)
    return None


class _AuthRefused(Exception):
    pass


def _error_kinds() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeouts, dropped connections) among adb-shell's and the socket layer's exceptions."""
    from adb_shell import exceptions as ex

    timeouts = (ex.TcpTimeoutException, ex.AdbTimeoutError, TimeoutError)
    drops = (ConnectionError, OSError, ex.AdbConnectionError, ex.InvalidCommandError,
             ex.InvalidChecksumError, ex.InvalidResponseError, ex.UsbReadFailedError,
             ex.UsbWriteFailedError)
    return timeouts, drops


class AdbDevice(AndroidDevice):
    """An Android device reached through its adbd. Use ``AdbDevice.connect(spec)``."""

    workdir = WORKDIR

    def __init__(self, spec: str, *, timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.5, key_path: str | Path | None = None,
                 auth_timeout_s: float = 30.0) -> None:
        if retries < 0 or timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeout_s > 0")
        self.serial = spec
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.auth_timeout_s = auth_timeout_s
        self.key_path = Path(key_path) if key_path is not None else default_key_path()
        self._address = parse_spec(spec)
        self._adb: Any = None
        self._transport: Any = None
        self._signer: Any = None
        self._info: DeviceInfo | None = None
        self._hooks: list[Callable[[], None]] = []
        self._lost = False        # a connection was lost since the last one was opened
        self._in_hooks = False
        self._recovered: list[str] = []

    @classmethod
    def connect(cls, spec: str, *, timeout_s: float = 10.0, retries: int = 3,
                backoff_s: float = 0.5, key_path: str | Path | None = None,
                auth_timeout_s: float = 30.0) -> "AdbDevice":
        """Connect to ``HOST:PORT`` (TCP) or a USB serial, retrying a failed connection
        ``retries`` times with exponential backoff. ``auth_timeout_s``: how long a phone's user
        has to accept this computer's key on first connection."""
        device = cls(spec, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                     key_path=key_path, auth_timeout_s=auth_timeout_s)
        device._call("connect", ["connect", spec], timeout_s, lambda adb: None, retry_timeouts=True)
        return device

    # -- connection ---------------------------------------------------------------------------
    def _open(self) -> Any:
        if self._adb is not None:
            return self._adb
        if self._signer is None:
            self._signer = load_signer(self.key_path)
        # imported here, not at the top: importing this module does not import adb-shell
        from adb_shell.adb_device import AdbDevice as _AdbShellDevice

        if self._address is not None:
            from ._adb_transport import FastTcpTransport

            self._transport = FastTcpTransport(*self._address)
            adb = _AdbShellDevice(self._transport, default_transport_timeout_s=self.timeout_s)
        else:
            adb = self._usb_device()
        offered_key: list[bool] = []
        try:
            adb.connect(rsa_keys=[self._signer], transport_timeout_s=self.timeout_s,
                        auth_timeout_s=self.auth_timeout_s, read_timeout_s=self.timeout_s,
                        auth_callback=lambda _dev: offered_key.append(True))
        except BaseException as exc:
            adb.close()
            if offered_key:  # our signature was refused and so was our public key
                raise _AuthRefused(str(exc)) from exc
            raise
        self._adb = adb
        if self._lost and not self._in_hooks:
            self._lost = False
            self._run_hooks()
        return adb

    def _run_hooks(self) -> None:
        self._in_hooks = True
        try:
            for hook in list(self._hooks):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - the call that reconnected matters more
                    pass
        finally:
            self._in_hooks = False

    def after_reconnect(self, hook: Callable[[], None]) -> None:
        if hook not in self._hooks:
            self._hooks.append(hook)

    def recovered_errors(self) -> list[str]:
        return list(self._recovered)

    def _usb_device(self) -> Any:
        try:
            from adb_shell.transport.usb_transport import UsbTransport  # noqa: F401  (needs libusb1)
        except (ImportError, OSError) as exc:
            raise DeviceError(f"{self.serial}: USB devices need adb-shell's USB support: "
                              f"pip install 'adb-shell[usb]' ({exc}); or use adb over TCP "
                              "(adb tcpip 5555, then HOST:5555)") from exc
        from adb_shell.adb_device import AdbDeviceUsb
        from adb_shell.exceptions import UsbDeviceNotFoundError

        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.timeout_s)
        except UsbDeviceNotFoundError as exc:
            raise DeviceError(f"{self.serial}: no USB device with that serial ({exc}); if an adb "
                              "server holds it, run 'adb kill-server'") from exc

    def _drop(self) -> None:
        if self._adb is not None:
            self._lost = True
            try:
                self._adb.close()
            except Exception:  # closing a broken connection may fail in any way; it is gone
                pass
        self._adb = None

    def _call(self, what: str, command: list[str], timeout_s: float, fn: Callable[[Any], T], *,
              retry_timeouts: bool = False) -> T:
        """Run ``fn(adb)`` under a deadline; reconnect with backoff when the connection drops."""
        timeouts, drops = _error_kinds()
        errors: list[BaseException] = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                adb = self._open()
                if self._transport is not None:
                    self._transport.deadline = time.monotonic() + timeout_s
                try:
                    result = fn(adb)
                finally:
                    if self._transport is not None:
                        self._transport.deadline = None
                if errors:
                    self._recovered.append(f"{what}: {_describe(errors[0])}")
                return result
            except _AuthRefused as exc:
                self._drop()
                raise DeviceError(
                    f"{self.serial}: the device refused this computer's adb key {self.key_path}.pub "
                    "(a phone: accept the 'Allow USB debugging' prompt and retry; the emulated "
                    "device: start it as the same user, or pass this key with --authorized-keys)",
                    command=command) from exc
            except timeouts as exc:
                self._drop()
                errors.append(exc)
                if not retry_timeouts:
                    before = (f"; before it, {len(errors) - 1} dropped connection(s), the first: "
                              f"{_describe(errors[0])}" if len(errors) > 1 else "")
                    raise DeviceError(f"{self.serial}: {what} timed out after {timeout_s:g} s "
                                      f"({exc}){before}; raise the timeout if the device is just "
                                      "slow", command=command, transient=True) from exc
            except drops as exc:
                self._drop()
                errors.append(exc)
        first, last = _describe(errors[0]), _describe(errors[-1])
        if len(errors) == 1:  # a caller with its own retry loop counts the attempts itself
            detail = f"failed: {last}"
        elif first == last:
            detail = f"failed after {len(errors)} attempt(s), each: {last}"
        else:
            detail = f"failed after {len(errors)} attempt(s); first: {first}; last: {last}"
        raise DeviceError(f"{self.serial}: {what} {detail}; is the device still reachable?",
                          command=command, transient=True) from errors[-1]

    # -- Device interface ---------------------------------------------------------------------
    def shell(self, argv: list[str], *, timeout_s: float = 60.0, check: bool = True) -> ShellResult:
        argv = [str(a) for a in argv]
        if not argv or any("\0" in a for a in argv):
            raise DeviceError(f"{self.serial}: a shell command needs a non-empty argument list "
                              "without NUL bytes", command=argv)
        # stdin from /dev/null: nothing can wait for input that will never come
        line = " ".join(shlex.quote(a) for a in argv) + f" </dev/null; echo {_RC_MARKER}$?"

        chunks: list[bytes] = []

        def run(adb: Any) -> bytes:
            chunks.clear()
            for chunk in adb.streaming_shell(line, transport_timeout_s=timeout_s,
                                             read_timeout_s=timeout_s, decode=False):
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            raw = self._call(f"shell {argv[0]}", argv, timeout_s, run).decode("utf-8", "replace")
        except DeviceError as exc:  # keep what a timed-out command printed, for the diagnosis
            if chunks and not exc.output:
                exc.output = b"".join(chunks).decode("utf-8", "replace")
            raise
        m = _RC_RE.search(raw)
        if m is None:
            raise DeviceError(f"{self.serial}: {argv[0]}: the shell ended without an exit status "
                              "(killed, or the connection closed early)", command=argv, output=raw)
        output = raw[:m.start()]
        if m.group(2) == "\r\n":  # a pty-backed shell (old adbd) turns \n into \r\n
            output = output.replace("\r\n", "\n")
        result = ShellResult(tuple(argv), int(m.group(1)), output)
        if check and result.returncode != 0:
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise DeviceError(f"{self.serial}: {argv[0]} exited with status {result.returncode}"
                              + (f": {tail}" if tail else ""), command=argv,
                              returncode=result.returncode, output=output)
        return result

    def push(self, local: Path, remote: str, *, timeout_s: float = 120.0) -> float:
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"push: {local}: no such file", command=["push", str(local), remote])
        if remote.endswith("/"):
            remote += local.name
        st = local.stat()
        command = ["push", str(local), remote]

        def run(adb: Any) -> float:
            from ._adb_sync import PushRefused, sync_send

            start = time.perf_counter()
            try:
                sync_send(adb, local, remote, mode=stat.S_IFREG | stat.S_IMODE(st.st_mode),
                          mtime=int(st.st_mtime), timeout_s=timeout_s)
            except PushRefused as exc:
                if not exc.stream_closed:
                    self._drop()
                # The device answered and said no (no such folder, permission denied, ...):
                # permanent, so no caller retries it.
                raise DeviceError(f"{self.serial}: push to {remote} refused by the device: "
                                  f"{exc}", command=command, transient=False) from exc
            return time.perf_counter() - start

        return self._call("push", command, timeout_s, run)

    def pull(self, remote: str, local: Path, *, timeout_s: float = 120.0) -> None:
        local = Path(local)
        command = ["pull", remote, str(local)]

        def run(adb: Any) -> None:
            from adb_shell.exceptions import AdbCommandFailureException

            with atomic_path(local) as tmp:  # a failed pull leaves no partial file behind
                try:
                    adb.pull(remote, str(tmp), transport_timeout_s=timeout_s, read_timeout_s=timeout_s)
                except AdbCommandFailureException as exc:
                    raise DeviceError(f"{self.serial}: pull {remote}: {_reason(exc)}",
                                      command=command) from exc

        self._call("pull", command, timeout_s, run)

    @property
    def info(self) -> DeviceInfo:  # type: ignore[override]
        if self._info is None:
            self._info = self._read_info()
        return self._info

    def _read_info(self) -> DeviceInfo:
        out = self.shell(["sh", "-c", f"getprop; {_CPU_SCRIPT}"], timeout_s=self.timeout_s).output
        # getprop's figures first; a device without getprop is still named by its banner
        props = {**banner_props(getattr(self._transport, "banner", None)),
                 **dict(_PROP_RE.findall(out))}
        cpus = sorted((int(n), int(f)) for n, f in re.findall(r"^cpu (\d+) (\d+)\s*$", out, re.M))
        cores = len(cpus)
        if not cores:  # no sysfs cpu folders readable: count processors instead
            count = self.shell(["grep", "-c", "^processor", "/proc/cpuinfo"], check=False,
                               timeout_s=self.timeout_s).output.strip()
            cores = int(count) if count.isdigit() else 0
        freqs = tuple(f for _n, f in cpus)
        return DeviceInfo(
            kind="adb", serial=self.serial, model=props.get("ro.product.model", "unknown"),
            os_version=f"Android {props.get('ro.build.version.release', '?')} "
                       f"(SDK {props.get('ro.build.version.sdk', '?')})",
            abi=props.get("ro.product.cpu.abi", ""), cores=cores,
            max_freq_khz=freqs if freqs and all(freqs) else (),
            extra={k: v for k, v in {
                "manufacturer": props.get("ro.product.manufacturer"),
                "device": props.get("ro.product.device"),
                "product": props.get("ro.product.name"),
                "fingerprint": props.get("ro.build.fingerprint"),
                "emulated": props.get("ro.deepcompress.emulated") == "1" or None,
            }.items() if v})

    def close(self) -> None:
        self._drop()

    def __repr__(self) -> str:
        return f"<AdbDevice {self.serial}>"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _reason(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", "replace")
    return str(text).removeprefix("Command failed: ")


BACKENDS.register("adb", Backend(
    "HOST:PORT (adb over TCP, e.g. 127.0.0.1:5555), emulator-N or a USB serial (letters and "
    "digits, as `adb devices` lists it)",
    lambda spec, *, timeout_s, retries: AdbDevice.connect(spec, timeout_s=timeout_s, retries=retries),
    matches=is_adb_spec))
