"""Shared by bench_harness_*.py: the small model they time, and one `deepcompress bench` call."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def make_lenet300_tflite(path: Path) -> Path:
    """LeNet-300-100 (266K weights, 1 MB float32) through litert_torch. Weights are seed-0 initial
    values: latency does not depend on training."""
    if path.is_file():
        return path
    import torch
    import litert_torch

    from compression.models import LeNet300

    torch.manual_seed(0)
    model = LeNet300().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # litert_torch prints progress; stdout is our JSON
        litert_torch.convert(model, (torch.zeros(1, 1, 28, 28),)).export(str(path))
    return path


def bench_cli(artifact: Path, device: str, runs: int, warmup: int = 5, timeout_s: float = 600) -> tuple[float, dict]:
    """Run `deepcompress bench --json` as a user would (a fresh process); return (wall s, result).

    With --json every outcome is one JSON object on stdout, a failure included: its ``error``
    is what is reported, with whatever the process said on stderr."""
    argv = [sys.executable, "-m", "deepcompress.cli", "bench", str(artifact), "--device", device,
            "--runs", str(runs), "--warmup", str(warmup), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": "no output"}
    if proc.returncode != 0 or not result.get("ok"):
        raise SystemExit(f"bench on {device} failed ({proc.returncode}): {result.get('error')}"
                         f"{' | ' + proc.stderr.strip()[-1000:] if proc.stderr.strip() else ''}")
    return wall, result


@contextlib.contextmanager
def emulated_device(needed: bool = True):
    """Start the background emulated device (its start-up is not what is measured) and stop it
    afterwards, unless it was already running before."""
    if not needed:
        yield
        return
    from device_harness._discover import _port_open
    from device_harness.emulator import DEFAULT_PORT, ensure_emulator, stop_emulator

    was_running = _port_open("127.0.0.1", DEFAULT_PORT, 0.2)
    ensure_emulator()
    try:
        yield
    finally:
        if not was_running:
            stop_emulator()
