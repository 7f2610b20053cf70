"""Device backends, chosen by the form of a ``--device`` SPEC through one registry.

Each backend module registers a :class:`Backend` in ``BACKENDS`` under its name; a SPEC picks

1. ``NAME:ARGUMENT`` when NAME is registered with ``prefix=True`` (``simctl:UDID``);
2. the bare word NAME of a backend without a prefix (``host``, ``emulator``);
3. otherwise the first backend whose ``matches(spec)`` accepts it (ADB: ``HOST:PORT``,
   ``emulator-5554``, a USB serial);

and anything else is a usage error listing the accepted forms. A new backend is one module that
registers itself, plus its name in ``BACKENDS``' builtins: nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from dccore.errors import UsageError
from dccore.registry import Registry

if TYPE_CHECKING:
    from ._device import Device


@dataclass(frozen=True)
class Backend:
    """``open(argument, timeout_s=..., retries=...)`` returns an open Device."""

    form: str                                   # as help and errors write it: "simctl:UDID|booted"
    open: Callable[..., "Device"]
    prefix: bool = False                        # NAME:ARGUMENT (the argument follows the colon)
    matches: Callable[[str], bool] | None = None  # a form with no name of its own (ADB's)
    # the DeviceInfo.kind of the devices it opens ("host", "adb", "simctl"): what the artifact
    # kinds' runs_on names (the emulated device is an ADB device)
    device_kind: str = "adb"


BACKENDS: Registry[Backend] = Registry("device backend", builtins=(
    "device_harness._host", "device_harness.emulator._background", "device_harness._simctl",
    "device_harness._adb"))


def accepted_forms() -> str:
    """Named forms first, then prefixed ones, then pattern forms (registration order varies
    with what was imported first, so the order is the forms' own)."""
    backends = sorted((b for _name, b in BACKENDS.items()),
                      key=lambda b: (b.matches is not None, b.prefix, b.form))
    return ", ".join(b.form for b in backends)


def resolve(spec: str) -> tuple[str, Backend, str]:
    """``(backend name, backend, argument)`` for a SPEC, or UsageError naming the forms."""
    spec = spec.strip()
    name, colon, argument = spec.partition(":")
    if colon and name in BACKENDS and BACKENDS.get(name).prefix:
        if not argument:
            raise UsageError(f"--device {spec!r}: write {BACKENDS.get(name).form}")
        return name, BACKENDS.get(name), argument
    if spec in BACKENDS and not BACKENDS.get(spec).prefix:
        return spec, BACKENDS.get(spec), ""
    for name, backend in BACKENDS.items():
        if backend.matches is not None and backend.matches(spec):
            return name, backend, spec
    raise UsageError(f"--device {spec!r} is not a device; use one of: {accepted_forms()}")
