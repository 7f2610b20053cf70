"""An artifact's size as a release engineer means it (bytes on disk, and bytes inside an app), and
its sha256: the one hash that names an artifact in reports, the history and a device's cache.

An artifact is a file (``.tflite``, ``.dcz``) or a package folder (``.mlpackage``). A package's
size is the sum of its files. A symbolic link inside a package counts as the file it points to,
which must lie inside the package: a link that leaves it would make the size (and whatever is
shipped) depend on files that are not part of the artifact, so it is refused.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError

# APKs and IPAs are zip files; aapt2 and ditto deflate at zlib's strongest level.
ZIP_LEVEL = 9


@dataclass(frozen=True)
class ArtifactSize:
    bytes: int          # on disk: a file's size, or the total of a package directory's files
    zipped_bytes: int   # after deflate, as the artifact sits inside an APK or IPA

    def to_dict(self) -> dict[str, int]:
        return {"bytes": self.bytes, "zipped_bytes": self.zipped_bytes}


def artifact_files(path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(name inside the artifact, file whose bytes it holds) for every file of the artifact,
    in a stable order; links are followed, and must stay inside a package."""
    root = Path(path)
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise ArtifactError(f"artifact {root} does not exist")
    real_root = os.path.realpath(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = here / name
            if p.is_symlink():
                target = os.path.realpath(p)
                if os.path.commonpath([real_root, target]) != real_root:
                    raise ArtifactError(f"artifact {root}: {p.relative_to(root)} is a link to "
                                        f"{target}, outside the package; replace it with the file")
                if os.path.isdir(target):   # a link to a folder inside: its files are counted there
                    continue
                if not os.path.isfile(target):
                    raise ArtifactError(f"artifact {root}: {p.relative_to(root)} is a broken link")
            elif not p.is_file():
                continue
            out.append((f"{root.name}/{p.relative_to(root).as_posix()}", p))
    return sorted(out)


def artifact_size(path: str | os.PathLike[str]) -> ArtifactSize:
    """Measure an artifact: its bytes on disk, and the bytes of a real deflated zip of it."""
    files = artifact_files(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as zf:
        for arcname, f in files:
            zf.write(f, arcname)
    return ArtifactSize(sum(f.stat().st_size for _, f in files), buf.getbuffer().nbytes)


def artifact_sha256(path: str | os.PathLike[str]) -> str:
    """A file's sha256; a package's is the sha256 of one line ``name\\0sha256\\n`` per file, in
    :func:`artifact_files`' order and naming (the package folder's own name first)."""
    files = artifact_files(path)
    if Path(path).is_file():
        return _file_sha256(files[0][1])
    digest = hashlib.sha256()
    for name, f in files:
        digest.update(f"{name}\0{_file_sha256(f)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
