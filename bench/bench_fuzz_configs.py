"""Fuzz every config reader: each input must load or raise one of our errors (DeepCompressError),
never anything else, within a time limit.

    python bench/bench_fuzz_configs.py --inputs 100000 --workers 2 --out runs/fuzz-configs

Readers: recipes (``compression.recipe.load_recipe``), qualify configs
(``deepcompress.qualify.load_qualify_config``), nightly matrices (``load_matrix``) and budgets files
(``deepcompress.size_gate.load_budgets``). Each reads a file, so each input is written to one
(in /dev/shm where the system has it) and the reader is called on its path.

Inputs are mutations of the shipped files (recipes/*.toml, examples/*.toml). Half are *structural*:
the seed is parsed, one to four values somewhere in it are replaced by an interesting value of
another type or size (huge and negative numbers, nan, inf, dates, long and odd strings, empty and
deep lists and tables), deleted, or joined by an unknown key, and the result is written back as
TOML, so the input gets past the parser into the validators. The rest are *textual*: characters
flipped, TOML tokens inserted, spans deleted or repeated, lines spliced from another seed, the
text truncated, or nesting thousands deep.

Each input runs under a per-input timer (``--timeout``, SIGALRM raising a BaseException nothing
can swallow). Anything other than a DeepCompressError is counted, and the first few of each kind
are saved with their traceback under ``OUT/crashes/READER/``; the slowest input of each reader is
kept under ``OUT/slowest/``. The summary is printed and written to ``OUT/summary.json``.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRATCH = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
READERS = ("recipe", "qualify", "matrix", "budgets")
SEEDS = {"recipe": sorted(str(p) for p in (ROOT / "recipes").glob("*.toml"))
         + [str(ROOT / "examples" / "user_model.toml")],
         "qualify": [str(ROOT / "examples" / "qualify_lenet300.toml")],
         "matrix": [str(ROOT / "examples" / "nightly_lenet.toml")],
         "budgets": [str(ROOT / "examples" / "budgets.toml")]}

INTERESTING: list[Any] = [
    0, 1, -1, 2, 7, 8, 16, 17, 255, 256, 65536, 2**31 - 1, 2**31, 2**63 - 1, -2**63, 10**18,
    0.0, -0.0, 0.5, 1e-300, 1e308, -1e308, math.inf, -math.inf, math.nan, True, False,
    "", " ", "x", "lenet300", "host", "emulator", "tflite", "coreml", "dcz", "prune", "share",
    "encode", "huffman", "127.0.0.1:5555", "adb:serial", "a" * 201, "a" * 4097, "a/../../b",
    "~nosuchuser/x", "~/x", "/", ".", "..", "x.toml", "x.dcz", "pkg.mod:fn", "os:system",
    ":", "a:", ":b", "$x", "\x1b[2J", "\u202e", "é", "\t", "\\", "'", '"', "*", "**", "[", "{",
    "nan", "1e999", "0x10", dt.date(1979, 5, 27), dt.time(7, 32), dt.datetime(1979, 5, 27, 7, 32),
    dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.timezone.utc),
    [], [0], [-1], ["x"], [""], [[]], [{}], [1, "a"], ["host", "host"], {}, {"x": 1}, {"": 1},
]
TOKENS = ["[", "]", "[[", "]]", "{", "}", "=", ",", ".", '"', "'", '"""', "'''", "#", "\n", " ",
          "\\", "\\u0000", "\\U0010FFFF", "\x00", "\x7f", "\ud800", "inf", "nan", "-0", "+1",
          "1_000", "0o7", "0b1", "1e400", "1979-05-27", "07:32:00", "true", "false", "a.b.c",
          "[x]\n", "[[stages]]\n", "kind = ", "name = ", "x = 1\n", "\r\n", "é", "\u2028"]


class Hang(BaseException):
    """Raised by the per-input timer; a BaseException so no `except Exception` can swallow it."""


# ------------------------------------------------------------------------------------ mutations

