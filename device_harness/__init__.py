"""Device harness: push artifacts to phones, simulators or the host; run and measure them.

Public verbs (imports are deferred so ``import device_harness`` stays cheap):

- ``open_device(spec)``: ``host``, ``emulator``, ``simctl:UDID|booted``, ``HOST:PORT``, a USB serial
  (``check_spec(spec)`` checks one without opening it);
- ``discover(...)``: what ``deepcompress devices`` lists;
- ``bench(artifact, spec, **options)``: one measurement, as the dict ``deepcompress bench --json``
  prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ._device import Device, DeviceInfo, ShellResult


def open_device(spec: str, *, timeout_s: float = 30.0, retries: int = 3) -> Device:
    from ._discover import open_device as _open

    return _open(spec, timeout_s=timeout_s, retries=retries)


def check_spec(spec: str) -> str:
    """Raise UsageError, one line listing the accepted forms, unless SPEC names a device; return
    its backend's name. Cheap: nothing is opened."""
    from ._discover import check_spec as _check

    return _check(spec)


def formats_for(spec: str) -> list[str]:
    """The export formats ("tflite", "coreml") whose artifacts the device SPEC runs, as the
    artifact kinds record it; nothing is opened."""
    from ._backends import resolve
    from .runners import formats_run_by

    return formats_run_by(resolve(spec)[1].device_kind)


def discover(adb_addresses=(), *, probe: bool = True) -> list:
    from ._discover import discover as _discover

    return _discover(adb_addresses, probe=probe)


def bench(artifact: str | Path, spec: str = "host", **options: Any) -> dict:
    """Benchmark one artifact on one device; options are BenchOptions fields (runs, warmup, ...).

    One benchmark has no retry loop of its own, so ``retries`` goes to the device: it reconnects
    that often after a dropped connection (a timeout is raised, not retried)."""
    from dccore.config import build

    from .runners import BenchOptions, bench_artifact

    opts = build(BenchOptions, options, "bench")
    with open_device(spec, retries=opts.retries) as device:
        return bench_artifact(device, Path(artifact), opts)


__all__ = ["Device", "DeviceInfo", "ShellResult", "open_device", "check_spec", "formats_for", "discover", "bench"]
