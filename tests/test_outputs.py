"""Outputs never destroy what they do not own, and never appear half-written (dccore.outputs),
checked on the library and on each command that writes a user-named path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dccore.errors import UsageError
from dccore.outputs import (DCZ, MLPACKAGE, TFLITE, TORCH_FILE, atomic_path, check_output,
                            clean_stale, write_bytes_atomic)
from deepcompress.cli import main


def _scratch_dir(path: Path) -> Path:
    path.mkdir()
    (path / "keep.txt").write_text("the user's")
    return path


def _package(path: Path, payload: bytes) -> Path:
    (path / "Data").mkdir(parents=True)
    (path / "Manifest.json").write_text("{}")
    (path / "Data" / "weights.bin").write_bytes(payload)
    return path


# ---- the library --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [TFLITE, DCZ, TORCH_FILE])
def test_a_folder_where_a_file_goes_is_refused_and_kept(tmp_path, kind):
    target = _scratch_dir(tmp_path / "out.x")
    with pytest.raises(UsageError, match="already exists and is a folder"):
        check_output(target, kind, flag="--out")
    with pytest.raises(UsageError):
        write_bytes_atomic(target, b"data", kind=kind)
    assert (target / "keep.txt").read_text() == "the user's"


def test_a_file_of_someone_else_is_refused_one_of_ours_is_replaced(tmp_path):
    theirs = tmp_path / "model.tflite"
    theirs.write_text("release notes, not a model")
    with pytest.raises(UsageError, match="not a TFLite model"):
        write_bytes_atomic(theirs, b"\0\0\0\0TFL3new", kind=TFLITE)
    assert theirs.read_text() == "release notes, not a model"
    ours = tmp_path / "ours.tflite"
    write_bytes_atomic(ours, b"\0\0\0\0TFL3old", kind=TFLITE)
    write_bytes_atomic(ours, b"\0\0\0\0TFL3new", kind=TFLITE)
    assert ours.read_bytes() == b"\0\0\0\0TFL3new"


def test_symlinks_and_missing_folders_are_refused(tmp_path):
    target = tmp_path / "real.dcz"
    link = tmp_path / "link.dcz"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        check_output(link, DCZ)
    with pytest.raises(UsageError, match="does not exist; create it first"):
        check_output(tmp_path / "no" / "such" / "x.dcz", DCZ)
    assert not (tmp_path / "no").exists()
    assert check_output(tmp_path / "made" / "x.dcz", DCZ, make_parents=True)
    assert (tmp_path / "made").is_dir()


def test_a_file_and_a_folder_are_named_by_one_rule(tmp_path):
    from dccore.outputs import check_folder

    for bad in ("", ".", tmp_path / ".."):
        with pytest.raises(UsageError, match="not a file name; give a path such as out/"):
            check_output(bad, DCZ)
        with pytest.raises(UsageError, match="not a folder name; give a path such as out/run"):
            check_folder(bad, "run")
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="--out .*link is a symbolic link; name the real folder"):
        check_folder(tmp_path / "link", "run")


def test_a_package_is_swapped_whole_and_a_non_package_folder_refused(tmp_path):
    pkg = _package(tmp_path / "m.mlpackage", b"old")
    with atomic_path(pkg, suffix=".mlpackage", kind=MLPACKAGE) as tmp:
        _package(tmp, b"new")
        assert (pkg / "Data" / "weights.bin").read_bytes() == b"old"   # still whole until the swap
    assert (pkg / "Data" / "weights.bin").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["m.mlpackage"]      # no temporaries left
    other = _scratch_dir(tmp_path / "n.mlpackage")
    with pytest.raises(UsageError, match="not a Core ML package"):
        check_output(other, MLPACKAGE)
    assert (other / "keep.txt").exists()


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path):
    ours = tmp_path / "m.dcz"
    write_bytes_atomic(ours, b"\x89DCZ\r\n\x1a\nold", kind=DCZ)
    with pytest.raises(RuntimeError):
        with atomic_path(ours, kind=DCZ) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert ours.read_bytes().endswith(b"old")
    assert [p.name for p in tmp_path.iterdir()] == ["m.dcz"]


def test_temporaries_of_a_dead_process_are_cleaned_others_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale_file = tmp_path / f".m.dcz.dctmp-{dead}-0123abcd.tmp"
    stale_file.write_bytes(b"x")
    stale_dir = tmp_path / f".m.mlpackage.dcold-{dead}-89abcdef"
    _package(stale_dir, b"old")
    alive = tmp_path / f".m.dcz.dctmp-{os.getppid()}-0123abcd.tmp"   # our parent is running
    alive.write_bytes(b"x")
    lookalike = tmp_path / ".m.dcz.dctmp-notapid.tmp"
    lookalike.write_bytes(b"x")
    mine = tmp_path / "notes.txt"
    mine.write_text("keep")
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale_file.name, stale_dir.name])
    assert alive.exists() and lookalike.exists() and mine.exists()


# ---- the commands -------------------------------------------------------------------------------

@pytest.fixture
def dcz_file(tmp_path):
    import dcz

    path = tmp_path / "m.dcz"
    dcz.pack({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, path,
             meta={"model": {"name": "lenet300"}})
    return path


def test_unpack_into_a_folder_is_refused_before_any_work(dcz_file, tmp_path, capsys):
    target = _scratch_dir(tmp_path / "existing")
    assert main(["unpack", str(dcz_file), "--out", str(target)]) == 2
    assert "already exists and is a folder" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "the user's"
    assert main(["unpack", str(dcz_file), "--out", str(tmp_path / "sd.pt")]) == 0
    assert main(["unpack", str(dcz_file), "--out", str(tmp_path / "sd.pt")]) == 0   # ours: replaced


def test_pack_onto_someone_elses_file_is_refused(tmp_path, capsys):
    sd = tmp_path / "sd.pt"
    from compression.models import LeNet300

    torch.save(LeNet300().state_dict(), sd)
    notes = tmp_path / "notes.dcz"
    notes.write_text("not a model")
    assert main(["pack", str(sd), "--model", "lenet300", "--out", str(notes)]) == 2
    assert notes.read_text() == "not a model"
    assert main(["pack", str(sd), "--model", "lenet300", "--out",
                 str(tmp_path / "nowhere" / "m.dcz")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err


def _fake_run(folder: Path, finished: bool) -> Path:
    from dccore.outputs import claim_folder

    claim_folder(folder, "run")        # what `run` does to its folder before the pipeline starts
    (folder / "recipe.json").write_text('{"recipe": {}, "sha256": "x"}')
    (folder / "model.dcz").write_bytes(b"old model")
    if finished:
        (folder / "report.json").write_text('{"model_sha256": "old"}')
    return folder


def test_run_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    target = _scratch_dir(tmp_path / "mine")
    assert main(["run", "lenet300", "--out", str(target)]) == 2
    assert "no deepcompress marker" in capsys.readouterr().err
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["run", "lenet300", "--out", str(afile)]) == 2
    assert afile.read_text() == "x"


def test_a_finished_run_is_replaced_only_with_force_and_its_report_goes_first(tmp_path, capsys,
                                                                              monkeypatch):
    run = _fake_run(tmp_path / "run", finished=True)
    assert main(["run", "lenet300", "--out", str(run)]) == 2
    assert "holds a finished run; pass --force" in capsys.readouterr().err
    assert (run / "report.json").exists()

    import compression.pipeline as pipeline

    def killed(*args, **kwargs):
        raise KeyboardInterrupt   # as if the re-run were stopped half-way

    monkeypatch.setattr(pipeline, "run_recipe", killed)
    assert main(["run", "lenet300", "--out", str(run), "--force", "--quiet"]) == 130
    assert not (run / "report.json").exists()   # no report describing files it did not write
    unfinished = _fake_run(tmp_path / "unfinished", finished=False)
    assert main(["run", "lenet300", "--out", str(unfinished), "--quiet"]) == 130  # no --force


def test_a_report_describes_the_model_file_beside_it(tmp_path):
    from compression.api import run
    from compression.pipeline import read_report
    from dccore.errors import CheckpointError

    recipe = {"name": "t", "data": {"train_limit": 200, "test_limit": 50},
              "baseline": {"epochs": 1},
              "stages": [{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0}]}
    run(recipe, tmp_path / "run")
    report = read_report(tmp_path / "run")
    assert len(report["model_sha256"]) == 64
    (tmp_path / "run" / "model.dcz").write_bytes(b"\x89DCZ\r\n\x1a\n a newer, half-written run")
    with pytest.raises(CheckpointError, match="does not describe the model.dcz beside it"):
        read_report(tmp_path / "run")
