"""Fuzz `dcz.load`: every input must load or raise ContainerError, within a time limit.

    python bench/bench_fuzz_dcz.py --inputs 1000000 --workers 2 --out runs/fuzz-dcz

Inputs are mutations of valid seed files (every coder, codebook / raw / plain storage, gap
widths 1..16, several dtypes, empty and one-value layers, multi-lane Huffman; and format
version 2's grouped codebooks, coded byte planes and float16 codebooks). Most mutate one
section's payload (bit flips, interesting integers written over fields, inserts, deletes,
splices from other seeds, truncation; metadata is mutated as JSON text and deflated again) and
then *re-seal* the file, recomputing lengths, CRCs and the end marker, so the input gets past the
CRC checks into the decoders; the rest are raw byte mutations of a whole file. A fuzzer that only
hits CRC errors proves nothing, so the report counts inputs that reached tensor decoding.

Guidance: each worker traces line transitions inside dcz/ (sys.settrace, dcz frames only) and
keeps an input in its corpus when it covers a transition no earlier input did, or ends in an
error message not seen before.

Each input runs under a per-input timer (``--timeout``; a SIGALRM raises a BaseException the
decoder cannot swallow); a worker that stops reporting for ``--hard-timeout`` seconds is killed
(stuck in C) and restarted. Anything other than ContainerError is saved with its traceback under
``OUT/crashes/``, hangs under ``OUT/hangs/``; the input that raised a worker's peak memory last is
kept under ``OUT/peak/``. The summary is printed as a table and written to ``OUT/summary.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAGIC_HEADER = 16
# Each input is written to a file (load takes a path): in memory where the system has it.
SCRATCH = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 20, 21, 31, 32, 33, 40, 63, 64, 127, 128, 255,
               256, 1023, 1024, 1025, 4095, 4096, 65535, 65536, 2**20, 2**24, 2**26, 2**27,
               2**28, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**48, 2**48 + 1, 2**63 - 1,
               2**63, 2**64 - 1]


class Hang(BaseException):
    """Raised by the per-input timer; a BaseException so no `except Exception` can swallow it."""


# ------------------------------------------------------------------------------------- seeds

def make_seeds(folder: Path) -> list[bytes]:
    import torch
    from dcz import pack

    g = torch.Generator().manual_seed(0)

    def layer(shape, density, k, skew=0.0, dtype=torch.float32):
        n = 1
        for d in shape:
            n *= d
        codebook = torch.linspace(-1, 1, k + 1)[torch.arange(k + 1) != k // 2]
        probs = torch.exp(-skew * torch.arange(k, dtype=torch.float64))
        idx = torch.multinomial(probs, n, replacement=True, generator=g).reshape(shape)
        keep = torch.rand(shape, generator=g) < density
        return torch.where(keep, codebook[idx], torch.zeros(())).to(dtype)

    meta = {"model": {"name": "lenet300", "kwargs": {"hidden": [30, 10]}, "input_shape": [1, 784]},
            "recipe": {"prune": [{"sparsity": 0.9, "scope": {"fc1": {"bits": 5}}}]},
            "accuracy": 0.98, "data": None}
    specs = []
    for coder in ("none", "huffman", "ans"):
        specs += [
            (coder, {"w": layer((40, 30), 0.3, 6, skew=0.7), "b": torch.arange(6.0),
                     "n": torch.tensor(7)}, {"w": {"bits": 3}}, V1),
            (coder, {"w": layer((60, 50), 0.1, 16, skew=0.5)}, {"w": {"index_bits": 2}}, V1),
            (coder, {"w": layer((30, 20), 0.5, 400)}, {"w": {"bits": 16, "index_bits": 12}},
             {**V1, "plain_dtype": "float16"}),
            (coder, {"raw": torch.randn(50, 7, generator=g) * (torch.rand(50, 7, generator=g)
                                                               < 0.4)},
             {"raw": {"index_bits": 16}}, V1),
        ]
    specs += [
        ("huffman", {"big": layer((120, 100), 0.4, 8, skew=1.0)}, {"big": {"index_bits": 3}},
         V1),                                                         # several Huffman lanes
        ("ans", {"h": layer((20, 20), 0.3, 4, dtype=torch.float16),
                 "bf": layer((10, 12), 0.6, 3, dtype=torch.bfloat16),
                 "d": layer((9, 9), 0.2, 5, dtype=torch.float64)},
         {"h": {"index_bits": 1}, "bf": {}, "d": {"bits": 4}}, V1),
        ("huffman", {"one": torch.full((64,), 0.5), "zero": torch.zeros(8, 8),
                     "empty": torch.zeros(0, 3), "flag": torch.tensor([True, False]),
                     "i8": torch.arange(-4, 4, dtype=torch.int8)},
         {"one": {"bits": 0}, "zero": {}, "empty": {}}, V1),  # constant streams, nnz 0
        ("none", {"w": layer((8, 8), 0.5, 4)}, {"w": {"bits": 2, "index_bits": 1}},
         {**V1, "plain_dtype": "float16"}),
    ]
    specs += version2_specs(layer, g)
    seeds = []
    for i, (coder, sd, compressed, options) in enumerate(specs):
        path = folder / f"seed{i}.dcz"
        pack(sd, path, compressed=compressed, coder=coder, meta=meta, **options)
        seeds.append(path.read_bytes())
    return seeds


V1 = {"code_values": False}   # the seeds of format version 1 (grouped storage is asked for)


def version2_specs(layer, g) -> list[tuple]:
    """Seeds with format version 2's storage: grouped codebooks (some groups empty, one bit,
    coded codebooks), float16 codebooks and raw values, coded byte planes of every dtype."""
    import torch

    def grouped(rows, cols, group_size, k, density, dtype=torch.float32, skew=0.0):
        return torch.cat([layer((min(group_size, rows - r), cols), density, k, skew, dtype)
                          * (1 + r) for r in range(0, rows, group_size)])

    randn = torch.randn(40, 12, generator=g)
    specs = []
    for coder in ("none", "huffman", "ans"):
        specs += [
            (coder, {"w": grouped(30, 16, 8, 6, 0.5), "b": torch.randn(300, generator=g)},
             {"w": {"bits": 3, "group_size": 8}}, {}),
            (coder, {"w": grouped(24, 10, 4, 3, 0.3), "r": randn * (randn.abs() > 0.5),
                     "c": layer((20, 20), 0.5, 8)},
             {"w": {"group_size": 4, "codebook_dtype": "float16"}, "r": {}, "c": {}},
             {"codebook_dtype": "float16"}),
            (coder, {"w": grouped(96, 64, 32, 8, 0.3, skew=1.0),
                     "d": grouped(40, 30, 10, 4, 1.0)},        # entropy-coded and constant gaps
             {"w": {"group_size": 32}, "d": {"bits": 2, "group_size": 10}}, {}),
        ]
    specs += [
        ("huffman", {"w": grouped(200, 16, 1, 16, 0.9)}, {"w": {"group_size": 1}}, {}),
        ("ans", {"w": grouped(16, 8, 4, 1, 0.5), "z": torch.zeros(6, 4),
                 "e": torch.zeros(0, 4), "s": torch.tensor(0.75)},
         {"w": {"bits": 0, "group_size": 4}, "z": {"group_size": 2}, "e": {"group_size": 3},
          "s": {"group_size": 1, "codebook_dtype": "float16"}}, {}),
        ("ans", {"w": grouped(12, 6, 4, 4, 0.4, torch.bfloat16),
                 "d": grouped(9, 5, 3, 4, 0.6, torch.float64),
                 "pos": torch.arange(512).unsqueeze(0), "h": torch.randn(500, generator=g).half()},
         {"w": {"group_size": 4}, "d": {"group_size": 3, "codebook_dtype": "float16"}}, {}),
        ("huffman", {"b": torch.randn(2000, generator=g), "big": randn.repeat(400, 1)},
         {}, {"plain_dtype": "float16"}),
        ("ans", {"raw": torch.randn(200, 30, generator=g) * (torch.rand(200, 30, generator=g)
                                                             < 0.5)},
         {"raw": {}}, {}),
    ]
    return specs


def split(data: bytes) -> list[tuple[bytes, bytes]]:
    """A file's sections up to the end marker, as [(tag, payload)]; as many as can be read from
    a damaged file (a known tag and a length inside the file), none if the first cannot."""
    out, pos = [], MAGIC_HEADER
    while pos + 12 <= len(data):
        tag, length = struct.unpack("<4sQ", data[pos:pos + 12])
        if tag not in (b"META", b"TENS") or pos + 12 + length > len(data):
            break
        out.append((tag, data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return out


def version_of(data: bytes) -> int:
    """The format version a (possibly damaged) file's header claims; 2 if it cannot be read."""
    return struct.unpack("<I", data[8:12])[0] if len(data) >= 12 else 2


