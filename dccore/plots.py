"""matplotlib for reports: the Agg backend (no display; a CI box or a shared build machine has
none) and a figure rendered to PNG bytes. matplotlib is imported on first use only, so the
commands that draw nothing never pay for it."""
from __future__ import annotations

import io
from typing import Any

DPI = 96


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (laid out tight), and closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
