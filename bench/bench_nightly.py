"""Nightly matrices under stress: killed and resumed, two hosts on one PostgreSQL, and the rolling
baseline against this machine's noise and a real 10% regression.

    nice python bench/bench_nightly.py kill        [--runs 50]
    nice python bench/bench_nightly.py hosts       [--models 4 --slots 5]
    nice python bench/bench_nightly.py regression  [--nights 20 --wide 336 --runs 100]

- **kill**: 3 models x 2 devices (the host and the emulated Android device), `deepcompress
  nightly` in a fresh process, SIGKILLed after the 1st and after the 3rd recorded cell, then run
  again to the end: the history must hold exactly one run per cell, each with all its figures.
- **hosts**: two `deepcompress nightly` processes (two hosts) on one throwaway PostgreSQL, a
  matrix of models x slots (every slot the host): each cell must run exactly once, on one host.
- **regression**: one model on the host for N unchanged nights (fresh measurements each night,
  judged by the default tolerances), then a night whose artifact is a wider LeNet (first hidden
  layer ``--wide`` instead of 300: more multiply-adds, measured slower): the unchanged nights
  must raise no flag, the slower one must.

The models are LeNet-300-100 pruned and shared without training (latency does not depend on it;
accuracy is not judged here), validated against PyTorch on 200 Fashion-MNIST test images.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # this file is the models' factory module
sys.path.insert(0, str(ROOT / "tests"))   # pg_server: the throwaway PostgreSQL of the tests

FIGURES_PER_CELL = 8     # .dcz and .tflite bytes and zipped bytes, the metric, p50, p90, memory


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def lenet_wide(hidden: int = 300, classes: int = 10):
    """LeNet-300-100 with a first hidden layer of ``hidden`` units (300: LeNet-300-100 itself)."""
    from torch import nn

    class LeNetWide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(784, hidden), nn.Linear(hidden, 100), nn.Linear(100, classes)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc3(nn.functional.relu(self.fc2(nn.functional.relu(self.fc1(x)))))

    return LeNetWide()


def make_dcz(path: Path, *, hidden: int = 300, seed: int = 0, sparsity: float = 0.92, bits: int = 4) -> Path:
    import torch

    import dcz as container
    from compression.prune import magnitude_mask
    from compression.share import share_layer

    torch.manual_seed(seed)
    model = lenet_wide(hidden).eval()
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        weight = model.get_parameter(name)
        keep = sparsity if name != "fc3.weight" else 0.74
        centroids, assign, mask = share_layer(weight.data, magnitude_mask(weight.data, sparsity=keep),
                                              bits, "linear", 20)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    meta = {"model": {"name": "bench_nightly:lenet_wide", "kwargs": {"hidden": hidden},
                      "input_shape": [1, 28, 28]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    container.pack(model.state_dict(), path, meta=meta,
                   compressed={n: {"bits": bits} for n in ("fc1.weight", "fc2.weight", "fc3.weight")})
    return path


def matrix_text(name: str, models: dict[str, tuple[Path, int]], devices: dict[str, str], runs: int,
                extra: str = "") -> str:
    text = f'name = "{name}"\nlease_s = 30\n{extra}\n[devices]\n'
    text += "".join(f'{slot} = "{spec}"\n' for slot, spec in devices.items())
    text += f"[bench]\nruns = {runs}\nwarmup = 10\nretries = 0\n"
    for model, (dcz, hidden) in models.items():
        text += (f'[[models]]\nname = "{model}"\n'
                 f'model = {{ dcz = "{dcz}", factory = "bench_nightly:lenet_wide", kwargs = {{ hidden = {hidden} }} }}\n'
                 'export = { formats = ["tflite"], examples = 200, dense = false }\n')
    return text


def nightly_argv(matrix: Path, out: Path, night: str, db: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "deepcompress", "nightly", str(matrix), "--out", str(out),
            "--night", night, "--quiet", "--json"]
    return argv + (["--db", db] if db else [])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)])}


# ----------------------------------------------------------------------------------------------

def part_kill(args: argparse.Namespace, tmp: Path) -> None:
    from device_harness import emulator
    from deepcompress.qualify.history import open_history

    night = "2026-06-01"
    models = {f"m{i}": (make_dcz(tmp / f"m{i}.dcz", seed=i, bits=4 + i), 300) for i in range(3)}
    with emulator.start(port=0) as emu:
        matrix = tmp / "kill.toml"
        matrix.write_text(matrix_text("kill", models, {"host": "host", "phone": emu.serial}, args.runs))
        out = tmp / "kill"
        print(f"3 models x 2 devices (host, emulated device {emu.serial}); load average {load()}")
        print(f"{'round':<10}{'kill at runs>=':>14}{'cells done':>12}{'runs':>7}{'metrics':>9}{'wall s':>9}")
        for round_, kill_at in enumerate((1, 3, None), start=1):
            start = time.perf_counter()
            proc = subprocess.Popen(nightly_argv(matrix, out, night), cwd=ROOT, env=env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None:
                time.sleep(0.1)
                if kill_at is None or not (out / "history.sqlite").exists():
                    continue
                with open_history(out) as h:
                    if h.counts()["runs"] >= kill_at:
                        os.kill(proc.pid, signal.SIGKILL)
                        break
            proc.wait()
            with open_history(out) as h:
                counts = h.counts()
                done = sum(c["state"] == "done" for c in h.cells("kill", night))
            print(f"{round_:<10}{(str(kill_at) if kill_at else '(finished)'):>14}{done:>12}"
                  f"{counts['runs']:>7}{counts['metrics']:>9}{time.perf_counter() - start:>9.1f}")
        with open_history(out) as h:
            counts, cells = h.counts(), h.cells("kill", night)
            keys = [r["cell_key"] for r in h.runs(limit=None)]
    exact = (counts["runs"] == 6 and counts["metrics"] == 6 * FIGURES_PER_CELL
             and len(set(keys)) == 6 and all(c["state"] == "done" for c in cells))
    print(f"\nexpected 6 runs, {6 * FIGURES_PER_CELL} metrics; got {counts['runs']} runs, "
          f"{counts['metrics']} metrics, {len(set(keys))} distinct cells, attempts per cell "
          f"{sorted(c['attempts'] for c in cells)}: {'EXACT' if exact else 'WRONG'}")
    print(f"load average after: {load()}")


def part_hosts(args: argparse.Namespace, tmp: Path) -> None:
    from deepcompress.qualify.history import open_history
    from pg_server import new_database, throwaway_postgres

    night = "2026-06-02"
    dcz = make_dcz(tmp / "m.dcz")
    models = {f"m{i}": (dcz, 300) for i in range(args.models)}
    slots = {f"cpu{i}": "host" for i in range(args.slots)}
    matrix = tmp / "hosts.toml"
    matrix.write_text(matrix_text("hosts", models, slots, args.runs))
    cells = args.models * args.slots
    with throwaway_postgres() as server:
        db = new_database(server, "nightly")
        print(f"{args.models} models x {args.slots} slots = {cells} cells, 2 hosts, PostgreSQL; "
              f"load average {load()}")
        start = time.perf_counter()
        procs = [subprocess.Popen(nightly_argv(matrix, tmp / f"host{i}", night, db), cwd=ROOT,
                                  env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for i in range(2)]
        outputs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - start
        ran = [json.loads(o)["ran_here"] for o in outputs]
        with open_history(db) as h:
            runs = h.runs(night=night, limit=None)
            attempts = sorted({c["attempts"] for c in h.cells("hosts", night)})
    per_host = [sorted((c["model"], c["device"]) for c in r) for r in ran]
    union = set(per_host[0]) | set(per_host[1])
    overlap = set(per_host[0]) & set(per_host[1])
    print(f"{'host':<8}{'cells run':>10}")
    for i, cells_here in enumerate(per_host):
        print(f"host{i:<4}{len(cells_here):>10}")
    once = len(union) == cells and not overlap and len(runs) == cells and attempts == [1]
    print(f"\ncells {cells}; run by either host {len(union)}; by both {len(overlap)}; runs recorded "
          f"{len(runs)}; attempts per cell {attempts}: {'EXACTLY ONCE' if once else 'WRONG'}; "
          f"wall {wall:.1f} s; load average after {load()}")


def bench_pair(a: Path, b: Path, rounds: int, runs: int) -> float:
    """Median latency ratio b/a, the two artifacts alternated on the host."""
    from device_harness import bench

    ratios = []
    for _ in range(rounds):
        pa = bench(a, "host", runs=runs, warmup=10)["latency_ms"]["p50"]
        pb = bench(b, "host", runs=runs, warmup=10)["latency_ms"]["p50"]
        ratios.append(pb / pa)
    return statistics.median(ratios)


def part_regression(args: argparse.Namespace, tmp: Path) -> None:
    from deepcompress.qualify import load_matrix, run_nightly
    from deepcompress.qualify.history import open_history

    base = make_dcz(tmp / "base.dcz")
    wide = make_dcz(tmp / "wide.dcz", hidden=args.wide)
    matrix = tmp / "regression.toml"
    out = tmp / "regression"
    print(f"LeNet-300-100 on the host, {args.runs} timed runs a night, default tolerances; "
          f"load average {load()}")
    print(f"{'night':<12}{'artifact':<10}{'p50 ms':>10}{'median':>10}{'threshold':>11}{'change':>9}  verdict")
    flags = []
    for n in range(1, args.nights + 2):
        regressed = n == args.nights + 1
        dcz, hidden = (wide, args.wide) if regressed else (base, 300)
        matrix.write_text(matrix_text("regression", {"lenet": (dcz, hidden)}, {"cpu": "host"}, args.runs))
        night = f"2026-07-{n:02d}"
        result = run_nightly(load_matrix(matrix), out, night=night)
        with open_history(out) as h:
            run = h.run(h.runs(night=night)[0]["id"])
        gate = next(g for g in run["gates"] if g["gate"] == "rolling" and g["figure"] == "latency_p50_ms")
        flagged = [g["figure"] + (f" ({g['format']})" if g["format"] else "")
                   for g in run["gates"] if g["gate"] == "rolling" and not g["ok"]]
        flags.append((regressed, flagged))
        change = f"{(gate['actual'] / gate['baseline'] - 1) * 100:+.1f}%" if gate["baseline"] else "-"
        verdict = ("FLAGGED " + ", ".join(flagged)) if flagged else (
            "no verdict yet" if gate["skipped"] else "ok")
        print(f"{night:<12}{('wide' if regressed else 'same'):<10}{gate['actual']:>10.4f}"
              f"{(gate['baseline'] or 0):>10.4f}{(gate['limit'] or 0):>11.4f}{change:>9}  {verdict}")
    # the regressed artifact against the unchanged one, alternated, outside the nightly
    folder = out / "models" / "lenet" / "artifacts"
    quiet = [f for r, f in flags if not r and f]
    loud = [f for r, f in flags if r and any(x.startswith("latency_p50_ms") for x in f)]
    print(f"\nunchanged nights flagged: {len(quiet)} of {args.nights}; the slower night flagged: "
          f"{'yes' if loud else 'NO'}; load average after {load()}")
    if args.calibrate:
        a = tmp / "a.tflite"
        b = folder / "model.tflite"
        _export(base, a)
        print(f"the wide artifact alone, alternated with the unchanged one on the host: "
              f"{(bench_pair(a, b, 7, args.runs) - 1) * 100:+.1f}% p50")


def _export(dcz: Path, path: Path) -> None:
    from deepcompress.cli import main

    with contextlib.redirect_stdout(io.StringIO()):   # the export's JSON report: not ours to print
        code = main(["export", str(dcz), "--model", "bench_nightly:lenet_wide", "--tflite", str(path),
                     "--limit", "50", "--json"])
    if code != 0:
        raise SystemExit("export failed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("kill", "hosts", "regression"))
    p.add_argument("--runs", type=int, default=None, help="timed runs per cell")
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--slots", type=int, default=5)
    p.add_argument("--nights", type=int, default=20)
    p.add_argument("--wide", type=int, default=336, help="first hidden layer of the slower artifact")
    p.add_argument("--calibrate", action="store_true",
                   help="regression: also time the slower artifact against the unchanged one directly")
    args = p.parse_args()
    args.runs = args.runs or {"kill": 50, "hosts": 20, "regression": 100}[args.part]
    with tempfile.TemporaryDirectory(prefix=f"bench-nightly-{args.part}-") as tmp:
        {"kill": part_kill, "hosts": part_hosts, "regression": part_regression}[args.part](args, Path(tmp))


if __name__ == "__main__":
    main()
