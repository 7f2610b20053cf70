"""Import coremltools on demand, quietly, with an error that says what to install."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Iterator

from compression.errors import ExportError


def coremltools() -> Any:
    try:
        with quiet():
            import coremltools as ct  # noqa: PLC0415 - heavy, imported only when exporting
    except ImportError as exc:
        raise ExportError(f"Core ML export needs coremltools ({exc}); install it with "
                          "'pip install coremltools>=9.0'") from exc
    return ct


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' progress bars, version warnings and 'Failed to load' lines on Linux
    (all harmless: prediction needs macOS, the rest of the converter works)."""
    loggers = [logging.getLogger(n) for n in ("coremltools", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), \
                contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
