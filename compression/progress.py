"""How training reports progress to whoever runs it (a terminal, a CI log, nothing).

Torch-free, so the application layer can implement it without importing the training code.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

ProgressFn = Callable[[str, int], "ProgressTask"]


class ProgressTask:
    """A progress bar's handle: ``advance()`` per batch, ``close()`` at the end.

    Fields a front end shows when given: ``loss``, ``epoch``, ``item`` (what was just done: a
    layer's name) and ``left_s`` (an estimate of the seconds left)."""

    def advance(self, n: int = 1, **fields: object) -> None:  # noqa: D401 - no-op by default
        pass

    def close(self) -> None:
        pass


def no_progress(description: str, total: int) -> ProgressTask:
    return ProgressTask()


class Countdown:
    """Work done item by item (layers), each of a known size (its weights): says which item of
    how many is done, and estimates the time left from the time per unit of size so far, so one
    large embedding table does not make the small layers after it look slow."""

    def __init__(self, progress: ProgressFn, description: str, sizes: Mapping[str, int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sizes = dict(sizes)
        self.total = sum(self.sizes.values())
        self.done_size, self.count = 0, 0
        self.clock = clock
        self.started = clock()
        self.bar = progress(description, len(self.sizes))

    def left_s(self) -> float | None:
        """Seconds left at the rate so far; None before anything is done."""
        if self.done_size <= 0:
            return None
        rate = (self.clock() - self.started) / self.done_size
        return rate * (self.total - self.done_size)

    def done(self, item: str) -> str:
        """Mark ``item`` done; returns "k/n" and, while work is left, the estimate, for a log
        line ("3/40, about 12 s left")."""
        self.count += 1
        self.done_size += self.sizes.get(item, 0)
        left = self.left_s()
        where = f"{self.count}/{len(self.sizes)}"
        self.bar.advance(1, item=item, **({"left_s": left} if left is not None else {}))
        if left is None or self.count >= len(self.sizes):
            return where
        return f"{where}, about {format_seconds(left)} left"

    def close(self) -> None:
        self.bar.close()


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
