"""Qualify end to end, then qualify the unchanged model again: wall time by phase, and how much
of the first run the cached second one costs.

    nice python bench/bench_qualify.py [--config examples/qualify_lenet300.toml] [--out DIR]
                                       [--screenshot docs/qualify_report.png]

Each run is `deepcompress qualify CONFIG --out DIR --json` in a fresh process, as a CI job runs
it; the phases are the command's own (results.json), the wall time includes the process start.
The default config qualifies LeNet-300-100 with the shipped recipe on the host and the emulated
Android device (started in the background if none answers on 127.0.0.1:5555, and stopped after).
``--screenshot`` renders the second run's report.html in headless chromium.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def qualify(config: Path, out: Path) -> tuple[float, int, dict]:
    argv = [sys.executable, "-m", "deepcompress", "qualify", str(config), "--out", str(out), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"qualify failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return wall, proc.returncode, json.loads(proc.stdout)


def screenshot(report: Path, png: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--screenshot needs chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="bench-qualify-chromium-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--no-first-run",
                        f"--user-data-dir={profile}", "--window-size=1150,3300",
                        "--virtual-time-budget=5000", f"--screenshot={png.resolve()}",
                        report.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    print(f"screenshot: {png} ({png.stat().st_size:,} bytes)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "examples" / "qualify_lenet300.toml")
    p.add_argument("--out", type=Path, help="qualification folder (default: a new temporary one)")
    p.add_argument("--screenshot", type=Path, metavar="PNG")
    args = p.parse_args()

    from device_harness.emulator import stop_emulator
    from device_harness.emulator._background import DEFAULT_PORT, answers_adb

    emulator_was_up = answers_adb(DEFAULT_PORT)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-qualify-")) / "q"
    print(f"config {args.config}, folder {out}; load average before: {load()}")
    try:
        first = qualify(args.config, out)
        again = qualify(args.config, out)
    finally:
        if not emulator_was_up:
            stop_emulator(DEFAULT_PORT)
    print(f"load average after: {load()}\n")
    print(f"{'phase':<12}{'first (s)':>12}{'again (s)':>12}{'again/first':>14}")
    for phase in ("compress", "export", "bench", "report", "total"):
        a, b = first[2]["phases"].get(phase, 0.0), again[2]["phases"].get(phase, 0.0)
        print(f"{phase:<12}{a:>12.1f}{b:>12.1f}{(b / a if a else 0):>13.1%}")
    print(f"{'wall':<12}{first[0]:>12.1f}{again[0]:>12.1f}{again[0] / first[0]:>13.1%}"
          "   (a fresh process each, imports included)\n")
    for name, (wall, code, r) in (("first", first), ("again", again)):
        print(f"{name}: exit {code}, {r['verdict']}; compression {r['compress']['how']}; "
              f"artifacts cached: {', '.join(n for n, a in r['artifacts'].items() if a.get('cached')) or '-'}")
    r = again[2]
    print("\nfigures of the second run:")
    for f in r["figures"]:
        where = " ".join(x for x in (f.get("format"), f"on {f['device']}" if f.get("device") else "") if x)
        print(f"  {f['figure']:<16}{where:<34}{f['value']:>14.6g} {f['unit']}")
    if args.screenshot:
        screenshot(out / "report.html", args.screenshot)


if __name__ == "__main__":
    main()
