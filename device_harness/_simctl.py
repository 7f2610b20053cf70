"""iOS simulators through ``xcrun simctl`` (macOS with Xcode).

Every call goes through ``run_local``: an argument list, a timeout, no shell. Device lists are read
from ``simctl list -j devices`` into frozen dataclasses. The xcrun program can be replaced with the
``DEEPCOMPRESS_XCRUN`` environment variable (the tests point it at a scripted stand-in).
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dccore.errors import DeviceError

from ._backends import BACKENDS, Backend
from ._device import Device, DeviceInfo, ShellResult
from ._host import copy_in, copy_out, host_info, run_local

XCRUN_ENV = "DEEPCOMPRESS_XCRUN"
_RUNTIME_RE = re.compile(r"SimRuntime\.([A-Za-z]+)-(\d+(?:-\d+)*)$")


def find_xcrun() -> str | None:
    return os.environ.get(XCRUN_ENV) or shutil.which("xcrun")


def runtime_version(identifier: str) -> str:
    """``com.apple.CoreSimulator.SimRuntime.iOS-17-5`` -> ``iOS 17.5``."""
    match = _RUNTIME_RE.search(identifier)
    return f"{match[1]} {match[2].replace('-', '.')}" if match else identifier


@dataclass(frozen=True)
class Simulator:
    udid: str
    name: str
    state: str                # "Booted", "Shutdown", ...
    runtime: str              # runtime identifier
    device_type: str = ""
    available: bool = True
    data_path: str = ""

    @property
    def booted(self) -> bool:
        return self.state == "Booted"

    @property
    def os_version(self) -> str:
        return runtime_version(self.runtime)


def parse_device_list(text: str) -> list[Simulator]:
    """Parse ``simctl list -j devices``: {"devices": {runtime: [{udid, name, state, ...}]}}."""
    try:
        data = json.loads(text)
        groups = data["devices"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DeviceError(f"simctl list -j devices printed unexpected JSON ({exc})", output=text) from exc
    sims = []
    for runtime, entries in groups.items():
        for e in entries:
            sims.append(Simulator(udid=e["udid"], name=e.get("name", ""), state=e.get("state", ""),
                                  runtime=runtime, device_type=e.get("deviceTypeIdentifier", ""),
                                  available=bool(e.get("isAvailable", True)),
                                  data_path=e.get("dataPath", "")))
    return sims


class Simctl:
    """Thin typed wrapper over the ``xcrun simctl`` sub-commands the harness uses."""

    def __init__(self, xcrun: str | None = None, *, timeout_s: float = 60.0) -> None:
        found = xcrun or find_xcrun()
        if not found:
            raise DeviceError("xcrun not found: iOS simulators need macOS with Xcode "
                              f"(or set {XCRUN_ENV} to an xcrun program)")
        self.xcrun = found
        self.timeout_s = timeout_s

    def run(self, args: list[str], *, timeout_s: float | None = None, check: bool = True,
             env: dict[str, str] | None = None, merge_stderr: bool = True) -> ShellResult:
        return run_local([self.xcrun, "simctl", *args], timeout_s=timeout_s or self.timeout_s,
                         check=check, env=env, merge_stderr=merge_stderr)

    def devices(self) -> list[Simulator]:
        return parse_device_list(self.run(["list", "-j", "devices"], merge_stderr=False).output)

    def resolve(self, udid_or_booted: str) -> Simulator:
        """A simulator by UDID, or the first booted one for ``booted``."""
        sims = self.devices()
        if udid_or_booted == "booted":
            booted = [s for s in sims if s.booted]
            if not booted:
                raise DeviceError("no booted simulator: boot one (xcrun simctl boot UDID) or give "
                                  "--device simctl:UDID")
            return booted[0]
        for sim in sims:
            if sim.udid == udid_or_booted:
                return sim
        raise DeviceError(f"simulator {udid_or_booted!r} not found; 'deepcompress devices' lists them")

    def boot(self, udid: str, *, timeout_s: float = 300.0) -> None:
        """Boot (an already booted device is fine) and wait until it has finished booting."""
        result = self.run(["boot", udid], timeout_s=timeout_s, check=False)
        if result.returncode != 0 and "current state: Booted" not in result.output:
            raise DeviceError(f"simctl boot {udid} failed: {result.output.strip()}",
                              command=list(result.argv), returncode=result.returncode, output=result.output)
        self.run(["bootstatus", udid, "-b"], timeout_s=timeout_s)

    def install(self, udid: str, app: Path, *, timeout_s: float = 120.0) -> None:
        self.run(["install", udid, str(app)], timeout_s=timeout_s)

    def launch(self, udid: str, bundle_id: str, *, env: dict[str, str] | None = None,
               args: list[str] | None = None, timeout_s: float = 300.0) -> str:
        """Launch an app, wait for it to exit and return its console output.

        ``env`` reaches the app through simctl's ``SIMCTL_CHILD_`` prefix (simctl strips it).
        """
        child_env = dict(os.environ)
        child_env.update({f"SIMCTL_CHILD_{k}": str(v) for k, v in (env or {}).items()})
        return self.run(["launch", "--console-pty", "--terminate-running-process", udid, bundle_id,
                          *(args or [])], timeout_s=timeout_s, env=child_env).output

    def app_container(self, udid: str, bundle_id: str, kind: str = "data") -> Path:
        out = self.run(["get_app_container", udid, bundle_id, kind]).output.strip().splitlines()
        if not out or not Path(out[-1]).is_dir():
            raise DeviceError(f"simctl get_app_container {udid} {bundle_id} {kind} gave no folder "
                              f"({out[-1] if out else 'no output'}); is the app installed?")
        return Path(out[-1])


def simulator_info(sim: Simulator) -> DeviceInfo:
    """A simulator runs on the Mac's CPU: ABI and cores are the host's."""
    host = host_info()
    return DeviceInfo(kind="simctl", serial=sim.udid, model=sim.name, os_version=sim.os_version,
                      abi=host.abi, cores=host.cores,
                      extra={"state": sim.state, "runtime": sim.runtime, "device_type": sim.device_type})


class SimctlDevice(Device):
    """A simulator as a Device. Its files live on the Mac, so push/pull are copies into the
    simulator's data folder, and ``shell`` runs a program inside it with ``simctl spawn``."""

    def __init__(self, simctl: Simctl, sim: Simulator) -> None:
        self.simctl, self.sim = simctl, sim
        self.info = simulator_info(sim)
        self.workdir = posixpath.join(sim.data_path, "tmp", "deepcompress") if sim.data_path else ""

    @classmethod
    def open(cls, udid_or_booted: str, *, xcrun: str | None = None, timeout_s: float = 60.0) -> "SimctlDevice":
        simctl = Simctl(xcrun, timeout_s=timeout_s)
        return cls(simctl, simctl.resolve(udid_or_booted))

    def shell(self, argv: list[str], *, timeout_s: float = 60.0, check: bool = True) -> ShellResult:
        return self.simctl.run(["spawn", self.sim.udid, *argv], timeout_s=timeout_s, check=check)

    def push(self, local: Path, remote: str, *, timeout_s: float = 120.0) -> float:
        # a .mlpackage is a folder: copy_in copies folders too
        return copy_in(local, remote, root=self._harness_folder(remote))

    def _harness_folder(self, remote: str) -> Path:
        """The harness's own folder holding ``remote``: the nearest one named ``deepcompress``
        above it (the workdir, or an app's Documents/deepcompress). A push replaces only what
        lies inside it (copy_in)."""
        for parent in Path(remote).parents:
            if parent.name == "deepcompress":
                return parent
        raise DeviceError(f"simulator {self.sim.udid}: push to {remote} refused: not inside a "
                          "deepcompress folder of the harness; nothing was written",
                          command=["push", remote])

    def pull(self, remote: str, local: Path, *, timeout_s: float = 120.0) -> None:
        copy_out(remote, local, who=f"simulator {self.sim.udid}")


BACKENDS.register("simctl", Backend(
    "simctl:UDID|booted",
    lambda target, *, timeout_s, retries: SimctlDevice.open(target, timeout_s=timeout_s),
    prefix=True, device_kind="simctl"))
