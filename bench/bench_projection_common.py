"""What the issue-13 benchmarks share (bench_projection, bench_shrink, bench_transfer,
bench_pareto): run a recipe through the CLI (or reuse its finished folder), export a model.dcz
to TFLite and measure it on the host and the emulated Android device, and say how loaded the
machine was. Every figure comes from a command the script prints, run as a user would."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "deepcompress"]


def machine() -> dict[str, Any]:
    return {"date": date.today().isoformat(),
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def cli(args: list[str], timeout: int = 7200) -> str:
    """Run ``deepcompress ARGS`` (1 thread, niced: the machine is shared); its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = ["nice", "-n", "10", *CLI, *args]
    print("$ deepcompress " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"deepcompress {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


def run(recipe: str, out: str | Path, sets: list[str] = (), fresh: bool = False) -> dict:
    """report.json of ``deepcompress run RECIPE --out OUT --set ...``; a finished folder is
    reused unless ``fresh`` (its recipe.json says what it ran)."""
    out = Path(out)
    report = out / "report.json"
    if report.is_file() and not fresh:
        print(f"  reusing {out}", file=sys.stderr)
        return json.loads(report.read_text())
    args = ["run", recipe, "--out", str(out), "--force", "--json", "-q"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    result = json.loads(cli(args))
    result["_wall_seconds"] = time.perf_counter() - t0
    return result


def export_tflite(dcz: str | Path, out: str | Path, input_shape: str | None = None,
                  **options: str) -> dict:
    """``deepcompress export DCZ --tflite OUT``: bytes, accuracy on the test set (LiteRT) and
    PyTorch's, and the largest output difference. ``input_shape`` for a file that records none
    (``deepcompress pack``'s)."""
    args = ["export", str(dcz), "--tflite", str(out), "--json"]
    if input_shape:
        args += ["--input-shape", input_shape]
    for key, value in options.items():
        args += [f"--tflite-{key.replace('_', '-')}", value]
    r = json.loads(cli(args))["tflite"]
    return {"bytes": r["bytes"], "zipped_bytes": r["zipped_bytes"], "ok": r["ok"],
            "accuracy": r.get("accuracy"), "torch_accuracy": r.get("torch_accuracy"),
            "max_abs_diff": r.get("max_abs_diff"), "dense_bytes": r.get("dense_bytes")}


def export_coreml(dcz: str | Path, out: str | Path) -> dict:
    r = json.loads(cli(["export", str(dcz), "--coreml", str(out), "--json", "--limit", "100"]))
    r = r["coreml"]
    return {"bytes": r["bytes"], "zipped_bytes": r["zipped_bytes"], "ok": r["ok"],
            "weights_match": r.get("weights_match"), "dense_bytes": r.get("dense_bytes")}


def bench(tflite: str | Path, runs: int = 200) -> dict[str, dict]:
    """p50/p90 latency (ms) and peak memory on the host and the emulated Android device."""
    out = cli(["bench", str(tflite), "--device", "host", "--device", "emulator", "--runs",
               str(runs), "--json"])
    results = {}
    for line in out.splitlines():
        if not line.strip().startswith("{"):
            continue
        r = json.loads(line)
        if "latency_ms" not in r:
            continue
        device = "emulator" if r["device"].get("kind") == "adb" else r["device"]["kind"]
        results[device] = {"p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
                           "peak_memory_mb": r.get("peak_memory_mb")}
    return results


def dcz_bytes(run_dir: str | Path) -> int:
    return (Path(run_dir) / "model.dcz").stat().st_size


def save(name: str, result: dict) -> Path:
    path = ROOT / "runs" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path
