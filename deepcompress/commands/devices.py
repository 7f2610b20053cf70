"""``deepcompress devices`` and ``deepcompress bench``.

Results go to stdout (a table, or one JSON object per result with --json, failures included);
diagnostics -- progress lines as each result arrives -- go to stderr. A failure's reason is
printed once, with the results.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..ui import print_json


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "devices":
        parser.add_argument("--json", action="store_true", help="print JSON on stdout")
        parser.add_argument("--adb", action="append", default=[], metavar="HOST:PORT",
                            help="also query this ADB device over TCP (repeatable)")
        parser.add_argument("--no-probe", action="store_true",
                            help="don't probe 127.0.0.1:5555-5585 for emulators")
    elif command == "bench":
        _bench_arguments(parser)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT",
                   help=".tflite file(s) or .mlpackage folder(s)")
    p.add_argument("--device", action="append", dest="devices", metavar="SPEC",
                   help="host (default), emulator, simctl:UDID|booted, HOST:PORT or a USB serial; "
                        "repeatable")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50, benchmark_model's)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--benchmark-model", type=Path, metavar="PATH",
                   help="Android benchmark_model binary: pushed once, cached by content hash, run on "
                        "the big cores (ADB devices)")
    from device_harness.runners import COMPUTE_UNITS, DELEGATES

    p.add_argument("--delegate", default="default", choices=list(DELEGATES),
                   help="benchmark_model delegate (default: the build's own)")
    p.add_argument("--eval", type=int, default=0, metavar="N", dest="eval_n",
                   help="also measure accuracy on the first N test examples, on the device")
    p.add_argument("--data", metavar="DIR", help="IDX dataset folder for --eval (default Fashion-MNIST)")
    p.add_argument("--out", type=Path, metavar="FILE.jsonl",
                   help="append each result to FILE as one JSON line, as it arrives")
    p.add_argument("--json", action="store_true", help="print one JSON object per result on stdout")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="timeout of each device call, model runs included (default 300)")
    p.add_argument("--cooldown-max", type=float, default=60.0, metavar="S",
                   help="longest wait for a hot device to cool down before a model (default 60)")
    p.add_argument("--retries", type=int, default=2,
                   help="reconnections after a dropped connection (default 2, with backoff)")
    p.add_argument("--bench-host-app", type=Path, metavar="BenchHost.app",
                   help="the built iOS benchmark app for .mlpackage on simctl "
                        "(or DEEPCOMPRESS_BENCHHOST_APP)")
    p.add_argument("--compute-units", default="all", choices=list(COMPUTE_UNITS),
                   help="Core ML compute units on simctl (default all)")


def main(args: argparse.Namespace) -> int:
    if args.command == "devices":
        return _devices(args)
    return _bench(args)


def _devices(args: argparse.Namespace) -> int:
    from device_harness import discover

    listings = discover(args.adb, probe=not args.no_probe)
    if args.json:
        print_json([entry.to_dict() for entry in listings])
        return 0
    from ..ui import print_table, stdout_console

    rows = []
    for e in listings:
        i = e.info
        freqs = sorted(set(i.max_freq_khz), reverse=True) if i else []
        rows.append((e.spec, i.model if i else "", i.os_version if i else "", i.abi if i else "",
                     str(i.cores) if i else "", " / ".join(str(f // 1000) for f in freqs) or "-",
                     e.note))
    print_table("devices", ("SPEC", "MODEL", "OS", "ABI", "CORES", "MAX FREQ (MHz)", "NOTE"), rows,
                overflow="ellipsis", title_justify="center",
                console=stdout_console(width=100_000))   # no fold, no cut
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dccore.errors import UsageError
    from dccore.outputs import append_jsonl
    from device_harness import check_spec
    from device_harness.runners import BenchOptions, bench_many

    from ..cli import named_by_flags
    from ..examples import eval_data
    from ..ui import printable

    specs = args.devices or ["host"]
    for spec in specs:  # a SPEC of no known form is a usage error, before any device is touched
        check_spec(spec)
    if args.eval_n < 0:
        raise UsageError("--eval N needs a positive number of examples")
    with named_by_flags({"timeout_s": "--timeout", "cooldown_max_s": "--cooldown-max"}):
        opts = BenchOptions(runs=args.runs, warmup=args.warmup, threads=args.threads,
                            timeout_s=args.timeout, benchmark_model=args.benchmark_model,
                            delegate=args.delegate, cooldown_max_s=args.cooldown_max,
                            bench_host_app=args.bench_host_app, compute_units=args.compute_units,
                            retries=args.retries)
    if args.eval_n:
        opts = replace(opts, eval_data=eval_data(args.eval_n, data=args.data))

    def on_result(result: dict) -> None:
        if args.out:
            append_jsonl(args.out, result)
        if args.json:
            print(json.dumps(result), flush=True)
        else:  # progress, on stderr; the reason of a failure comes once, with the results
            state = "ok" if result["ok"] else "failed (reason below the results)"
            print(printable(f"{_where(result)}: {state}"), file=sys.stderr, flush=True)

    # bench_many reconnects (--retries times, with backoff) and counts the attempts it makes
    results = bench_many(args.artifacts, specs, opts, on_result=on_result)
    if not args.json:
        _print_table(results)
    return 0 if all(r["ok"] for r in results) else 1


def _where(result: dict) -> str:
    device = result["device"].get("serial") or result["device"].get("spec", "?")
    return f"{Path(result['artifact']).name} on {device}"


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _print_table(results: list[dict]) -> None:
    from ..ui import print_table, printable, stdout_console

    rows = []
    for r in results:
        if not r["ok"]:
            continue
        device = r["device"].get("serial") or r["device"].get("spec", "?")
        lat, acc = r["latency_ms"], r.get("accuracy")
        push = f"{r['push']['bytes'] / 1024:.0f} KiB / {r['push']['seconds'] * 1000:.0f} ms"
        rows.append((Path(r["artifact"]).name, device, r["runner"], str(r["runs"]),
                     _fmt(lat["p50"]), _fmt(lat["p90"]), _fmt(lat["p99"]), _fmt(lat["mean"]),
                     _fmt(r["init_ms"]), _fmt(r["peak_memory_mb"], 3), push,
                     f"{acc['accuracy']:.4f}" if acc else "-"))
    console = stdout_console(width=100_000)
    if rows:
        print_table("bench (latency in ms)", ("ARTIFACT", "DEVICE", "RUNNER", "RUNS", "P50", "P90",
                                              "P99", "MEAN", "INIT", "PEAK MB", "PUSH", "ACCURACY"),
                    rows, title_justify="center", console=console)
    for r in (r for r in results if not r["ok"]):  # each once, whole: the text is the device's, never rich markup
        console.print(printable(f"FAILED {_where(r)}: {r['error']}"), markup=False, highlight=False,
                      soft_wrap=True, style="red")
