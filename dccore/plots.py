"""matplotlib for reports: the Agg backend (no display; a CI box or a shared build machine has
none) and a figure rendered to PNG bytes. matplotlib is imported on first use only, so the
commands that draw nothing never pay for it.

Every text of a figure is drawn as written: names come from users (a config called "cost$^$", a
layer, a device), and matplotlib would read a pair of "$" as mathtext, which draws something
else or fails the whole report. ``png`` makes each text literal, once, for every figure."""
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


def literal(text: str) -> str:
    """``text`` as matplotlib draws it letter for letter: each "$" escaped, so none starts
    mathtext (a "\\$" already there stays a backslash and a dollar)."""
    return str(text).replace("$", r"\$")


def _make_literal(fig: Any) -> None:
    """Every title, label, legend entry, annotation and tick label of ``fig`` literal. Numeric
    tick labels are made by their formatter when drawn (a log axis's "10^3" is mathtext on
    purpose) and are left alone; labels given as strings (``set_yticks(y, names)``: a
    FuncFormatter over them, or a FixedFormatter) are ours."""
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter, StrMethodFormatter

    for text in fig.findobj(Text):
        if text.get_parse_math():   # else literal already
            text.set_text(literal(text.get_text()))
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for formatter, setter in ((axis.get_major_formatter(), axis.set_major_formatter),
                                      (axis.get_minor_formatter(), axis.set_minor_formatter)):
                if isinstance(formatter, (FixedFormatter, FuncFormatter, StrMethodFormatter)):
                    setter(FuncFormatter(lambda x, pos=None, f=formatter: literal(f(x, pos))))


def png(fig: Any, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (its texts literal, laid out tight), and closed."""
    plt = pyplot()
    try:
        _make_literal(fig)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()
