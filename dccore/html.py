"""Self-contained HTML pages (qualify's, nightly's, sensitivity's report): every text escaped,
figures embedded as base64 PNGs, no script and no link out, so a page opens from a CI artifact
store or an e-mail as it is. The generator tag names us, so that a later run recognises its own
page before it replaces it."""
from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Sequence

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.verdict{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.pass{background:#e3f4e6;color:#1d5e2b}.fail{background:#fbe4e4;color:#8a1c1c}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fdf0f0}tr.skip td{color:#888}
figure{margin:14px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:12px}.meta{color:#666;font-size:12px}
"""


def e(value: Any) -> str:
    """``value`` as HTML text (and attribute value)."""
    return html.escape(str(value), quote=True)


def img(png: bytes | None, caption: str) -> str:
    """A figure with its caption; nothing for no picture."""
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Iterable[tuple[Sequence[Any], str]],
          numeric: Sequence[int] = ()) -> str:
    """A table: ``rows`` are (cells, row class: "", "bad" or "skip"); the ``numeric`` columns
    are right-aligned."""
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    for cells, cls in rows:
        out.append(f'<tr class="{cls}">' + "".join(
            f'<td{" class=n" if i in numeric else ""}>{e(c)}</td>' for i, c in enumerate(cells))
            + "</tr>")
    return "".join(out) + "</table>"


def page(title: str, body: Iterable[str], *, generator: str) -> bytes:
    """The whole page: ``body`` is HTML already (escaped by the helpers above)."""
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="deepcompress {e(generator)}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>")
    return (head + "".join(body) + "</body></html>\n").encode("utf-8")
