"""Starting an emulated device in this process, and the handle that stops it."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable

from dccore.errors import DeviceError

from .._keys import ensure_adb_key, read_authorized_keys
from ._daemon import AdbDaemon, DaemonConfig
from ._profile import DeviceProfile, load_profile
from ._sandbox import Sandbox


class EmulatorHandle:
    """A running emulated device. ``stop()`` (or leaving the ``with`` block) shuts it down."""

    host = "127.0.0.1"

    def __init__(self, daemon: AdbDaemon, sandbox: Sandbox, auth: str) -> None:
        self._daemon, self._sandbox, self.auth = daemon, sandbox, auth
        self.port: int = daemon.port
        self.serial = f"{self.host}:{self.port}"
        self.sandbox: Path = sandbox.folder  # plays /data/local/tmp
        self.profile: DeviceProfile = sandbox.profile
        self._thread = threading.Thread(target=daemon.serve_forever, daemon=True,
                                        name=f"adb-emulator-{self.port}")
        self._thread.start()

    @property
    def max_payload(self) -> int:
        """The largest message the daemon advertises in its CNXN."""
        return self._daemon.config.max_payload

    @property
    def address(self) -> tuple[str, int]:
        """The listening socket's own address, as the kernel reports it."""
        return self._daemon.listener.getsockname()[:2]

    def host_path(self, device_path: str) -> Path:
        """Where a device path under /data/local/tmp or /sdcard lives on this host."""
        return self._sandbox.host_path(device_path)

    def set_thermal_status(self, status: int) -> None:
        """Make ``dumpsys thermalservice`` report ``status`` (0..6) from now on."""
        self._sandbox.set_thermal_status(status)

    def drop_connections(self) -> int:
        """Cut every client connection, as a pulled cable would; returns how many."""
        return self._daemon.drop_connections()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._daemon.stopping:
            return
        self._daemon.stop(timeout_s)
        self._thread.join(timeout_s)
        self._sandbox.cleanup()

    def __enter__(self) -> "EmulatorHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmulatorHandle {self.serial} sandbox={self.sandbox} auth={self.auth}>"


def start(port: int = 0, no_auth: bool = False, sandbox: str | os.PathLike[str] | None = None,
          profile: DeviceProfile | str | os.PathLike[str] | None = None, *,
          authorized_keys: Iterable[str | os.PathLike[str]] | None = None,
          idle_timeout_s: float | None = 3600.0, handshake_timeout_s: float = 30.0,
          message_timeout_s: float = 30.0, max_payload: int | None = None,
          old_adbd: bool = False, early_sync_fail: bool | None = None,
          max_connections: int | None = None) -> EmulatorHandle:
    """Start an emulated device in a background thread of this process.

    ``port=0`` picks a free port. ``sandbox`` is the folder that plays /data/local/tmp (default:
    a temporary one, removed by ``stop``). ``profile`` is a DeviceProfile or a JSON file (default:
    the built-in profile). ``authorized_keys``: files of adb public keys (default: the user's
    ``~/.android/adbkey.pub``, generated if missing). ``max_payload``: the largest message the
    daemon advertises (1 MiB as today's adbd; 256 KiB plays an Android 7-8 device, 4096 a v1 one).
    ``old_adbd``: play an old adbd (protocol 0x01000000 with checksums, 4 KiB messages unless
    ``max_payload`` says otherwise, sync FAIL before the data). ``early_sync_fail``: answer a
    sync SEND that cannot be opened with FAIL before reading its data, as real adbd does
    (default: on for ``old_adbd``, else off). ``max_connections``: clients served at once
    (default: what the process's descriptor limit leaves room for); past it the oldest one still
    in its handshake is dropped.
    """
    max_payload = max_payload or (4096 if old_adbd else 1024 * 1024)
    if not 4096 <= max_payload <= 1024 * 1024:
        raise ValueError(f"max_payload must be 4096..1048576, got {max_payload}")
    if not isinstance(profile, DeviceProfile):
        profile = load_profile(profile)
    if no_auth:
        keys, auth = (), "off (--no-auth: tests only)"
    else:
        files = list(authorized_keys) if authorized_keys is not None else [f"{ensure_adb_key()}.pub"]
        keys = tuple(read_authorized_keys(files))
        if not keys:
            raise DeviceError(f"no adb public keys in {', '.join(map(str, files))}: nobody could "
                              "connect; add a key (the format of ~/.android/adbkey.pub)")
        auth = f"{len(keys)} key(s) from {', '.join(map(str, files))}"
    settings: dict = {"no_auth": no_auth, "authorized_keys": keys, "idle_timeout_s": idle_timeout_s,
                      "handshake_timeout_s": handshake_timeout_s,
                      "message_timeout_s": message_timeout_s, "max_payload": max_payload,
                      "max_connections": max_connections}
    if early_sync_fail is not None:
        settings["early_sync_fail"] = early_sync_fail
    config = DaemonConfig.old_adbd(**settings) if old_adbd else DaemonConfig(**settings)
    box = Sandbox(profile, sandbox)
    try:
        from ._services import SERVICES

        daemon = AdbDaemon(port=port, profile=profile, sandbox=box, config=config, services=SERVICES)
    except BaseException:
        box.cleanup()
        raise
    return EmulatorHandle(daemon, box, auth)
