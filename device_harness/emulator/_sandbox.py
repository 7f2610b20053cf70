"""The emulated device's file system and shell.

A sandbox folder on the host plays ``/data/local/tmp`` (``/sdcard`` is its ``sdcard/`` folder).
The device paths that matter are mapped through a private state directory whose name needs no
shell quoting::

    STATE/root/data/local/tmp  -> the sandbox folder (symlink)
    STATE/root/sdcard          -> SANDBOX/sdcard (symlink)
    STATE/root/sys/devices/system/cpu/...   generated from the profile (cpuN/cpufreq/cpuinfo_max_freq)
    STATE/bin/{getprop,dumpsys,python3,python}   put first on the shell's PATH

Shell commands run with ``/bin/sh -c`` (as adbd does) in the sandbox folder, after the device
prefixes above are rewritten to host paths (the sandbox folder itself when its path needs no
quoting, else the STATE link): a textual mapping, like a path alias, so
``cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq`` and quoted names work. This is not
a security boundary -- the shell runs as the user who started the emulator, which is why the
daemon listens on 127.0.0.1 only and authenticates its clients. The sync service, which takes
paths rather than commands, is held strictly to the sandbox: ``..`` and paths (or symlinks)
leading elsewhere are refused, and its files are opened folder by folder from the sandbox's own
descriptor with O_NOFOLLOW (``open_parent``), so a link swapped in after the check is refused
too, never followed.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from dccore.errors import DeviceError

from ._profile import DeviceProfile

DEVICE_TMP = "/data/local/tmp"
_MAPPED = ("data/local/tmp", "sdcard", "sys/devices/system/cpu")
_PREFIX_RE = re.compile(r"(?<![\w./-])/(" + "|".join(re.escape(m) for m in _MAPPED) + r")(?![\w.-])")
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./-]+")
_SHIM_DUMPSYS = Path(__file__).with_name("_shim_dumpsys.py")

_GETPROP = """#!/bin/sh
# getprop [NAME [DEFAULT]]: the emulated device's properties, from its profile
props={props}
if [ $# -eq 0 ]; then exec cat "$props"; fi
while IFS= read -r line; do
  case $line in
    "[$1]: ["*) value=${{line#"[$1]: ["}}; printf '%s\\n' "${{value%]}}"; exit 0 ;;
  esac
done < "$props"
printf '%s\\n' "${{2-}}"
"""


class SandboxError(Exception):
    """A device path the sandbox refuses; the message is sent back to the client."""


class Sandbox:
    def __init__(self, profile: DeviceProfile, folder: str | os.PathLike[str] | None = None) -> None:
        self.profile = profile
        self.state = Path(tempfile.mkdtemp(prefix="dc-emu-"))
        if not _SHELL_SAFE.fullmatch(str(self.state)):
            shutil.rmtree(self.state, ignore_errors=True)
            raise DeviceError(f"the temporary directory {self.state.parent} has characters that "
                              "need shell quoting; set TMPDIR to a plain path such as /tmp")
        self.folder = (self.state / "data_local_tmp") if folder is None else Path(folder).resolve()
        try:
            self._build()
        except BaseException:
            self.cleanup()
            raise

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sdcard").mkdir(exist_ok=True)
        self.root = self.state / "root"
        (self.root / "data" / "local").mkdir(parents=True)
        os.symlink(self.folder, self.root / "data" / "local" / "tmp")
        os.symlink(self.folder / "sdcard", self.root / "sdcard")
        # Straight to the folders where their names need no quoting (so `ls -l /data/local/tmp`
        # lists the folder, not a link); through the links otherwise.
        self._targets = {m: str(self.root / m) for m in _MAPPED}
        for device, host in (("data/local/tmp", self.folder), ("sdcard", self.folder / "sdcard")):
            if _SHELL_SAFE.fullmatch(str(host)):
                self._targets[device] = str(host)
        self._write_sysfs()
        self._write_shims()
        self.set_thermal_status(self.profile.thermal_status)
        self.env = {
            "PATH": f"{self.state / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.folder), "TMPDIR": str(self.folder),
            "EXTERNAL_STORAGE": str(self.folder / "sdcard"),
            "ANDROID_DATA": "/data", "ANDROID_ROOT": "/system",
            "SHELL": "/bin/sh", "USER": "shell", "LOGNAME": "shell", "TERM": "dumb",
            "HOSTNAME": self.profile.properties.get("ro.product.device", "localhost"),
        }

    def _write_sysfs(self) -> None:
        cpu = self.root / "sys" / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True)
        span = f"0-{self.profile.cores - 1}" if self.profile.cores > 1 else "0"
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(span + "\n")
        for i, khz in enumerate(self.profile.max_freq_khz):
            freq = cpu / f"cpu{i}" / "cpufreq"
            freq.mkdir(parents=True)
            for name in ("cpuinfo_max_freq", "scaling_max_freq"):
                (freq / name).write_text(f"{khz}\n")

    def _write_shims(self) -> None:
        bin_dir = self.state / "bin"
        bin_dir.mkdir()
        props = self.state / "props"
        props.write_text("".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.profile.properties.items())),
                         encoding="utf-8")
        (self.state / "device.json").write_text(json.dumps(
            {"thermal_status": self.profile.thermal_status,
             "temperatures_c": self.profile.temperatures_c}), encoding="utf-8")
        python = shlex.quote(sys.executable)
        shims = {
            "getprop": _GETPROP.format(props=shlex.quote(str(props))),
            "dumpsys": f"#!/bin/sh\nexec {python} -I -S {shlex.quote(str(_SHIM_DUMPSYS))} "
                       f"{shlex.quote(str(self.state))} \"$@\"\n",
            # the device-side runner runs on this host's interpreter
            "python3": f"#!/bin/sh\nexec {python} \"$@\"\n",
            "python": f"#!/bin/sh\nexec {python} \"$@\"\n",
        }
        for name, text in shims.items():
            (bin_dir / name).write_text(text, encoding="utf-8")
            os.chmod(bin_dir / name, 0o755)

    def set_thermal_status(self, status: int) -> None:
        """What ``dumpsys thermalservice`` reports from now on (0 none ... 6 shutdown)."""
        if not isinstance(status, int) or not 0 <= status <= 6:
            raise ValueError(f"thermal status must be 0..6, got {status!r}")
        tmp = self.state / "thermal_status.tmp"
        tmp.write_text(f"{status}\n")
        os.replace(tmp, self.state / "thermal_status")

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)  # removes the sandbox too when we made it

    # -- shell ----------------------------------------------------------------------------------
    def rewrite(self, command: str) -> str:
        """Map device path prefixes in a command line to this sandbox's paths."""
        return _PREFIX_RE.sub(lambda m: self._targets[m.group(1)], command)

    def spawn(self, command: str) -> subprocess.Popen[bytes]:
        """Start a shell command (empty: a shell reading commands from stdin), stdout and stderr
        merged as in adb's raw shell; its own session, so the whole group can be ended."""
        argv = ["/bin/sh", "-c", self.rewrite(command)] if command.strip() else ["/bin/sh"]
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=self.folder, env=self.env,
                                start_new_session=True, bufsize=0)

    # -- sync -----------------------------------------------------------------------------------
    @staticmethod
    def _parts(device_path: str) -> list[str]:
        if "\0" in device_path:
            raise SandboxError("path contains a NUL byte")
        full = device_path if device_path.startswith("/") else f"{DEVICE_TMP}/{device_path}"
        parts = [p for p in full.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise SandboxError(f"{device_path}: '..' is not allowed on the emulated device")
        return parts

    def _below_folder(self, device_path: str) -> list[str]:
        """The names from the sandbox folder down to ``device_path`` (/sdcard is its sdcard/)."""
        parts = self._parts(device_path)
        if parts[:3] == ["data", "local", "tmp"]:
            return parts[3:]
        if parts[:1] == ["sdcard"]:
            return parts
        raise SandboxError(f"{device_path}: outside the emulated device's storage "
                           f"(only {DEVICE_TMP} and /sdcard are mapped)")

    @contextlib.contextmanager
    def open_parent(self, device_path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """``(folder descriptor, final name)`` for a sync request's path (name ``""`` for the
        sandbox folder itself), reached one name at a time from the sandbox folder's own
        descriptor with O_NOFOLLOW. A symbolic link anywhere on the way -- even one swapped in
        after ``host_path`` looked -- is refused, never followed; use the descriptor with
        ``dir_fd=`` and O_NOFOLLOW for the final name. ``create`` makes missing folders (SEND's
        fixed_push_mkdir). Missing folders otherwise raise FileNotFoundError."""
        names = self._below_folder(device_path)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        fd = os.open(self.folder, flags)
        try:
            for name in names[:-1]:
                try:
                    child = os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=fd)
                    child = self._open_child(device_path, name, fd, flags)
                except OSError as exc:
                    raise self._link_error(device_path, name, fd, exc) from None
                os.close(fd)
                fd = child
            yield fd, names[-1] if names else ""
        finally:
            os.close(fd)

    def _open_child(self, device_path: str, name: str, fd: int, flags: int) -> int:
        try:
            return os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            raise self._link_error(device_path, name, fd, exc) from None

    @staticmethod
    def _link_error(device_path: str, name: str, fd: int, exc: OSError) -> Exception:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link or exc.errno == errno.ELOOP:
            return SandboxError(f"{device_path}: {name!r} on the way is a symbolic link; the "
                                "emulated device's file service follows none")
        return exc

    def host_path(self, device_path: str) -> Path:
        """The host path for a sync request's device path, or SandboxError saying why not.

        Relative paths are taken from /data/local/tmp; ``..`` is refused outright; a path that
        leaves the sandbox through a symbolic link is refused too. This is the readable check;
        files are then opened through ``open_parent``, which follows no link at all.
        """
        parts = self._parts(device_path)
        for prefix, base in ((("data", "local", "tmp"), self.folder), (("sdcard",), self.folder / "sdcard")):
            if tuple(parts[:len(prefix)]) == prefix:
                host = base.joinpath(*parts[len(prefix):])
                real, real_base = os.path.realpath(host), os.path.realpath(base)
                if real != real_base and not real.startswith(real_base + os.sep):
                    raise SandboxError(f"{device_path}: leads outside the sandbox through a symbolic link")
                return host
        raise SandboxError(f"{device_path}: outside the emulated device's storage "
                           f"(only {DEVICE_TMP} and /sdcard are mapped)")
