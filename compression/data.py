"""IDX (MNIST-format) datasets, loaded whole into memory as tensors.

The default is Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package. The folder can be
changed by recipe (``[data] root``), by the ``--data`` flag, or by the ``DEEPCOMPRESS_DATA``
environment variable, so MNIST or any dataset in the same format works. Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dccore.errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "DEEPCOMPRESS_DATA"
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes -> numpy dtypes (big-endian on disk).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Fashion-MNIST / MNIST images are at most 60000 x 28 x 28; refuse headers claiming absurd sizes.
_MAX_ELEMENTS = 2**31


@dataclass(frozen=True)
class Split:
    """One split of a dataset: images as float32 in [0, 1] with a channel axis, int64 labels."""

    images: torch.Tensor  # (N, 1, H, W)
    labels: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Flag/recipe value first, then the environment variable, then Debian's folder."""
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic); expected MNIST-format data")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported IDX type 0x{type_code:02x} or rank {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    count = int(np.prod(shape, dtype=np.int64))
    if count > _MAX_ELEMENTS or len(raw) - header != count * dtype.itemsize:
        raise DataError(f"{path}: header claims shape {shape} but the file holds "
                        f"{len(raw) - header} bytes of data; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    hint = ("install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)"
            if root == Path(DEFAULT_ROOT) else
            f"pass --data DIR or set {ENV_VAR} to a folder holding the IDX files")
    raise DataError(f"dataset file {stem}[.gz] not found in {root}: {hint}")


def load_split(split: str, root: str | os.PathLike[str] | None = None,
               limit: int | None = None) -> Split:
    """Load ``train`` or ``test`` from an IDX folder; ``limit`` keeps the first N examples."""
    if split not in _SPLIT_FILES:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    folder = resolve_root(root)
    img_stem, lbl_stem = _SPLIT_FILES[split]
    images = read_idx(_find(folder, img_stem))
    labels = read_idx(_find(folder, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                        "do not match (expected N x H x W images and N labels)")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(x, y)
