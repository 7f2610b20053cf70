"""Measurement hygiene: robust latency statistics, bounded cool-down."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation), mean, min, max, std and spread = p90/p50.

    The spread is the stability figure: 1.0 means every run took the same time.
    """
    x = np.asarray(latencies_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("latency_stats needs at least one latency")
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(x.mean()), "min": float(x.min()),
            "max": float(x.max()), "std": float(x.std()), "spread": p90 / p50 if p50 > 0 else float("nan")}


@dataclass(frozen=True)
class Cooldown:
    status_before: int | None
    status_after: int | None
    waited_s: float

    def to_dict(self) -> dict[str, object]:
        return {"status_before": self.status_before, "status_after": self.status_after,
                "cooldown_s": round(self.waited_s, 3)}


def cool_down(read_status: Callable[[], int | None], *, max_wait_s: float = 60.0, poll_s: float = 5.0,
              sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> Cooldown:
    """Wait while the thermal status is raised (> 0), polling every ``poll_s``, at most ``max_wait_s``.

    Bounded on purpose: a phone in a hot room may never reach 0, and a result taken warm (and
    recorded as such) is worth more than no result.
    """
    before = read_status()
    status, start = before, clock()
    while status is not None and status > 0 and clock() - start < max_wait_s:
        sleep(min(poll_s, max(0.0, max_wait_s - (clock() - start))))
        status = read_status()
    return Cooldown(before, status, clock() - start if before else 0.0)
