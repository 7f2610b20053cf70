"""The history of qualifications and nightly runs, in a real database.

SQLite by default (one file; WAL and a busy timeout so that two processes can share it), or any
SQLAlchemy URL (``postgresql://...``) so that several runners share one PostgreSQL. The schema is
migrated with Alembic: an old history opens with a new deepcompress; a newer or a damaged one is
refused with what to do, never recreated.

    with open_history("runs/q/history.sqlite") as history:
        history.runs(name="lenet300")
"""
from ._store import (DEFAULT_FILE, ArtifactRow, History, HistoryError, RunRecord, display_url,
                     open_history, resolve_url)

__all__ = ["DEFAULT_FILE", "ArtifactRow", "History", "HistoryError", "RunRecord", "display_url",
           "open_history", "resolve_url"]
