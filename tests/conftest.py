"""Shared fixtures: tiny IDX datasets written on the fly, a tiny recipe, a user's own model file
and the token ids it reads."""
from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory) -> Path:
    """A separable 10-class IDX dataset (class c lights up row block c), 600 train / 200 test."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, n, prefix in (("train", 600, "train"), ("test", 200, "t10k")):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c:2 * c + 3, :] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def make_recipe(tiny_idx):
    """A factory for tiny recipe dicts (see tiny_recipe)."""
    return lambda **extra: tiny_recipe(tiny_idx, **extra)


def tiny_recipe(root: Path, **extra) -> dict:
    """A recipe dict small enough to run in a second or two."""
    recipe = {
        "name": "tiny", "seed": 3,
        "data": {"root": str(root), "batch_size": 64},
        "model": {"name": "lenet300"},
        "baseline": {"epochs": 2, "lr": 2e-3},
        "stages": [
            {"kind": "prune", "name": "1_prune", "sparsity": 0.8, "rounds": 2, "retrain_epochs": 1},
            {"kind": "share", "name": "2_share", "bits": 3},
            {"kind": "finetune_centroids", "name": "3_finetune", "epochs": 1},
            {"kind": "encode", "name": "4_encode", "coder": "huffman"},
        ],
    }
    recipe.update(extra)
    return recipe


def pack_shared_lenet300(path: Path, plan: dict, meta: dict, train_on: Path | None = None) -> Path:
    """A LeNet-300-100 pruned and shared (``plan``: name -> (sparsity, bits)), packed to ``path``
    as a ready .dcz: exports and benches run on it in seconds. ``train_on``: an IDX folder (the
    tiny one) to train it on for two epochs first, so that its measured accuracy means something;
    without, its weights are untrained."""
    import torch

    import dcz as container
    from compression.models import build_model
    from compression.prune import magnitude_mask
    from compression.share import share_layer

    torch.manual_seed(0)
    model = build_model("lenet300")
    if train_on is not None:
        from compression.data import load_split

        train = load_split("train", root=str(train_on))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(2):
            for i in range(0, len(train), 64):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(train.images[i:i + 64]),
                                                         train.labels[i:i + 64])
                loss.backward()
                opt.step()
    model.eval()
    for name, (sparsity, bits) in plan.items():
        weight = model.get_parameter(name)
        centroids, assign, mask = share_layer(weight.data, magnitude_mask(weight.data, sparsity=sparsity),
                                              bits, "linear", 20)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    container.pack(model.state_dict(), path, compressed={n: {"bits": b} for n, (_, b) in plan.items()},
                   meta=meta)
    return path


# A qualify config that exports a .dcz (``dcz``, e.g. pack_shared_lenet300's) to TFLite and benches
# it on the host: ``runs`` runs within ``timeout_s``; a size budget any LeNet-300-100 passes.
HOST_QUALIFY = """
name = "{name}"
[model]
dcz = "{dcz}"
[export]
formats = ["tflite"]
examples = 20
dense = false
[bench]
devices = ["host"]
runs = {runs}
warmup = 1
timeout_s = {timeout_s}
[budgets]
max_size_bytes = 10_000_000
"""

def place_users_own(target: Path, what: str, text: str = "mine") -> None:
    """Something of the user's at ``target`` that no output may replace: a ``"folder"`` holding
    keep.txt, or a ``"file"``; either holds ``text``."""
    if what == "folder":
        target.mkdir()
        (target / "keep.txt").write_text(text)
    else:
        target.write_text(text)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``user_module(name, source)``: ``name``.py written into tmp_path (returned), importable for
    this test only; forgotten afterwards, so a later test's file of that name is read afresh."""
    written = []

    def write(name: str, source: str) -> Path:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        written.append(name)
        return tmp_path

    yield write
    for name in written:
        sys.modules.pop(name, None)


def token_samples(path: Path, n: int, length: int, vocab: int, padded: int):
    """``n`` sequences of ``length`` token ids in [1, vocab) and their attention mask, whose last
    ``padded`` positions are randomly 0 (padding) or 1, saved to ``path`` as {"ids", "mask"}:
    what a sentence encoder's distill task reads. Returns (ids, mask)."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.int64)
    mask[:, length - padded:] = torch.randint(0, 2, (n, padded), generator=g)
    torch.save({"ids": ids, "mask": mask}, path)
    return ids, mask
