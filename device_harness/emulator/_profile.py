"""What the emulated device says about itself: ``getprop``, CPU frequencies, thermal status.

A profile is a JSON file (``default_profile.json`` is the built-in one)::

    {"properties": {"ro.product.model": "...", "ro.product.cpu.abi": "host", ...},
     "cpu": {"cores": "host", "max_freq_khz": [1804800, 2419200]},
     "thermal": {"status": 0, "temperatures_c": {"cpu0": 35.0}}}

``"host"`` means "as this machine": commands really run here, so a profile claiming 8 cores on
a 2-core host would make ``taskset`` masks fail. ``max_freq_khz`` is a layout from the first core
to the last, stretched over ``cores`` (two entries on 8 cores: four little, then four big).
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dccore.errors import DeviceError

DEFAULT_PROFILE = Path(__file__).with_name("default_profile.json")

_HOST_ABIS = {"x86_64": ("x86_64", "x86_64,x86"), "amd64": ("x86_64", "x86_64,x86"),
              "aarch64": ("arm64-v8a", "arm64-v8a,armeabi-v7a,armeabi"),
              "arm64": ("arm64-v8a", "arm64-v8a,armeabi-v7a,armeabi"),
              "armv7l": ("armeabi-v7a", "armeabi-v7a,armeabi"), "i686": ("x86", "x86")}
_TOP_KEYS = {"description", "properties", "cpu", "thermal"}


@dataclass(frozen=True)
class DeviceProfile:
    properties: dict[str, str]
    max_freq_khz: tuple[int, ...]          # one per core
    thermal_status: int = 0                 # 0 none ... 6 shutdown (PowerManager.THERMAL_STATUS_*)
    temperatures_c: dict[str, float] = field(default_factory=dict)
    source: str = "built-in"

    @property
    def cores(self) -> int:
        return len(self.max_freq_khz)

    def banner(self) -> str:
        """The identity part of adbd's CNXN banner."""
        p = self.properties
        return "".join(f"{k}={p.get(k, '')};" for k in
                       ("ro.product.name", "ro.product.model", "ro.product.device"))


def _fail(source: str, what: str) -> DeviceError:
    return DeviceError(f"device profile {source}: {what}")


def _host_abi() -> tuple[str, str]:
    machine = platform.machine().lower()
    return _HOST_ABIS.get(machine, (machine, machine))


def _properties(raw: Any, source: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _fail(source, "'properties' must be an object of name -> string")
    props: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _fail(source, f"property {key!r} must be a string, got {type(value).__name__}")
        text = str(value)
        if any(c in key + text for c in "\n\r\0") or "]" in key or not key:
            raise _fail(source, f"property {key!r}: names and values are single lines without ']' in names")
        props[key] = text
    abi, abilist = _host_abi()
    if props.get("ro.product.cpu.abi", "host") == "host":
        props["ro.product.cpu.abi"] = abi
    if props.get("ro.product.cpu.abilist", "host") == "host":
        props["ro.product.cpu.abilist"] = abilist
    return props


def _cpu(raw: Any, source: str) -> tuple[int, ...]:
    if not isinstance(raw, dict) or set(raw) - {"cores", "max_freq_khz"}:
        raise _fail(source, "'cpu' must be {\"cores\": N or \"host\", \"max_freq_khz\": [kHz, ...]}")
    cores = raw.get("cores", "host")
    if cores == "host":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not isinstance(cores, int) or isinstance(cores, bool) or not 1 <= cores <= 1024:
        raise _fail(source, f"cpu.cores must be 1..1024 or \"host\", got {cores!r}")
    layout = raw.get("max_freq_khz", [2000000])
    if (not isinstance(layout, list) or not layout
            or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in layout)):
        raise _fail(source, f"cpu.max_freq_khz must be a non-empty list of positive integers, got {layout!r}")
    return tuple(layout[i * len(layout) // cores] for i in range(cores))


def _thermal(raw: Any, source: str) -> tuple[int, dict[str, float]]:
    if not isinstance(raw, dict) or set(raw) - {"status", "temperatures_c"}:
        raise _fail(source, "'thermal' must be {\"status\": 0..6, \"temperatures_c\": {name: C}}")
    status = raw.get("status", 0)
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 6:
        raise _fail(source, f"thermal.status must be 0..6, got {status!r}")
    temps = raw.get("temperatures_c", {})
    if not isinstance(temps, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in temps.values()):
        raise _fail(source, "thermal.temperatures_c must map sensor names to numbers")
    return status, {str(k): float(v) for k, v in temps.items()}


def load_profile(path: str | os.PathLike[str] | None = None) -> DeviceProfile:
    """Read and validate a profile; ``None`` is the built-in one. Errors name the field."""
    file = Path(path) if path is not None else DEFAULT_PROFILE
    source = str(file) if path is not None else "built-in"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(source, f"cannot read it: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise _fail(source, f"not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise _fail(source, "must be a JSON object")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _fail(source, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    status, temps = _thermal(raw.get("thermal", {}), source)
    return DeviceProfile(properties=_properties(raw.get("properties", {}), source),
                         max_freq_khz=_cpu(raw.get("cpu", {}), source),
                         thermal_status=status, temperatures_c=temps, source=source)
