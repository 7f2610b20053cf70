"""How training reports progress to whoever runs it (a terminal, a CI log, nothing).

Torch-free, so the application layer can implement it without importing the training code.
"""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[str, int], "ProgressTask"]


class ProgressTask:
    """A progress bar's handle: ``advance()`` per batch, ``close()`` at the end."""

    def advance(self, n: int = 1, **fields: object) -> None:  # noqa: D401 - no-op by default
        pass

    def close(self) -> None:
        pass


def no_progress(description: str, total: int) -> ProgressTask:
    return ProgressTask()
