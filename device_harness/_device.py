"""The one interface every device backend implements (ADB, iOS simulator, host).

Backends take argument lists, never shell strings: whatever reaches a device shell is built from
``shlex.quote``-d pieces by the backend itself. Every call has a timeout.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class DeviceInfo:
    """What is recorded next to every figure measured on a device."""

    kind: str                 # "adb", "simctl", "host"
    serial: str               # "127.0.0.1:5555", a USB serial, a simulator UDID, "host"
    model: str                # ro.product.model, simulator device type, host CPU name
    os_version: str           # Android release / SDK, iOS runtime, host OS
    abi: str                  # ro.product.cpu.abi, "arm64" / "x86_64"
    cores: int
    max_freq_khz: tuple[int, ...] = ()   # per core, from cpuinfo_max_freq where readable
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "serial": self.serial, "model": self.model,
                "os_version": self.os_version, "abi": self.abi, "cores": self.cores,
                "max_freq_khz": list(self.max_freq_khz), **({"extra": self.extra} if self.extra else {})}


@dataclass(frozen=True)
class ShellResult:
    argv: tuple[str, ...]
    returncode: int
    output: str


class Device(abc.ABC):
    """A place where artifacts are pushed and run. Use as a context manager."""

    info: DeviceInfo
    workdir: str  # where artifacts go: /data/local/tmp/deepcompress on Android

    @abc.abstractmethod
    def shell(self, argv: list[str], *, timeout_s: float = 60.0, check: bool = True) -> ShellResult:
        """Run ``argv`` on the device (each element quoted by the backend); raise DeviceError on
        timeout, or on a non-zero exit when ``check``."""

    @abc.abstractmethod
    def push(self, local: Path, remote: str, *, timeout_s: float = 120.0) -> float:
        """Copy a file to the device; return the seconds it took."""

    @abc.abstractmethod
    def pull(self, remote: str, local: Path, *, timeout_s: float = 120.0) -> None:
        """Copy a file from the device."""

    def after_reconnect(self, hook: Callable[[], None]) -> None:  # noqa: B027 - see below
        """Run ``hook`` whenever this device reconnects after losing its connection, before the
        interrupted call is made again: what was running on the device may have outlived the
        connection. Backends with no connection to lose ignore it."""

    def recovered_errors(self) -> list[str]:
        """Errors this device recovered from by reconnecting, oldest first, so that a result
        obtained after a reconnection can say so. Backends that never reconnect: none."""
        return []

    # What runners may ask of a device beyond push/shell/pull; a backend says what it can do:
    runs_android_binaries = False   # runs Android programs it is pushed (benchmark_model)

    def thermal_status(self, *, timeout_s: float = 10.0) -> int | None:
        """The device's thermal status (0 none ... 6 shutdown), or None where it has no thermal
        service (host, simulator)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        pass

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_THERMAL_RE = re.compile(r"Thermal Status:\s*(\d+)")


def parse_thermal_status(dumpsys_output: str) -> int | None:
    """``Thermal Status: N`` from ``dumpsys thermalservice`` (0 none ... 6 shutdown)."""
    match = _THERMAL_RE.search(dumpsys_output)
    return int(match.group(1)) if match else None


class AndroidDevice(Device):
    """A device with Android's shell (a phone, a board, the emulated adbd): it runs Android
    programs, and reads its thermal status from ``dumpsys thermalservice``."""

    runs_android_binaries = True

    def thermal_status(self, *, timeout_s: float = 10.0) -> int | None:
        result = self.shell(["dumpsys", "thermalservice"], timeout_s=timeout_s, check=False)
        return parse_thermal_status(result.output) if result.returncode == 0 else None
