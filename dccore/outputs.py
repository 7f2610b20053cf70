"""Output files: written atomically, and never at the cost of anything the user owns.

Two rules, for every path the project writes:

1. **Atomic.** A reader never sees a half-written output under its final name: each is written
   beside it under a hidden temporary name and renamed into place (a directory, such as an
   ``.mlpackage``, is swapped in three renames: old one aside, new one in, old one deleted).
2. **Never destroy what is not ours.** Before any work, :func:`check_output` looks at the named
   path. Nothing there: fine, if its folder exists. A file or folder *of the kind we write* (an
   ``OutputKind`` recognises its own: a TFLite flatbuffer by its identifier, an ``.mlpackage`` by
   its manifest, ...): replaced. Anything else (a folder where a file goes, a user's text file, a
   symbolic link, a device) is refused with :class:`UsageError`, and nothing is touched.

A **folder** a command writes (``run``, ``sweep``, ``sensitivity``, ``autotune``, ``qualify``,
``nightly`` ``--out DIR``) follows the same rule through :func:`check_folder` and
:func:`claim_folder`: a new or empty folder is taken, and an existing one only if it carries our
marker, ``DIR/.deepcompress.json``, written when the command took the folder and naming the
command and a run id. What a folder merely holds (a ``recipe.json``, a ``sweep.json``) proves
nothing: a folder of the user's own files may hold the same names.

``shutil.rmtree`` is called on exactly two kinds of tree: a temporary this process created, and
an old output that ``check_output`` recognised as ours and this process renamed aside. Temporaries
a killed process left behind carry its pid in their name (``.NAME.dctmp-PID-RAND``); the next
write beside them removes those whose process is gone (a deepcompress process created them).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UsageError

_TMP_TAG = ".dctmp-"
_OLD_TAG = ".dcold-"
_STALE_RE = re.compile(r"^\..+\.dc(?:tmp|old)-(\d+)-[0-9a-f]{8}(?:\..*)?$")


@dataclass(frozen=True)
class OutputKind:
    """What a writer produces: a file or a folder, and how to recognise one it wrote before."""

    name: str                       # "TFLite model", for messages
    is_dir: bool = False
    recognise: Callable[[Path], bool] = lambda p: True
    example: str = "result"         # a name to suggest when a path names a folder: "model.tflite"

    def owns(self, path: Path) -> bool:
        try:
            if path.is_symlink():
                return False
            mode = path.lstat().st_mode
            if self.is_dir != stat.S_ISDIR(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return False
            return bool(self.recognise(path))
        except OSError:
            return False


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _empty_or(test: Callable[[Path], bool]) -> Callable[[Path], bool]:
    """An empty file is nobody's content: a writer may fill it."""
    return lambda p: p.stat().st_size == 0 or test(p)


def _is_json(p: Path) -> bool:
    if p.stat().st_size > 64 << 20:
        return False
    try:
        return isinstance(json.loads(p.read_text(encoding="utf-8")), (dict, list))
    except (OSError, ValueError):
        return False


def _is_jsonl(p: Path) -> bool:
    """Every complete line of the file's first 64 KiB is a JSON object."""
    lines = _head(p, 65536).split(b"\n")[:-1] or [_head(p, 65536)]
    try:
        return all(isinstance(json.loads(line), dict) for line in lines if line.strip())
    except ValueError:
        return False


