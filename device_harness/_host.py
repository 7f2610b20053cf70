"""The ``host`` backend (this machine), and the one helper every local tool call goes through.

``run_local`` is how the harness starts any local program (the LiteRT runner on the host, ``xcrun
simctl``): an argument list, never a shell string; a timeout always; output captured as text.
"""
from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dccore import children
from dccore.outputs import ANY_FILE, OutputKind, atomic_path
from dccore.errors import DeviceError, UsageError

from ._backends import BACKENDS, Backend
from ._device import Device, DeviceInfo, ShellResult


def run_local(argv: list[str], *, timeout_s: float, check: bool = True, env: dict[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, merge_stderr: bool = True) -> ShellResult:
    """Run a local program with a timeout; raise DeviceError on timeout, or on failure if ``check``.

    A missing program gives returncode 127 (as a shell would) so probes can use ``check=False``.
    """
    argv = [str(a) for a in argv]
    try:
        # A session of its own, so a timeout (or SIGTERM: dccore.children) ends the program *and*
        # whatever it started.
        proc = children.spawn(argv, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, errors="replace", env=env,
                              cwd=cwd)
    except FileNotFoundError as exc:
        if check:
            raise DeviceError(f"{argv[0]}: program not found", command=argv, returncode=127) from exc
        return ShellResult(tuple(argv), 127, f"{argv[0]}: not found")
    except PermissionError as exc:
        if check:
            raise DeviceError(f"{argv[0]}: not executable ({exc})", command=argv, returncode=126) from exc
        return ShellResult(tuple(argv), 126, str(exc))
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        raise DeviceError(f"{argv[0]} timed out after {timeout_s:g} s; raise --timeout if the "
                          "device is just slow", command=argv, transient=True) from exc
    except BaseException:  # Ctrl-C and SIGTERM included: leave nothing running behind us
        _kill_group(proc)
        raise
    finally:
        children.release(proc)   # SystemExit(143) if the command is being ended (SIGTERM)
    result = ShellResult(tuple(argv), proc.returncode, stdout)
    if check and proc.returncode != 0:
        said = (stderr or "") + stdout if not merge_stderr else stdout
        tail = " | ".join(said.strip().splitlines()[-3:])
        raise DeviceError(f"{Path(argv[0]).name} exited with status {proc.returncode}: {tail}",
                          command=argv, returncode=proc.returncode, output=said)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_max_freqs(root: Path = Path("/sys/devices/system/cpu")) -> tuple[int, ...]:
    """Per-core ``cpuinfo_max_freq`` in kHz; empty where the kernel does not expose it (VMs)."""
    freqs = []
    for core in range(os.cpu_count() or 0):
        try:
            freqs.append(int((root / f"cpu{core}/cpufreq/cpuinfo_max_freq").read_text().strip()))
        except (OSError, ValueError):
            return ()
    return tuple(freqs)


def host_info() -> DeviceInfo:
    return DeviceInfo(kind="host", serial="host", model=_cpu_name(),
                      os_version=f"{platform.system()} {platform.release()}",
                      abi=platform.machine(), cores=os.cpu_count() or 1,
                      max_freq_khz=read_max_freqs(),
                      extra={"python": platform.python_version()})


# Inside the harness's own folder on a device, a folder where a folder is pushed is an earlier push.
_PUSHED_FOLDER = OutputKind("folder pushed by the harness", is_dir=True)


def copy_in(local: str | os.PathLike[str], remote: str, *, root: str | os.PathLike[str]) -> float:
    """``push`` for a device whose files are this machine's (the host, an iOS simulator): copy a
    file or a folder (a .mlpackage) to ``remote``; return the seconds it took.

    ``remote`` must lie inside ``root``, the harness's own folder on that device (its workdir),
    reached through no symbolic link. The copy is made beside the target and renamed into place
    (dccore.outputs.atomic_path): what was there is replaced only if it is what a push leaves (a
    file for a file, a folder for a folder), and nothing is written through a link. Anything
    else is refused, and nothing is deleted."""
    start = time.perf_counter()
    target = _inside(remote, root)
    folder = Path(local).is_dir()
    try:
        with atomic_path(target, kind=_PUSHED_FOLDER if folder else ANY_FILE) as tmp:
            if folder:
                shutil.copytree(local, tmp)
            else:
                shutil.copyfile(local, tmp)
    except UsageError as exc:  # what is there is not a push of ours: a device's refusal
        raise DeviceError(f"push to {remote} refused: {exc}", command=["push", str(local), remote]) from exc
    return time.perf_counter() - start


def _inside(remote: str, root: str | os.PathLike[str]) -> Path:
    """``remote`` as a path whose folder is ``root`` or below it, once links are resolved."""
    target = Path(remote)
    real_root = Path(os.path.realpath(root))
    if target.is_absolute() and ".." not in target.parts and target.name:
        parent = Path(os.path.realpath(target.parent))
        if parent == real_root or real_root in parent.parents:
            return parent / target.name
    raise DeviceError(f"push to {remote} refused: not inside the harness's folder {root} on this "
                      "device (or reached through a symbolic link); nothing was written",
                      command=["push", remote])


def copy_out(remote: str, local: str | os.PathLike[str], *, who: str) -> None:
    """``pull`` for the same devices, written through a temporary file as AdbDevice.pull is, so
    a failed copy leaves no partial file behind. ``who`` names the device in the error."""
    if not Path(remote).is_file():
        raise DeviceError(f"{who}: {remote} does not exist", command=["pull", remote, str(local)])
    with atomic_path(local) as tmp:
        shutil.copyfile(remote, tmp)


class HostDevice(Device):
    """Runs the same measurements on this machine: artifacts are copied into a private workdir and
    the runner is a child process, so its peak memory is its own, not the harness's."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self._own_workdir = workdir is None
        # marked with this process's pid: reaped by a later command if this one is killed
        self.workdir = str(workdir) if workdir else children.temp_folder("host")
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        self.python = sys.executable  # the interpreter that has ai_edge_litert, not whatever is on PATH
        self.info = host_info()

    def shell(self, argv: list[str], *, timeout_s: float = 60.0, check: bool = True) -> ShellResult:
        return run_local(argv, timeout_s=timeout_s, check=check, cwd=self.workdir)

    def push(self, local: Path, remote: str, *, timeout_s: float = 120.0) -> float:
        return copy_in(local, remote, root=self.workdir)

    def pull(self, remote: str, local: Path, *, timeout_s: float = 120.0) -> None:
        copy_out(remote, local, who="host")

    def close(self) -> None:
        if self._own_workdir:
            children.remove_folder(self.workdir)


BACKENDS.register("host", Backend("host", lambda _argument, **_options: HostDevice(),
                                   device_kind="host"))
