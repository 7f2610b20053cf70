"""Import coremltools on demand, quietly, with an error that says what to install."""
from __future__ import annotations

import contextlib
import io
from typing import Any

from exporters import quiet_backend
from dccore.errors import ExportError


def coremltools() -> Any:
    try:
        with quiet():
            import coremltools as ct  # noqa: PLC0415 - heavy, imported only when exporting
    except ImportError as exc:
        raise ExportError(f"Core ML export needs coremltools ({exc}); install it with "
                          "'pip install coremltools>=9.0'") from exc
    return ct


def quiet() -> contextlib.AbstractContextManager[io.StringIO]:
    """Silence coremltools' progress bars, version warnings and 'Failed to load' lines on Linux
    (all harmless: prediction needs macOS, the rest of the converter works); yields what it
    printed and logged (an error names the op there)."""
    return quiet_backend("coremltools")
