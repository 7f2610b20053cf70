"""Every writer whose output folder refuses writes says so in one line naming the path, exit 2
(issue 19, item 11): it was an "internal error ... please report it" (exit 3) for run, qualify,
nightly, unpack and the others. The CLI maps an OSError on a path at one place."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dcz as container
from compression.models import build_model
from deepcompress.cli import main


def _refuses_writes(folder: Path) -> bool:
    probe = folder / ".deepcompress-probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    return False


@pytest.fixture
def readonly(tmp_path) -> Path:
    """A folder in which no file can be made: a 0o555 folder, or for root (whom permissions do
    not stop) /sys, where the kernel refuses new files to everyone."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if _refuses_writes(folder):
            yield folder
            return
    finally:
        folder.chmod(0o755)
    if Path("/sys").is_dir() and _refuses_writes(Path("/sys")):
        yield Path("/sys")
        return
    pytest.skip("no folder here refuses writes to this user")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    model = build_model("lenet300")
    torch.save(model.state_dict(), root / "m.pt")
    container.pack(model.state_dict(), root / "m.dcz",
                   meta={"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]}})
    (root / "q.toml").write_text(f'name = "q"\n[model]\ndcz = "{root / "m.dcz"}"\n'
                                 '[bench]\ndevices = ["host"]\n[budgets]\nmax_size_bytes = 1e7\n')
    (root / "n.toml").write_text(f'name = "n"\n[devices]\ncpu0 = "host"\n[[models]]\nname = "m"\n'
                                 f'model = {{ dcz = "{root / "m.dcz"}" }}\n'
                                 'budgets = { max_size_bytes = 10_000_000 }\n')
    (root / "b.toml").write_text('[artifacts."*.dcz"]\nmax_size_bytes = 10_000_000\n')
    (root / "r.toml").write_text('name = "r"\n[model]\nname = "lenet300"\n[baseline]\nepochs = 1\n'
                                 '[[stages]]\nkind = "encode"\n')
    return {"pt": root / "m.pt", "dcz": root / "m.dcz", "q": root / "q.toml",
            "n": root / "n.toml", "b": root / "b.toml", "r": root / "r.toml"}


@pytest.mark.parametrize("argv", [
    ["pack", "{pt}", "--model", "lenet300", "--out", "{ro}/m.dcz"],
    ["unpack", "{dcz}", "--out", "{ro}/m.pt"],
    ["check", "{dcz}", "--budget", "{b}", "--junit", "{ro}/junit.xml"],
    ["qualify", "{q}", "--out", "{ro}/q"],
    ["qualify", "{q}", "--out", "{tmp}/q", "--db", "{ro}/history.sqlite"],
    ["nightly", "{n}", "--out", "{ro}/n"],
    ["run", "{r}", "--out", "{ro}/r"],
])
def test_a_folder_that_refuses_writes_is_named_in_one_line(readonly, files, tmp_path, capsys, argv):
    argv = [a.format(ro=readonly, tmp=tmp_path, **files) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "internal error" not in err and err.count("\n") == 1, err
    assert str(readonly) in err
    assert not os.path.exists(readonly / "m.dcz")
