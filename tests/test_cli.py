"""The command line as a CI job sees it: --version, JSON on failure, results on stdout,
diagnostics on stderr, and a heartbeat in a log that is not a terminal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepcompress import __version__
from deepcompress.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"deepcompress {__version__}"


@pytest.mark.parametrize("argv", [
    ["check", "nothing.tflite", "--budget", "none.toml", "--json"],   # our own error
    ["check", "--json"],                                              # argparse's
])
def test_json_failures_are_json_on_stdout_and_one_line_on_stderr(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == 2 and report["ok"] is False and report["exit_code"] == 2
    assert report["error"] and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_bug_is_one_line_not_a_traceback(monkeypatch, capsys):
    import deepcompress.commands.check as check

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(check, "main", broken)
    assert main(["check", "a.tflite", "--budget", "b.toml"]) == 3
    err = capsys.readouterr().err
    assert "internal error (ZeroDivisionError" in err and "Traceback" not in err


def test_a_run_in_ci_prints_a_heartbeat_results_on_stdout(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("""
name = "tiny"
[data]
train_limit = 600
test_limit = 200
[baseline]
epochs = 2
[[stages]]
kind = "prune"
sparsity = 0.5
rounds = 1
retrain_epochs = 1
""")
    env = dict(os.environ, DEEPCOMPRESS_HEARTBEAT_S="0.05")
    proc = subprocess.run([sys.executable, "-m", "deepcompress", "run", str(recipe), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "per-layer compression" in proc.stdout and "accuracy: baseline" in proc.stdout
    err = proc.stderr.splitlines()
    assert any("baseline: started" in line for line in err)
    assert any(line.split("] ", 1)[-1].startswith("still running: ") for line in err)
    assert any("baseline accuracy" in line for line in err)
    assert not any(".py:" in line for line in err)      # no source locations in log lines
    assert all(line.startswith("[") for line in err), err  # nothing but our own lines


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`deepcompress devices --json | head -0`: the pipe's reader is gone before we write; the
    command stops with the shell's SIGPIPE status and no traceback (it was an internal error)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "deepcompress", "devices", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
