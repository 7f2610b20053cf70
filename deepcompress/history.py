"""The history of qualification and nightly runs, read from the terminal: which database a
reader opens (``open_db``), and two runs side by side (``compare_runs``)."""
from __future__ import annotations

import os
from pathlib import Path

from dccore.errors import UsageError

ENV = "DEEPCOMPRESS_HISTORY_DB"
DEFAULT_DB = "qualify-out/history.sqlite"


def open_db(db: str | None):
    """The history named by ``db`` (``--db``), else $DEEPCOMPRESS_HISTORY_DB, else the default;
    it must exist (reading never creates one)."""
    from .qualify.history import open_history, resolve_url

    db = db or os.environ.get(ENV) or DEFAULT_DB
    url = resolve_url(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no history at {db}: run 'deepcompress qualify' or 'nightly' first, "
                         f"or name one with --db (or ${ENV})")
    return open_history(db)


def compare_runs(a: dict, b: dict) -> list[dict]:
    """One row per figure (by figure, format, device, task metric), A's value beside B's."""
    def key(m: dict) -> tuple:
        return (m["figure"], m["format"] or "", m["device"] or "", m["task_metric"] or "")

    left = {key(m): m for m in a["metrics"]}
    right = {key(m): m for m in b["metrics"]}
    rows = []
    for k in list(left) + [k for k in right if k not in left]:
        ma, mb = left.get(k), right.get(k)
        va, vb = (ma or {}).get("value"), (mb or {}).get("value")
        m = ma or mb
        change = None if va is None or vb is None else vb - va
        pct = None if change is None or not va else 100.0 * change / va
        better = None
        if change is not None and change != 0:
            better = (change > 0) == bool(m["higher_is_better"])
        rows.append({"figure": k[0], "format": k[1] or None, "device": k[2] or None,
                     "task_metric": k[3] or None, "unit": m["unit"], "a": va, "b": vb,
                     "change": change, "change_pct": pct, "better": better,
                     "same_device": (ma or {}).get("device_fingerprint") == (mb or {}).get("device_fingerprint")})
    return rows
