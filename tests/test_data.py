"""IDX loading: real format, clear errors for missing or corrupt files."""
import gzip

import numpy as np
import pytest

from compression.data import DEFAULT_ROOT, ENV_VAR, load_split, resolve_root
from dccore.errors import DataError
from conftest import FASHION, write_idx


def test_loads_tiny_idx(tiny_idx):
    split = load_split("train", tiny_idx)
    assert split.images.shape == (600, 1, 28, 28) and split.labels.shape == (600,)
    assert float(split.images.max()) == 1.0 and split.labels[:3].tolist() == [0, 1, 2]
    assert len(load_split("test", tiny_idx, limit=7)) == 7


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert str(resolve_root(None)) == DEFAULT_ROOT
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert str(resolve_root("/x")) == "/x"


def test_missing_files_name_the_package_or_flag(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="--data DIR or set DEEPCOMPRESS_DATA"):
        load_split("train", tmp_path)
    import compression.data as data
    monkeypatch.setattr(data, "DEFAULT_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_split("train", tmp_path)


def test_corrupt_and_truncated_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DataError, match="do not match"):
        load_split("train", tmp_path)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_split("train", tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(DataError, match="bad magic"):
        load_split("train", tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:20])
    with pytest.raises(DataError, match="cannot read"):
        load_split("train", tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_fashion_mnist_from_debian():
    test = load_split("test", None, limit=100)
    assert test.images.shape == (100, 1, 28, 28)
    full = load_split("test")
    assert len(full) == 10000 and sorted(set(full.labels.tolist())) == list(range(10))
