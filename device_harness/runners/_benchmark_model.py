"""TFLite's ``benchmark_model``: build its command line and parse what it prints.

It writes no JSON, so its stdout is the interface (REFERENCE.md §5). Lines may carry a prefix
(``INFO: ``, logcat's ``I tflite  : ``), numbers may be in scientific notation (``2.95034e+06``),
and a single warm-up run prints the short form ``count=1 curr=...``. Times are in microseconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from dccore.errors import DeviceError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RE_INIT_SESSION = re.compile(rf"Initialized session in ({_NUM})\s*ms")
_RE_COUNT = re.compile(r"(?:^|\s|:)count=\d")
_RE_PAIR = re.compile(rf"(\w+)=({_NUM})")
_RE_TIMINGS = re.compile(
    rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
    rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})")
# Newer builds: "Memory footprint delta from the start of the tool (MB)"; older ones said
# "Peak memory footprint (MB)" for the same two figures.
_RE_MEM_DELTA = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=({_NUM}) overall=({_NUM})")
_RE_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_RE_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): ({_NUM})")
_RE_ERROR = re.compile(r"(?:^|\s)(?:ERROR|E tflite\s*):\s*(.+)$")

DELEGATES = {
    "default": [],  # whatever the build does by default (XNNPACK in recent builds)
    "cpu": ["--use_xnnpack=false"],
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
}


@dataclass(frozen=True)
class RunStats:
    """One ``count=... first=... curr=...`` line; microseconds. Absent fields are None."""

    count: int
    curr: float | None = None
    first: float | None = None
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    std: float | None = None
    p5: float | None = None
    median: float | None = None
    p95: float | None = None

    @classmethod
    def from_line(cls, line: str) -> "RunStats":
        known = {f.name for f in fields(cls)}
        values = {k: float(v) for k, v in _RE_PAIR.findall(line) if k in known}
        count = int(values.pop("count"))
        return cls(count=count, **values)


@dataclass(frozen=True)
class BenchmarkModelOutput:
    warmup: RunStats | None            # the first count= line
    inference: RunStats | None         # the last count= line (the timed runs)
    init_ms: float | None              # "Initialized session in X ms", else Init from the timings line
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    memory_init_mb: float | None = None      # footprint delta after init
    memory_overall_mb: float | None = None   # footprint delta overall
    peak_memory_mb: float | None = None      # periodic monitoring (--report_peak_memory_footprint)
    model_size_mb: float | None = None
    errors: tuple[str, ...] = ()


def parse_output(text: str) -> BenchmarkModelOutput:
    """Parse benchmark_model's stdout; unknown lines are ignored, missing figures are None."""
    counts: list[RunStats] = []
    found: dict[str, float] = {}
    errors: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if _RE_COUNT.search(line):
            counts.append(RunStats.from_line(line))
        elif m := _RE_TIMINGS.search(line):
            found.update(init_us=float(m[1]), first_inference_us=float(m[2]),
                         warmup_avg_us=float(m[3]), inference_avg_us=float(m[4]))
        elif m := _RE_INIT_SESSION.search(line):
            found["session_ms"] = float(m[1])
        elif m := _RE_MEM_DELTA.search(line):
            found.update(memory_init_mb=float(m[1]), memory_overall_mb=float(m[2]))
        elif m := _RE_PEAK.search(line):
            found["peak_memory_mb"] = float(m[1])
        elif m := _RE_MODEL_SIZE.search(line):
            found["model_size_mb"] = float(m[1])
        elif m := _RE_ERROR.search(line):
            errors.append(m[1].strip())
    session_ms = found.pop("session_ms", None)
    init_ms = session_ms if session_ms is not None else (
        found["init_us"] / 1000 if "init_us" in found else None)
    return BenchmarkModelOutput(
        warmup=counts[0] if len(counts) >= 2 else None,
        inference=counts[-1] if counts else None,
        init_ms=init_ms, errors=tuple(errors), **found)


def big_core_mask(max_freq_khz: tuple[int, ...] | list[int]) -> str | None:
    """``taskset`` mask (hex, no 0x) of the cores with the highest ``cpuinfo_max_freq``.

    None when frequencies are unknown or all equal: pinning would then change nothing.
    """
    if not max_freq_khz or len(set(max_freq_khz)) == 1:
        return None
    top = max(max_freq_khz)
    return format(sum(1 << i for i, f in enumerate(max_freq_khz) if f == top), "x")


@dataclass(frozen=True)
class BenchmarkModelCommand:
    binary: str
    graph: str
    threads: int = 1
    warmup_runs: int = 1
    num_runs: int = 50
    delegate: str = "default"
    taskset_mask: str | None = None

    def __post_init__(self) -> None:
        if self.delegate not in DELEGATES:
            raise ValueError(f"delegate {self.delegate!r}: expected one of {sorted(DELEGATES)}")
        if self.num_runs < 1 or self.warmup_runs < 0 or self.threads < 1:
            raise ValueError("benchmark_model needs num_runs >= 1, warmup_runs >= 0, threads >= 1")

    def argv(self) -> list[str]:
        """An argument list: the device backend quotes every element for the remote shell."""
        prefix = ["taskset", self.taskset_mask] if self.taskset_mask else []
        return [*prefix, self.binary, f"--graph={self.graph}", f"--num_threads={self.threads}",
                f"--warmup_runs={self.warmup_runs}", f"--num_runs={self.num_runs}",
                # min_secs=0: exactly num_runs timed runs, so "runs" means what the user asked.
                "--min_secs=0", "--report_peak_memory_footprint=true", *DELEGATES[self.delegate]]


def check_output(parsed: BenchmarkModelOutput, output: str, argv: list[str]) -> BenchmarkModelOutput:
    """Raise DeviceError, with benchmark_model's own error line, when no timed runs were printed."""
    if parsed.inference is None or parsed.inference_avg_us is None:
        reason = parsed.errors[0] if parsed.errors else (output.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"benchmark_model printed no inference timings: {reason}",
                          command=argv, output=output)
    return parsed