def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def dump_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, list):
        return "[" + ", ".join(dump_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {dump_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dump(data: dict) -> str:
    """TOML for any parsed data: top-level keys, every nested value inline."""
    return "".join(f"{_key(k)} = {dump_value(v)}\n" for k, v in data.items())


def _containers(node: Any, out: list) -> list:
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _containers(v, out)
    elif isinstance(node, list):
        out.append(node)
        for v in node:
            _containers(v, out)
    return out


def _interesting(rng: random.Random) -> Any:
    v = rng.choice(INTERESTING)
    r = rng.random()
    if r < 0.05:
        for _ in range(rng.choice([3, 17, 40])):   # deep nesting
            v = [v] if rng.random() < 0.5 else {"k": v}
    elif r < 0.08:
        v = "x" * rng.choice([200, 201, 4096, 4097, 100_000])
    return copy.deepcopy(v)


def mutate_structure(data: dict, rng: random.Random) -> dict:
    data = tomllib.loads(dump(data))   # a deep copy
    for _ in range(rng.randint(1, 4)):
        node = rng.choice(_containers(data, []))
        if isinstance(node, dict):
            op = rng.random()
            if not node or op < 0.15:
                node[rng.choice(["x", "name", "kind", "runs", "devices", "formats", "recipe",
                                 "dcz", "factory", "db", "bits", "sparsity"])] = _interesting(rng)
            else:
                key = rng.choice(list(node))
                if op < 0.3:
                    del node[key]
                elif op < 0.4:
                    node[key] = [node[key]]
                else:
                    node[key] = _interesting(rng)
        elif node:
            i = rng.randrange(len(node))
            op = rng.random()
            if op < 0.2:
                del node[i]
            elif op < 0.4:
                node.append(node[i])
            else:
                node[i] = _interesting(rng)
        else:
            node.append(_interesting(rng))
    return data


def mutate_text(text: str, others: list[str], rng: random.Random) -> str:
    for _ in range(rng.randint(1, 5)):
        n = len(text)
        i = rng.randrange(n + 1)
        op = rng.random()
        if op < 0.25:
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif op < 0.4 and n:
            j = min(n, i + rng.randint(1, 64))
            text = text[:i] + text[j:]
        elif op < 0.5 and n:
            j = min(n, i + rng.randint(1, 64))
            text = text[:j] + text[i:j] * rng.randint(1, 50) + text[j:]
        elif op < 0.6 and n:
            text = text[:i] + chr(rng.choice([0, 9, 10, 13, 27, 127, 0xFEFF, 0x10FFFF,
                                              rng.randrange(32, 0xD7FF)])) + text[i + 1:]
        elif op < 0.7:
            lines = rng.choice(others).splitlines(keepends=True)
            a = rng.randrange(len(lines) + 1)
            text = text[:i] + "".join(lines[a:a + rng.randint(1, 8)]) + text[i:]
        elif op < 0.75:
            text = text[:i]
        elif op < 0.8:
            depth = rng.choice([17, 100, 999, 1001, 5000, 100_000])
            open_, close = rng.choice([("[", "]"), ("{a = ", "}"), ("[{a = ", "}]")])
            text += f"\nzz = {open_ * depth}1{close * depth}\n"
        elif op < 0.85:
            text += "\n[" + ".".join(["t"] * rng.choice([17, 1000, 20_000])) + "]\nx = 1\n"
        elif n:
            j = rng.randrange(n)
            text = text[:i] + text[j:j + rng.randint(1, 200)] + text[i:]
    return text


# ------------------------------------------------------------------------------------- workers

def _reader(name: str):
    if name == "recipe":
        from compression.recipe import load_recipe
        return load_recipe
    if name == "qualify":
        from deepcompress.qualify import load_qualify_config
        return load_qualify_config
    if name == "matrix":
        from deepcompress.qualify import load_matrix
        return load_matrix
    from deepcompress.size_gate import load_budgets
    return lambda p: load_budgets(Path(p))


def _on_alarm(signum, frame):
    raise Hang()


def work(reader: str, inputs: int, seed: int, timeout: float, out: str,
         seconds: float | None = None) -> dict:
    from dccore.errors import DeepCompressError

    rng = random.Random(seed)
    read = _reader(reader)
    texts = [Path(p).read_text() for p in SEEDS[reader]]
    all_texts = [Path(p).read_text() for ps in SEEDS.values() for p in ps]
    parsed = [tomllib.loads(t) for t in texts]
    folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{reader}-", dir=SCRATCH))
    # a config's relative paths (recipes, .dcz, baselines) resolve next to it: give it the
    # examples' neighbours, so a mutant reaches past "file not found"
    for name in ("size-baseline.json", "my_models.py"):
        (folder / name).write_bytes((ROOT / "examples" / name).read_bytes())
    path = folder / ("lenet300.toml" if reader == "recipe" else f"{reader}.toml")
    for text in texts:   # imports happen here, untimed: a timer firing inside `import torch`
        path.write_text(text)   # would leave it half-imported for every later input
        try:
            read(str(path))
        except DeepCompressError:
            pass
    signal.signal(signal.SIGALRM, _on_alarm)
    counts = {"inputs": 0, "loaded": 0, "our_error": 0, "other": 0, "hang": 0,
              "structural": 0, "textual": 0}
    kinds: dict[str, int] = {}
    messages: set[str] = set()
    slowest = (0.0, "")
    start = time.perf_counter()
    for _ in range(inputs):
        if seconds is not None and time.perf_counter() - start > seconds:
            break   # the time box: as many inputs as fitted
        i = rng.randrange(len(texts))
        if rng.random() < 0.5:
            text = dump(mutate_structure(parsed[i], rng))
            counts["structural"] += 1
        else:
            text = mutate_text(texts[i], all_texts, rng)
            counts["textual"] += 1
        try:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        except (OSError, UnicodeError):
            path.write_bytes(text.encode("utf-8", "replace"))
        counts["inputs"] += 1
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            read(str(path))
            counts["loaded"] += 1
        except DeepCompressError as exc:
            counts["our_error"] += 1
            messages.add(re.sub(r"\d+", "N", str(exc).replace(str(path), "FILE"))[:80])
            if "\n" in str(exc):
                kinds["multi-line message"] = kinds.get("multi-line message", 0) + 1
        except Hang:
            counts["hang"] += 1
            _save(out, reader, "hang", text, "timeout")
        except BaseException as exc:   # noqa: BLE001 -- what the fuzzer counts
            counts["other"] += 1
            kind = f"{type(exc).__name__}: {str(exc)[:60]}"
            kinds[kind] = kinds.get(kind, 0) + 1
            if kinds[kind] <= 3:
                _save(out, reader, type(exc).__name__, text, traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - t0
        if took > slowest[0]:
            slowest = (took, text)
    elapsed = time.perf_counter() - start
    slow = Path(out) / "slowest" / f"{reader}-{seed}.toml"
    slow.parent.mkdir(parents=True, exist_ok=True)
    slow.write_text(slowest[1], encoding="utf-8", errors="surrogatepass")
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    result = {"reader": reader, **counts, "seconds": elapsed, "slowest_s": slowest[0],
              "distinct_messages": len(messages), "other_kinds": kinds}
    (Path(out) / f"part-{reader}-{seed}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _save(out: str, reader: str, kind: str, text: str, tb: str) -> None:
    folder = Path(out) / "crashes" / reader
    folder.mkdir(parents=True, exist_ok=True)
    n = len(list(folder.glob(f"{kind}-*.toml")))
    (folder / f"{kind}-{n}.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    (folder / f"{kind}-{n}.txt").write_text(tb)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs per reader")
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--workers", type=int, default=2, help="processes per reader")
    ap.add_argument("--processes", type=int, help="processes in all (default: --workers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per input")
    ap.add_argument("--seconds", type=float,
                    help="stop each reader's workers after this many seconds (a busy machine)")
    ap.add_argument("--out", default="runs/fuzz-configs")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = []
    for reader in args.readers.split(","):
        share = [args.inputs // args.workers + (w < args.inputs % args.workers)
                 for w in range(args.workers)]
        jobs += [(reader, n, args.seed * 1000 + w, args.timeout, args.out, args.seconds)
                 for w, n in enumerate(share) if n]
    with mp.get_context("fork").Pool(args.processes or args.workers, maxtasksperchild=1) as pool:
        parts = pool.starmap(work, jobs)
    summary: dict[str, dict] = {}
    for part in parts:
        s = summary.setdefault(part["reader"], {"other_kinds": {}, "slowest_s": 0.0})
        for k, v in part.items():
            if k == "other_kinds":
                for kind, n in v.items():
                    s["other_kinds"][kind] = s["other_kinds"].get(kind, 0) + n
            elif k == "slowest_s":
                s[k] = max(s[k], v)
            elif isinstance(v, (int, float)) and k != "reader":
                s[k] = s.get(k, 0) + v
    print(f"{'reader':<9} {'inputs':>9} {'loaded':>8} {'our error':>10} {'other':>6} {'hangs':>6} "
          f"{'messages':>9} {'inputs/s':>9} {'slowest':>8}")
    for reader, s in summary.items():
        print(f"{reader:<9} {s['inputs']:>9,} {s['loaded']:>8,} {s['our_error']:>10,} "
              f"{s['other']:>6,} {s['hang']:>6,} {s['distinct_messages']:>9,} "
              f"{s['inputs'] / max(s['seconds'], 1e-9) * args.workers:>9,.1f} "
              f"{s['slowest_s']:>7.2f}s")
        for kind, n in sorted(s["other_kinds"].items(), key=lambda kv: -kv[1]):
            print(f"    {n:>7,} x {kind}")
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(s["other"] == 0 and s["hang"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
