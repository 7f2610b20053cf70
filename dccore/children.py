"""Child processes and temporary folders that end with the command that made them.

Every local program the harness starts (``device_harness.run_local``) is spawned here
(``spawn``): in a session, so a process group, of its own, registered while it runs. A long
command (qualify, nightly) runs inside ``ending_on_sigterm``: SIGTERM -- what CI runners,
``timeout`` and service managers send -- then kills every registered group and unwinds the
command as Ctrl-C does (``finally`` blocks remove their temporaries), and it exits 143
(128 + SIGTERM) with one line on stderr.

SIGKILL cannot be caught. So a temporary folder that a child works in is made by
``temp_folder``: named with its owner's pid, and holding a marker with that pid and the
process's start time. The next command inside ``ending_on_sigterm`` reaps (``reap_leftovers``)
the folders whose owner is gone -- ending first any process of ours still running from one (its
command line names the folder) -- and touches nothing without our marker.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from .outputs import _pid_alive

PREFIX = "deepcompress-"
MARKER = ".deepcompress-owner"
TERMINATED_EXIT = 128 + signal.SIGTERM

_lock = threading.RLock()
_groups: set[int] = set()      # process groups (= leader pids) of the children running now
_folders: set[str] = set()     # temporary folders made by this process, not yet removed
_terminating = threading.Event()
# The main thread is inside Popen: the SIGTERM handler (which runs in the main thread) must not
# raise there, or the child just forked would escape; spawn ends it and raises instead.
_main_spawning = False


def _terminated() -> SystemExit:
    """What SIGTERM raises in the main thread (and ``spawn`` / ``release`` afterwards, in any
    thread): it unwinds like KeyboardInterrupt, which ``except Exception`` does not stop, and
    exits 143. A plain SystemExit, not a subclass: a thread ends on it without a traceback."""
    return SystemExit(TERMINATED_EXIT)


# -- children ------------------------------------------------------------------------------------
def spawn(argv: list[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` in a session of its own, registered until
    ``release``; refused (SystemExit 143) once the command is being ended."""
    global _main_spawning
    main = threading.current_thread() is threading.main_thread()
    with _lock:   # end_children waits for a start in another thread, then ends it too
        if _terminating.is_set():
            raise _terminated()
        _main_spawning = main
        try:
            proc = subprocess.Popen(argv, start_new_session=True, **popen)
            _groups.add(proc.pid)
        finally:
            _main_spawning = False
    if _terminating.is_set():   # SIGTERM arrived while this thread started it
        _kill_group(proc.pid)
        proc.wait()
        release(proc)
    return proc


def release(proc: subprocess.Popen) -> None:
    """``proc`` has ended (and been waited for): its group is no longer ours to end."""
    with _lock:
        _groups.discard(proc.pid)
    if _terminating.is_set():
        raise _terminated()   # its end was ours: what it printed is no result


def end_children() -> None:
    """Kill every registered child's whole group, now; later ``spawn`` calls refuse."""
    with _lock:
        _terminating.set()
        groups = list(_groups)
    for group in groups:
        _kill_group(group)


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


# -- temporary folders ----------------------------------------------------------------------------
def temp_folder(kind: str) -> str:
    """A new private folder under the temporary directory, ``deepcompress-KIND-PID-XXXXXXXX``,
    marked as this process's (see ``reap_leftovers``); remove it with ``remove_folder``."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-")
    Path(path, MARKER).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    with _lock:
        _folders.add(path)
    return path


@contextlib.contextmanager
def temporary_folder(kind: str) -> Iterator[str]:
    """``temp_folder`` for the length of a ``with`` block."""
    path = temp_folder(kind)
    try:
        yield path
    finally:
        remove_folder(path)


def remove_folder(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with _lock:
        _folders.discard(path)


def reap_leftovers(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove the marked folders under ``root`` (default: the temporary directory) whose owner
    process is gone (killed, say, by SIGKILL), after killing any process of this user still
    running from one. Returns the folders removed. A folder without our marker, of another
    user, or of a process still alive is never touched."""
    reaped = []
    try:
        entries = list(os.scandir(root or tempfile.gettempdir()))
    except OSError:
        return reaped
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or \
                    entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            owner = _owner(Path(entry.path))
        except OSError:
            continue
        if owner is None or _alive(*owner):
            continue
        _kill_processes_naming(entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)
        reaped.append(entry.path)
    return reaped


def _owner(folder: Path) -> tuple[int, str] | None:
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink() or marker.stat().st_size > 100:
        return None
    fields = marker.read_text(errors="replace").split()
    if not fields or not fields[0].isdigit():
        return None
    return int(fields[0]), fields[1] if len(fields) > 1 else ""


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field on (state, ppid, ...); None where there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else ""   # field 22: starttime


def _alive(pid: int, started: str) -> bool:
    """Whether the process that wrote a marker still runs: its pid is taken (as for
    dccore.outputs' temporaries) *and*, where /proc tells, by the same process -- a folder's
    processes are killed when it is reaped, so a reused pid must not pass for its owner."""
    if pid == os.getpid():
        return True
    if not _pid_alive(pid):
        return False
    fields = _stat_fields(pid)
    if fields is None:        # no /proc (macOS): a live pid is taken to be its owner
        return True
    return fields[0] != "Z" and (not started or fields[19] == started)


def _kill_processes_naming(folder: str) -> None:
    """SIGKILL this user's processes whose command line names a path in ``folder`` (a runner
    and the wrapper that started it). Without /proc there is nothing to look at."""
    needle = os.fsencode(folder.rstrip("/") + "/")
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# -- the command's side ----------------------------------------------------------------------------
@contextlib.contextmanager
def ending_on_sigterm(what: str) -> Iterator[None]:
    """Run a command so that SIGTERM ends its children and unwinds it (exit 143), after reaping
    what an earlier command killed by SIGKILL left. A handler can only be installed from the
    main thread; elsewhere only the reaping is done."""
    reap_leftovers()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        if _terminating.is_set():
            return        # a second SIGTERM must not break the unwinding of the first
        end_children()
        with contextlib.suppress(OSError):   # os.write: no lock a print may hold right now
            os.write(2, f"{what}: terminated (SIGTERM); its child processes were ended and its "
                        "temporary folders are removed\n".encode())
        if not _main_spawning:
            raise _terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if _terminating.is_set():
            with _lock:   # what threads of the command had not removed when it was ended
                folders = list(_folders)
            for folder in folders:
                remove_folder(folder)
