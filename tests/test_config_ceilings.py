"""Every count and duration a qualify config or nightly matrix sets has a ceiling (issue 19,
item 6), refused before any work with the field named."""
from __future__ import annotations

import pytest

from dccore.errors import UsageError
from deepcompress.qualify._config import load_matrix, load_qualify_config
from test_qualify_config import CONFIG, MATRIX   # a valid qualify config and nightly matrix


# -- ceilings on counts ------------------------------------------------------------------------------
@pytest.mark.parametrize("section,key,value", [
    ("bench", "runs", "5_000_000"), ("bench", "warmup", "1_000_000"), ("bench", "threads", "100_000"),
    ("bench", "eval", "10_000_000"), ("bench", "retries", "1000"), ("bench", "timeout_s", "1e12"),
    ("bench", "cooldown_max_s", "1e9"), ("export", "examples", "1_000_000_000")])
def test_every_count_in_a_qualify_config_has_a_ceiling(tmp_path, section, key, value):
    path = tmp_path / "q.toml"
    path.write_text(CONFIG.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n"))
    with pytest.raises(UsageError, match=rf"{section}\.{key}: expected an? (integer|number) "
                                         r"in [\[(]\S+, [\d.]+\], got"):
        load_qualify_config(path)


@pytest.mark.parametrize("old,new,field", [
    ("lease_s = 60", "lease_s = 1e10", "lease_s"), ("window = 5", "window = 100000", "window"),
    ("min_samples = 3", "min_samples = 100000", "min_samples"),
    ("runs = 10", "runs = 10_000_000", "bench.runs")])
def test_every_count_in_a_matrix_has_a_ceiling(tmp_path, old, new, field):
    path = tmp_path / "m.toml"
    path.write_text((MATRIX + "[bench]\nruns = 10\n").replace(old, new))
    with pytest.raises(UsageError, match=rf"{field}: expected an? (integer|number) in \["):
        load_matrix(path)
