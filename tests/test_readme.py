"""The README's promises that code can check: its Python example runs as printed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_training_loop_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    loop = next(b for b in blocks if "Compressor(" in b)
    assert len(loop.strip().splitlines()) <= 22          # the promised short example
    proc = subprocess.run([sys.executable, "-c", loop], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    sparsity, size = proc.stdout.split()
    assert 0.79 < float(sparsity) < 0.81 and int(size) == (tmp_path / "mine.dcz").stat().st_size