def _is_torch_file(p: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(p) as zf:
            return any(n.endswith("/data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_mlpackage(p: Path) -> bool:
    return (p / "Manifest.json").is_file() and (p / "Data").is_dir()


ANY_FILE = OutputKind("file")   # internal outputs (inside our own run folders)
TFLITE = OutputKind("TFLite model", recognise=_empty_or(lambda p: _head(p, 8)[4:8] == b"TFL3"),
                    example="model.tflite")
MLPACKAGE = OutputKind("Core ML package", is_dir=True, recognise=_is_mlpackage,
                       example="model.mlpackage")
DCZ = OutputKind(".dcz file", recognise=_empty_or(lambda p: _head(p, 8) == b"\x89DCZ\r\n\x1a\n"),
                 example="model.dcz")
TORCH_FILE = OutputKind("PyTorch state_dict file", recognise=_empty_or(_is_torch_file))
JUNIT_XML = OutputKind("JUnit XML report", recognise=_empty_or(
    lambda p: _head(p, 256).lstrip().startswith(b"<?xml") and b"<testsuite" in _head(p, 4096)))
JSON_FILE = OutputKind("JSON file", recognise=_empty_or(_is_json))
JSONL_FILE = OutputKind("JSON-lines results file", recognise=_empty_or(_is_jsonl))


def _named(path: str | os.PathLike[str], flag: str, what: str, real: str,
           example: str) -> tuple[Path, str]:
    """``path`` and how messages name it; refused unless it names a ``what`` and is no link."""
    p = Path(path)
    where = f"{flag} {p}"
    if str(path) == "" or p.name in ("", ".", ".."):
        raise UsageError(f"{where}: not a {what} name; give a path such as out/{example}")
    if p.is_symlink():
        raise UsageError(f"{where} is a symbolic link; name the real {real} (nothing was written)")
    return p, where


def check_output(path: str | os.PathLike[str], kind: OutputKind, *, flag: str = "output",
                 make_parents: bool = False) -> Path:
    """Refuse ``path`` (UsageError, exit 2) unless writing it destroys nothing of the user's.

    Call it before any work. ``make_parents``: create missing folders above it (for run folders;
    a single output file's folder must exist, so a typo does not scatter new folders)."""
    p, where = _named(path, flag, "file", "path", kind.example)
    if p.exists():
        if not kind.owns(p):
            what = "folder" if p.is_dir() else "file" if p.is_file() else "special file"
            raise UsageError(f"{where} already exists and is a {what} that is not a {kind.name} "
                             f"(deepcompress replaces only its own outputs); choose another path "
                             f"or move it away first")
        return p
    parent = p.parent
    if not parent.is_dir():
        if parent.exists():
            raise UsageError(f"{where}: {parent} is not a folder")
        if not make_parents:
            raise UsageError(f"{where}: folder {parent} does not exist; create it first "
                             f"(mkdir -p {parent})")
        parent.mkdir(parents=True, exist_ok=True)
    return p


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries and set-aside outputs in ``folder`` whose writing process is gone.

    Only names of our own pattern (``.NAME.dctmp-PID-RAND``, ``.NAME.dcold-PID-RAND``) are
    considered, and only when their pid is not running, so nothing else is removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _STALE_RE.match(entry.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                path.unlink()
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                continue
        except OSError:
            continue
        removed.append(path)
    return removed


def _hidden_name(final: Path, tag: str, suffix: str) -> Path:
    return final.with_name(f".{final.name}{tag}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp",
                kind: OutputKind = ANY_FILE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    Works for files and for directories (``kind.is_dir``). The temporary name is hidden and ends
    with ``suffix``, for writers that insist on an extension (coremltools saves an ML Program only
    to a path ending in ".mlpackage"). An existing ``path`` must be ``kind``'s own (checked again
    here, right before it is replaced); a directory is swapped by renaming the old one aside
    first, so the final name always holds a whole package, old or new.
    """
    final = Path(path)
    check_output(final, kind, make_parents=True)
    clean_stale(final.parent)
    tmp = _hidden_name(final, _TMP_TAG, suffix)   # the writer creates it, file or folder
    try:
        yield tmp
        _move_into_place(tmp, final, kind)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)   # ours: created above
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def _move_into_place(tmp: Path, final: Path, kind: OutputKind) -> None:
    if final.exists() or final.is_symlink():
        if not kind.owns(final):   # something appeared since check_output: leave it alone
            raise UsageError(f"{final} was replaced by something that is not a {kind.name} "
                             "while deepcompress was writing; nothing was overwritten")
        if final.is_dir():
            aside = _hidden_name(final, _OLD_TAG, "")
            os.rename(final, aside)
            os.rename(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)   # ours: recognised, and renamed by us
            return
    os.replace(tmp, final)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes,
                       kind: OutputKind = ANY_FILE) -> None:
    with atomic_path(path, kind=kind) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(path: str | os.PathLike[str], obj: Any, kind: OutputKind = ANY_FILE) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), kind)


def read_json_object(path: str | os.PathLike[str]) -> dict | None:
    """The JSON object a file holds; None when it is missing, unreadable or holds no object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def append_jsonl(path: str | os.PathLike[str], record: Any) -> None:
    """Append ``record`` as one JSON line: one ``write`` of the whole line with O_APPEND, so
    readers (and other writers) never see half a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created with its folder) for the block."""
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def temporary_folder(prefix: str = "deepcompress-") -> tempfile.TemporaryDirectory:
    """A private temporary folder, removed with everything in it when the block ends."""
    return tempfile.TemporaryDirectory(prefix=prefix)


# --------------------------------------------------------------------------------------------
# Folders a command writes

FOLDER_MARKER = ".deepcompress.json"
# qualify and nightly marked their folders before the shared marker existed
_OLD_MARKERS = {".deepcompress-qualify": "qualify", ".deepcompress-nightly": "nightly"}


@dataclass(frozen=True)
class FolderMark:
    """Our marker in a folder: the command that took it, and that run's id."""

    command: str
    run_id: str


def _read_marker(path: Path) -> dict | None:
    """A marker's JSON object, or None unless it is a small regular file holding one of ours."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "deepcompress":
        return None
    return data


def folder_mark(folder: str | os.PathLike[str]) -> FolderMark | None:
    """The marker of a folder a deepcompress command took, or None (no marker: not ours)."""
    root = Path(folder)
    data = _read_marker(root / FOLDER_MARKER)
    if data is not None and isinstance(data.get("command"), str) \
            and isinstance(data.get("run_id"), str):
        return FolderMark(data["command"], data["run_id"])
    for name, command in _OLD_MARKERS.items():
        data = _read_marker(root / name)
        if data is not None and data.get("what") == name:
            return FolderMark(command, "")
    return None


def check_folder(path: str | os.PathLike[str], command: str, *, flag: str = "--out",
                 accept: tuple[str, ...] = (),
                 legacy: Callable[[Path], bool] | None = None) -> FolderMark | None:
    """Refuse (UsageError, exit 2) a folder ``command`` may not write into; call it before any
    work. Taken: a path that does not exist yet (nor its parents: :func:`claim_folder` makes
    them), an empty folder (None is returned for both), or a folder whose marker names
    ``command`` or one of ``accept`` (its FolderMark is returned). ``legacy``: recognises a
    folder this command wrote before markers existed, by evidence only deepcompress leaves
    (returned as a FolderMark with an empty run id). Everything else is refused untouched."""
    p, where = _named(path, flag, "folder", "folder", command)
    if not p.exists():
        up = next((a for a in p.parents if a.exists() or a.is_symlink()), None)
        if up is not None and not up.is_dir():
            raise UsageError(f"{where}: {up} is not a folder")
        return None
    if not p.is_dir():
        raise UsageError(f"{where} exists and is not a folder; 'deepcompress {command}' writes a "
                         "folder of files: name a new or empty folder")
    try:
        entries = sorted(os.listdir(p))
    except OSError as exc:
        raise UsageError(f"{where}: cannot list it ({exc.strerror or exc})") from None
    if not entries:
        return None
    mark = folder_mark(p)
    if mark is not None:
        if mark.command == command or mark.command in accept:
            return mark
        raise UsageError(f"{where} is a folder that 'deepcompress {mark.command}' wrote, not "
                         f"'deepcompress {command}'; choose a new or empty folder")
    if legacy is not None and legacy(p):
        return FolderMark(command, "")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise UsageError(f"{where} is a folder with other files in it ({shown}) and no deepcompress "
                     f"marker ({FOLDER_MARKER}), so it is not one deepcompress made; nothing was "
                     "written: choose a new or empty folder")


def claim_folder(path: str | os.PathLike[str], command: str) -> FolderMark:
    """Take the folder (after :func:`check_folder`): create it and its parents, and write our
    marker unless it carries one already (a rerun or a resumed run keeps its run id)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    mark = folder_mark(p)
    if mark is not None and mark.run_id:
        return mark
    mark = FolderMark(command, uuid.uuid4().hex)
    write_json_atomic(p / FOLDER_MARKER, {
        "written_by": "deepcompress", "command": mark.command, "run_id": mark.run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, kind=MARKER_FILE)
    return mark


MARKER_FILE = OutputKind("deepcompress folder marker",
                         recognise=lambda p: _read_marker(p) is not None)
