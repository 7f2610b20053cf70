"""From a ``--device`` SPEC to an open Device, and the list behind ``deepcompress devices``.

SPEC is ``host``, ``emulator`` (the built-in emulated Android device, started or reused),
``simctl:UDID`` / ``simctl:booted``, or an ADB device: ``HOST:PORT`` or a USB serial.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Iterable

from dccore.errors import DeviceError

from ._backends import resolve
from ._device import Device, DeviceInfo

# Android emulators' adbd ports (REFERENCE.md §6): console on the even port, adbd on the odd one.
EMULATOR_ADB_PORTS = tuple(range(5555, 5586, 2))


def open_device(spec: str, *, timeout_s: float = 30.0, retries: int = 3) -> Device:
    """Open the device a SPEC names. The caller closes it (Device is a context manager).

    ``retries``: how often an ADB device reconnects after a dropped connection, on opening and on
    each later call. A caller with a retry loop of its own (``bench_many``) passes 0, so that one
    loop owns reconnection and the attempts it reports are the ones made.

    The backend is chosen by the SPEC's form (``_backends``); a SPEC of no known form is a
    UsageError that lists the forms accepted."""
    _name, backend, argument = resolve(spec)
    return backend.open(argument, timeout_s=timeout_s, retries=retries)


def check_spec(spec: str) -> str:
    """The backend a SPEC names (``host``, ``adb``, ...), or UsageError, before any work."""
    return resolve(spec)[0]


@dataclass(frozen=True)
class Listing:
    """One row of ``deepcompress devices``: a reachable device, or a note on a backend skipped."""

    spec: str
    info: DeviceInfo | None = None
    note: str = ""

    def to_dict(self) -> dict:
        out: dict = {"spec": self.spec}
        if self.info is not None:
            out["info"] = self.info.to_dict()
        if self.note:
            out["note"] = self.note
        return out


def _port_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def discover(adb_addresses: Iterable[str] = (), *, probe: bool = True, probe_timeout_s: float = 0.2,
             timeout_s: float = 5.0) -> list[Listing]:
    """The host, ADB devices (given ones plus loopback emulator ports), and iOS simulators."""
    from ._adb import AdbDevice
    from ._host import host_info

    listings = [Listing("host", host_info())]
    addresses = list(dict.fromkeys(adb_addresses))
    if probe:  # loopback only: probing someone else's network is not ours to do
        addresses += [f"127.0.0.1:{p}" for p in EMULATOR_ADB_PORTS
                      if f"127.0.0.1:{p}" not in addresses and _port_open("127.0.0.1", p, probe_timeout_s)]
    for address in addresses:
        try:
            with AdbDevice.connect(address, timeout_s=timeout_s, retries=0) as device:
                listings.append(Listing(address, device.info))
        except Exception as exc:  # any failure of one device is that device's row, not the command's
            listings.append(Listing(address, note=f"unreachable: {exc}"))
    listings += _simulators(timeout_s)
    return listings


def _simulators(timeout_s: float) -> list[Listing]:
    from ._simctl import Simctl, find_xcrun, simulator_info

    if not find_xcrun():
        return [Listing("simctl", note="skipped: xcrun not found (iOS simulators need macOS with Xcode)")]
    try:
        sims = Simctl(timeout_s=timeout_s).devices()
    except DeviceError as exc:
        return [Listing("simctl", note=f"unavailable: {exc}")]
    return [Listing(f"simctl:{s.udid}", simulator_info(s)) for s in sims if s.available]