def seal(sections: list[tuple[bytes, bytes]], end_count: int | None = None,
         version: int = 2) -> bytes:
    """A file with correct header, lengths, CRCs and end marker around the given sections."""
    from dcz import _format

    parts = [_format.file_header(version)] + [_format.section(t, p) for t, p in sections]
    size = sum(map(len, parts))
    count = sum(t == b"TENS" for t, _ in sections) if end_count is None else end_count
    return b"".join(parts) + _format.section(b"END ", struct.pack("<IQ", count, size))


def integer_fields(payload: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every integer the decoder reads from a valid tensor payload: decoding
    it once with a Reader that records its reads of 1, 2, 4 and 8 bytes."""
    from dcz import _format, _tensor

    fields, take = [], _format.Reader.take

    def recording_take(self, n, what):
        if n in (1, 2, 4, 8):
            fields.append((self.pos, n))
        return take(self, n, what)

    _format.Reader.take = recording_take
    try:
        _tensor.decode(memoryview(payload), "seed", [2**40])
    finally:
        _format.Reader.take = take
    return fields


# ------------------------------------------------------------------------------------- mutation

class Mutator:
    def __init__(self, rng: random.Random, seeds: list[bytes]) -> None:
        self.rng = rng
        self.seeds = seeds
        self.parsed = [split(s) for s in seeds]
        self.payloads = [p for secs in self.parsed for t, p in secs if t == b"TENS"]
        self.metas = [zlib.decompress(p) for secs in self.parsed for t, p in secs if t == b"META"]
        self.fields = {p: integer_fields(p) for p in self.payloads}

    def number(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            v = self.rng.choice(INTERESTING)
            return max(0, v + self.rng.choice((0, 0, 0, -1, 1)))
        if r < 0.9:
            return self.rng.randrange(256)
        return self.rng.getrandbits(64)

    def field_op(self, buf: bytearray, fields: list[tuple[int, int]]) -> None:
        """Write an interesting value over one integer field (count, width, length, dim...)."""
        pos, width = self.rng.choice(fields)
        value = self.number()
        if self.rng.random() < 0.3:  # near the value it had: off-by-one claims
            old = int.from_bytes(buf[pos:pos + width], "little")
            value = old + self.rng.choice((-1, 1, 2, -2)) + self.rng.choice((0, 0, old))
        buf[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")

    def bytes_op(self, buf: bytearray) -> None:
        rng = self.rng
        if not buf:
            buf += rng.randbytes(rng.randint(1, 8))
            return
        op = rng.randrange(10)
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op in (2, 3, 4):  # an integer over a field, little-endian
            width = rng.choice((1, 2, 4, 8))
            value = self.number() % (1 << (8 * width))
            buf[pos:pos + width] = value.to_bytes(width, "little")
        elif op == 5:
            width = rng.choice((1, 2, 4, 8))
            old = int.from_bytes(buf[pos:pos + width].ljust(width, b"\0"), "little")
            new = (old + rng.choice((-2, -1, 1, 2, 8, -8))) % (1 << (8 * width))
            buf[pos:pos + width] = new.to_bytes(width, "little")
        elif op == 6:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 7:
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 8:  # splice from another payload, often at the same offset
            other = rng.choice(self.payloads)
            at = pos if rng.random() < 0.5 and pos < len(other) else rng.randrange(len(other))
            chunk = other[at:at + rng.randint(1, 32)]
            buf[pos:pos + len(chunk)] = chunk
        else:
            del buf[rng.randrange(len(buf) + 1):]

    def meta_op(self) -> bytes:
        rng = self.rng
        text = bytearray(rng.choice(self.metas))
        pos = rng.randrange(len(text) + 1)
        op = rng.randrange(6)
        if op == 0:
            depth = rng.choice((31, 32, 33, 100, 5000, 200_000))
            text[pos:pos] = b"[" * depth + b"]" * depth
        elif op == 1:
            text[pos:pos] = b"1" * rng.choice((10, 4300, 4301, 100_000))
        elif op == 2:
            text[pos:pos] = rng.choice((b'"\\', b"\\u00", b"\xff\xfe", b"NaN", b"1e999", b"{}",
                                        b'"a":', b",", b"]", b"\x00"))
        elif op == 3:
            text = bytearray(rng.choice((b"[]", b"null", b'""', b"{" * 40, b"{}" * 3, b"")))
        else:
            for _ in range(rng.randint(1, 4)):
                self.bytes_op(text)
        return zlib.compress(bytes(text), rng.choice((0, 1, 9)))

    def input(self, corpus: list[bytes]) -> bytes:
        """One fuzz input: usually a mutated, re-sealed file; sometimes raw byte damage."""
        rng = self.rng
        base = rng.choice(corpus if rng.random() < 0.5 else self.seeds)
        sections = split(base) if rng.random() < 0.97 else []
        if not sections or rng.random() < 0.08:  # raw damage: CRCs and framing get exercised
            buf = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                self.bytes_op(buf)
            return bytes(buf)
        sections = list(sections)
        r = rng.random()
        if r < 0.1:
            i = rng.randrange(len(sections))
            sections[i] = (b"META", self.meta_op()) if sections[i][0] == b"META" else \
                (sections[i][0], zlib.compress(rng.choice(self.metas)))
        elif r < 0.18:  # section-level edits
            op = rng.randrange(4)
            i = rng.randrange(len(sections))
            if op == 0 and len(sections) > 1:
                del sections[i]
            elif op == 1:
                sections.insert(i, sections[rng.randrange(len(sections))])
            elif op == 2:
                sections.insert(i + 1, (b"TENS", rng.choice(self.payloads)))
            else:
                j = rng.randrange(len(sections))
                sections[i], sections[j] = sections[j], sections[i]
        else:
            tensors = [i for i, (t, _) in enumerate(sections) if t == b"TENS"]
            for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
                i = rng.choice(tensors) if tensors else 0
                buf = bytearray(sections[i][1])
                fields = self.fields.get(sections[i][1])
                if fields and rng.random() < 0.6:
                    self.field_op(buf, fields)
                else:
                    self.bytes_op(buf)
                sections[i] = (sections[i][0], bytes(buf))
        end_count = None if rng.random() < 0.97 else rng.choice((0, 1, 2**32 - 1))
        # Now and then another version: version 2's storage in a version 1 file, or a newer one.
        version = version_of(base) if rng.random() < 0.97 else rng.choice((0, 1, 2, 3))
        return seal(sections, end_count, version)


# ------------------------------------------------------------------------------------- coverage

class Coverage:
    """Line transitions inside dcz/: a cheap stand-in for libFuzzer's edge coverage."""

    FRAME_LINES = 400  # a loop's transitions show in its first iterations: then stop tracing

    def __init__(self, root: str) -> None:
        self.root = root
        self.seen: set = set()
        self.new = False

    def global_trace(self, frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(self.root):
            return None
        filename, prev, budget = frame.f_code.co_filename, None, self.FRAME_LINES

        def local_trace(frame, event, arg):
            nonlocal prev, budget
            if event == "line":
                edge = (filename, prev, frame.f_lineno)
                if edge not in self.seen:
                    self.seen.add(edge)
                    self.new = True
                prev = frame.f_lineno
                budget -= 1
                if budget == 0:
                    frame.f_trace_lines = False
            return local_trace

        return local_trace


def _signature(exc: BaseException) -> str:
    """An exception's kind: its type and the innermost frame inside the project."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/.venv/" not in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


def _message_kind(exc: BaseException) -> str:
    text = str(exc).split("): ", 1)[-1]
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r"[0-9][0-9,]*", "N", text)[:120]


# ------------------------------------------------------------------------------------- workers

def worker(wid: int, n_inputs: int, seed: int, seeds: list[bytes], out: str, timeout: float,
           use_coverage: bool, heartbeat, queue) -> None:
    import dcz
    from dccore.errors import ContainerError
    from dcz import _streams, _tensor

    rng = random.Random(seed)
    mutator = Mutator(rng, seeds)
    corpus = list(seeds)
    reached = {"tensor": 0, "streams": 0}
    real_decode, real_parse = _tensor.decode, _streams.parse

    def counting_decode(*a, **k):
        reached["tensor"] += 1
        return real_decode(*a, **k)

    def counting_parse(*a, **k):
        reached["streams"] += 1
        return real_parse(*a, **k)

    _tensor.decode, _streams.parse = counting_decode, counting_parse

    def on_alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    cov = Coverage(str(Path(dcz.__file__).parent))
    path = SCRATCH / f"fuzz-dcz-{os.getpid()}.dcz"
    stats = {"inputs": 0, "container_errors": 0, "loaded": 0, "other": 0, "hangs": 0,
             "reached_tensor_decoding": 0, "inputs_reaching_streams": 0, "slow_inputs": 0,
             "corpus": len(corpus), "message_kinds": 0, "edges": 0}
    others: dict[str, str] = {}
    kinds: set[str] = set()
    peak_rss = 0
    last_report = time.monotonic()
    for i in range(n_inputs):
        data = mutator.input(corpus)
        path.write_bytes(data)
        heartbeat.value = time.monotonic()
        before = dict(reached)
        cov.new = False
        keep = False
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if use_coverage:
                sys.settrace(cov.global_trace)
            try:
                dcz.load(path)
            finally:
                sys.settrace(None)
                signal.setitimer(signal.ITIMER_REAL, 0)
            stats["loaded"] += 1
        except ContainerError as exc:
            stats["container_errors"] += 1
            kind = _message_kind(exc)
            if kind not in kinds:
                kinds.add(kind)
                keep = True
        except Hang:
            stats["hangs"] += 1
            _save(Path(out) / "hangs", data, f"no result within {timeout} s")
        except BaseException as exc:  # noqa: BLE001 - the point is to see everything else
            if isinstance(exc, KeyboardInterrupt):
                raise
            stats["other"] += 1
            sig = _signature(exc)
            if sig not in others:
                others[sig] = _save(Path(out) / "crashes", data, "".join(
                    traceback.format_exception(exc)))
        elapsed = time.perf_counter() - t0
        if elapsed > 0.5:
            stats["slow_inputs"] += 1
        stats["inputs"] += 1
        stats["reached_tensor_decoding"] += reached["tensor"] > before["tensor"]
        stats["inputs_reaching_streams"] += reached["streams"] > before["streams"]
        if (cov.new or keep) and len(corpus) < 5000:
            corpus.append(data)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if rss > peak_rss:
            if peak_rss:
                _save(Path(out) / "peak", data, f"worker {wid} peak RSS {rss // 1024} MiB after "
                      f"this input ({elapsed:.3f} s)", name=f"worker{wid}")
            peak_rss = rss
        if time.monotonic() - last_report > 5 or i == n_inputs - 1:
            stats.update(corpus=len(corpus), message_kinds=len(kinds), edges=len(cov.seen),
                         peak_rss_mib=peak_rss // 1024)
            queue.put((wid, dict(stats), dict(others)))
            last_report = time.monotonic()
    path.unlink(missing_ok=True)


def _save(folder: Path, data: bytes, note: str, name: str | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    name = name or hashlib.sha256(data).hexdigest()[:16]
    (folder / f"{name}.dcz").write_bytes(data)
    (folder / f"{name}.txt").write_text(note)
    return str(folder / f"{name}.dcz")


# ------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0, help="per input, seconds")
    ap.add_argument("--hard-timeout", type=float, default=60.0,
                    help="a worker silent this long is stuck in C: killed and restarted")
    ap.add_argument("--no-coverage", action="store_true", help="no line tracing (faster)")
    ap.add_argument("--out", default="runs/fuzz-dcz")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = make_seeds(Path(tmp))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    share = [args.inputs // args.workers + (w < args.inputs % args.workers)
             for w in range(args.workers)]
    latest: dict[int, dict] = {}
    done_before: dict[int, dict] = {}     # totals of killed (stuck) incarnations
    others: dict[str, str] = {}
    hard_hangs = worker_deaths = 0
    procs, beats = {}, {}

    def start(wid: int, n: int, generation: int) -> None:
        beats[wid] = ctx.Value("d", time.monotonic(), lock=False)
        procs[wid] = ctx.Process(target=worker, args=(
            wid, n, args.seed * 1000 + wid + 100 * generation, seeds, str(out), args.timeout,
            not args.no_coverage, beats[wid], queue), daemon=True)
        procs[wid].start()

    t0 = time.monotonic()
    generation = 0
    for wid, n in enumerate(share):
        start(wid, n, generation)
    last_print = t0
    while any(p.is_alive() for p in procs.values()) or not queue.empty():
        try:
            wid, stats, found = queue.get(timeout=1)
            latest[wid] = stats
            others.update(found)
        except Exception:  # queue.Empty
            pass
        for wid, p in list(procs.items()):
            stuck = p.is_alive() and time.monotonic() - beats[wid].value > args.hard_timeout
            died = not p.is_alive() and p.exitcode not in (0, None)
            if not (stuck or died):
                continue
            if stuck:
                p.kill()
            p.join()
            current = SCRATCH / f"fuzz-dcz-{p.pid}.dcz"
            if stuck:
                hard_hangs += 1
                note, folder = f"worker stuck > {args.hard_timeout} s", "hangs"
            else:
                worker_deaths += 1
                note, folder = f"worker died with exit code {p.exitcode}", "crashes"
            if current.exists():
                others[f"{note} (input {current.name})"] = _save(out / folder,
                                                                 current.read_bytes(), note)
                current.unlink()
            acc = done_before.setdefault(wid, {})
            for k, v in latest.pop(wid, {}).items():
                if k not in ("corpus", "message_kinds", "edges", "peak_rss_mib"):
                    acc[k] = acc.get(k, 0) + v
            acc["inputs"] = acc.get("inputs", 0) + 1   # the one it was stuck on or died of
            generation += 1
            if share[wid] - acc["inputs"] > 0:
                start(wid, share[wid] - acc["inputs"], generation)
        if time.monotonic() - last_print > 30:
            total = _total(latest, done_before)
            print(f"[{time.monotonic() - t0:7.0f} s] {json.dumps(total)}", flush=True)
            last_print = time.monotonic()
    wall = time.monotonic() - t0
    total = _total(latest, done_before)
    total["hangs"] = total.get("hangs", 0) + hard_hangs
    total["other"] = total.get("other", 0) + worker_deaths
    total["distinct_other_exceptions"] = others
    total["wall_s"] = round(wall, 1)
    total["inputs_per_s"] = round(total["inputs"] / wall, 1)
    total["command"] = " ".join(sys.argv)
    total["load_average_at_end"] = os.getloadavg()
    (out / "summary.json").write_text(json.dumps(total, indent=2))
    rows = [("inputs", total["inputs"]), ("loaded (valid)", total["loaded"]),
            ("ContainerError", total["container_errors"]),
            ("other exceptions", total["other"]), ("distinct other", len(others)),
            ("hangs", total["hangs"]), ("slow (> 0.5 s)", total["slow_inputs"]),
            ("reached tensor decoding (past CRCs)", total["reached_tensor_decoding"]),
            ("reached stream parsing", total["inputs_reaching_streams"]),
            ("distinct error messages (max of workers)", total["message_kinds"]),
            ("dcz line transitions covered (max of workers)", total["edges"]),
            ("peak RSS, MiB (max of workers)", total["peak_rss_mib"]),
            ("inputs/s", total["inputs_per_s"]), ("wall, s", total["wall_s"])]
    print("\n| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |")
    for sig, where in others.items():
        print(f"OTHER: {sig}: reproducer {where}")


def _total(latest: dict, before: dict) -> dict:
    total: dict = {}
    for source in (latest, before):
        for stats in source.values():
            for k, v in stats.items():
                if k in ("corpus", "message_kinds", "edges", "peak_rss_mib"):
                    total[k] = max(total.get(k, 0), v)
                else:
                    total[k] = total.get(k, 0) + v
    for k in ("inputs", "loaded", "container_errors", "other", "hangs", "slow_inputs",
              "reached_tensor_decoding", "inputs_reaching_streams", "message_kinds", "edges",
              "peak_rss_mib"):
        total.setdefault(k, 0)
    return total


if __name__ == "__main__":
    main()
