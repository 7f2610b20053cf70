"""Importing stays cheap, and every command answers --help."""
import subprocess
import sys

import pytest

from deepcompress.cli import COMMANDS, main

HEAVY = ("coremltools", "litert_torch", "ai_edge_litert", "tensorflow", "jax", "adb_shell")
NO_TORCH = ("dccore.errors", "deepcompress.cli", "device_harness")


@pytest.mark.parametrize("module", ["compression", "dcz", "device_harness",
                                    "ios_export", "android_export"])
def test_import_does_not_pull_heavy_backends(module):
    code = (f"import sys, {module}; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} pulled in {out.stdout.strip()}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: deepcompress " + command in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "run" in capsys.readouterr().out


@pytest.mark.parametrize("module", NO_TORCH)
def test_cli_and_errors_do_not_import_torch(module):
    """`deepcompress emulator` and `--help` start in well under a second."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
