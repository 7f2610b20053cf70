"""The history database: opening it (and migrating it), recording runs, reading them back, and
the nightly cells that several hosts claim.

Opening never destroys anything: a file that is not SQLite, a database that fails its integrity
check, one with tables that are not a history, or one written by a newer deepcompress (a schema
revision this code does not know) is refused with :class:`HistoryError`, saying what to do, and
left as it was. An older history is migrated in place (Alembic, in one transaction, under a lock
so that two processes opening it at once migrate it once).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dccore.errors import DeepCompressError

from .._gates import Figure, Gate
from . import _schema as s

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_FILE = "history.sqlite"
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 60.0   # a second nightly process waits this long for the write lock
# PostgreSQL: a server that accepts and never answers fails in seconds, not after the kernel's
# TCP retries (131 s); no statement of the history takes a minute, so one that does is hung.
# A URL's own connect_timeout=S or options=-c statement_timeout=MS wins.
CONNECT_TIMEOUT_S = 10.0
STATEMENT_TIMEOUT_S = 60.0
MAX_ID = 2 ** 63 - 1   # the largest integer SQLite and PostgreSQL's BIGINT hold
_LOCK_KEY = 0x6463_7168   # "dcqh": the advisory lock PostgreSQL migrations hold
_WRITE = "deepcompress_write"   # execution option: this transaction writes


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A transaction that writes: committed at the end of the block, rolled back on error."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


class HistoryError(DeepCompressError):
    """The history database cannot be used as it is; nothing in it was changed."""

    exit_code = 2


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ----------------------------------------------------------------------------------------------
# What a run records

@dataclass
class ArtifactRow:
    format: str
    path: str
    sha256: str
    bytes: int
    zipped_bytes: int


@dataclass
class RunRecord:
    kind: str                               # "qualify" | "nightly"
    name: str
    model: str
    started_at: dt.datetime
    ok: bool
    verdict: str
    git_revision: str
    recipe_sha256: str
    finished_at: dt.datetime | None = None
    config_sha256: str | None = None
    host: str | None = None
    out_dir: str | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)
    artifact_sha256: str | None = None      # a nightly cell: the artifact it benched
    device_fingerprint: str | None = None   # a nightly cell: its device
    night: str | None = None
    device_slot: str | None = None
    cell_key: str | None = None
    error: str | None = None
    devices: list[Mapping[str, Any]] = field(default_factory=list)   # DeviceInfo dicts
    artifacts: list[ArtifactRow] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Opening

def resolve_url(db: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL for ``db``: a URL as given (``postgresql://`` gets the psycopg driver),
    else a path to an SQLite file (a folder: its ``history.sqlite``). The path is made absolute
    but not resolved: a symbolic link stays one, for the opener to refuse."""
    text = str(db)
    if "://" in text:
        if text.startswith("postgresql://") or text.startswith("postgres://"):
            text = "postgresql+psycopg://" + text.split("://", 1)[1]
        return text
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            path = path / DEFAULT_FILE
    except OSError as exc:   # a name too long for the file system, a loop of links
        raise HistoryError(f"--db {_short_name(text)}: {exc.strerror or exc}; name a history "
                           "file or folder") from None
    return f"sqlite:///{os.path.abspath(path)}"


def _short_name(text: str, keep: int = 80) -> str:
    """A name as a message can quote it: a 5,000-character one would bury the message."""
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text):,} characters)"


def display_url(url: str) -> str:
    """The URL without its password, for messages and reports."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: say it as given, minus anything like a password
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sqlite_path(url: sa.engine.URL) -> Path | None:
    db = url.database
    return Path(db) if db and db != ":memory:" else None


def _check_sqlite_file(path: Path) -> None:
    """A file that exists must be SQLite (or empty): anything else is refused, never replaced.
    A symbolic link is refused too, dangling or not (checked on the link itself, before anything
    follows it), so a history is never created or changed somewhere the name does not say."""
    try:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise HistoryError(f"history DB {path} is not a regular file (a symbolic link, a "
                               "folder or a device); name the file itself with --db")
        if not path.exists():
            if not path.parent.is_dir():
                raise HistoryError(f"history DB {path}: folder {path.parent} does not exist; "
                                   "create it first, or name another --db")
            return
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise HistoryError(f"history DB {_short_name(str(path))}: {exc.strerror or exc}; name "
                           "another --db") from None
    if head and head != SQLITE_MAGIC:
        raise _corrupt(path, "it does not start with the SQLite header")
    if head:
        _check_sqlite_readonly(path)


def _check_sqlite_readonly(path: Path) -> None:
    """Judge an existing SQLite file through a read-only connection before anything may change
    it (the write engine switches a database to WAL for good on its first connection): damaged,
    not a history, or a newer one is refused here with its bytes as they were."""
    import sqlite3
    from urllib.parse import quote

    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise _corrupt(path, str(exc)) from None
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise _corrupt(path, f"integrity check: {result}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        current = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            current = row[0] if row else None
    except sqlite3.DatabaseError as exc:
        raise _corrupt(path, str(exc).strip() or type(exc).__name__) from None
    finally:
        conn.close()
    _judge_schema(str(path), tables, current)


def _judge_schema(where: str, tables: set[str], current: str | None) -> None:
    """Refuse a database that holds tables but no history revision (another program's), or a
    revision this code does not know (a newer deepcompress's)."""
    from alembic.script import ScriptDirectory

    if current is None and tables - {"alembic_version"}:
        raise HistoryError(f"{where} holds tables ({', '.join(sorted(tables)[:4])}) but is not "
                           "a deepcompress history (it has no schema revision); name another "
                           "--db; nothing was changed")
    script = ScriptDirectory(str(MIGRATIONS))
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise HistoryError(f"{where} has history schema revision {current}, newer than this "
                           f"deepcompress knows (up to {script.get_current_head()}): a newer "
                           "deepcompress wrote it. Upgrade deepcompress (pip install -U "
                           "deepcompress) to read it, or name another --db; nothing was changed")


def _corrupt(path: Path | str, why: str) -> HistoryError:
    return HistoryError(
        f"history DB {path} is not a usable SQLite database ({why}); it was not changed. Restore "
        f"it from a backup, or move it aside (mv {path} {path}.corrupt) to start a new history "
        "there, or name another --db")


def _sqlite_engine(url: sa.engine.URL) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S,
                                                 "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy issues BEGIN itself (below), so pysqlite must not open transactions
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # WAL: readers never block the writer, and a killed writer leaves the file consistent
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writing transaction takes the write lock when it starts (IMMEDIATE), so two processes
        # never both read a cell as free and then both claim it (SQLite has no row locks);
        # reading ones do not, so readers never wait for writers (WAL).
        immediate = conn.get_execution_options().get(_WRITE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _alembic_config(conn: Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def _migrate(engine: Engine, where: str) -> str:
    """Bring the schema to this code's head revision; return it."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        cfg = _alembic_config(conn)
        script = ScriptDirectory.from_config(cfg)
        head = script.get_current_head()
        current = MigrationContext.configure(conn).get_current_revision()
        _judge_schema(where, set(sa.inspect(conn).get_table_names()), current)
        if current != head:
            command.upgrade(cfg, "head")
    return head


def _server(url: sa.engine.URL) -> str:
    """A PostgreSQL server as people name it, host:port/database (never the password)."""
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    return _short_name(f"{host}:{url.port or 5432}/{url.database or ''}")


def _postgres_engine(url: sa.engine.URL) -> Engine:
    """An engine whose connections give up after ``CONNECT_TIMEOUT_S`` (a server that accepts
    and never answers) and whose statements after ``STATEMENT_TIMEOUT_S``, unless the URL sets
    its own ``connect_timeout`` or ``options=-c statement_timeout=...``. A failure of either
    is a :class:`HistoryError` naming the server."""
    args: dict[str, Any] = {}
    query = {k: (v if isinstance(v, str) else " ".join(v)) for k, v in url.query.items()}
    connect_s = float(query.get("connect_timeout", CONNECT_TIMEOUT_S))
    if "connect_timeout" not in query:
        args["connect_timeout"] = int(CONNECT_TIMEOUT_S)
    options = query.get("options", "")
    if "statement_timeout" not in options:
        args["options"] = f"{options} -c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)}".strip()
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=args)
    server = _server(url)

    @event.listens_for(engine, "handle_error")
    def _name_the_server(context: Any) -> None:
        exc = context.original_exception
        if not isinstance(exc, engine.dialect.loaded_dbapi.OperationalError):
            return
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "statement timeout" in first:
            raise HistoryError(f"history DB {server}: a statement took over "
                               f"{STATEMENT_TIMEOUT_S:g} s and was cancelled ({first}); set "
                               "options=-c statement_timeout=MS in the URL for more") from None
        raise HistoryError(f"history DB {server} cannot be reached (connect timeout "
                           f"{connect_s:g} s; connect_timeout=S in the URL sets it): "
                           f"{first}") from None

    return engine


def open_history(db: str | os.PathLike[str]) -> "History":
    """Open (creating or migrating) the history at ``db``: a path, a folder, or a SQLAlchemy URL."""
    try:
        url = sa.engine.make_url(resolve_url(db))
    except sa.exc.ArgumentError as exc:
        raise HistoryError(f"--db {_short_name(str(db))}: not a database URL or path "
                           f"({_short_name(str(exc), 200)})") from None
    where = display_url(str(url))
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise HistoryError(f"history DB {_short_name(where)}: the history lives in SQLite (a "
                           "file) or PostgreSQL (postgresql://...); not in "
                           f"{url.get_backend_name()}")
    if url.get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            _check_sqlite_file(path)   # judged read-only: nothing changes before it is ours
            where = str(path)
        engine = _sqlite_engine(url)
        try:
            head = _migrate(engine, where)
        except sa.exc.DatabaseError as exc:
            engine.dispose()
            reason = str(exc.orig).strip() or type(exc.orig).__name__
            if "readonly" in reason or "unable to open" in reason:   # not damage: permissions
                raise HistoryError(f"history DB {where} cannot be written ({reason}); check the "
                                   "permissions of the file and its folder, or name another "
                                   "--db") from None
            raise _corrupt(where, reason) from None
        except HistoryError:
            engine.dispose()
            raise
    else:
        try:
            engine = _postgres_engine(url)
            head = _migrate(engine, where)
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise HistoryError(f"history DB {where}: no driver for it ({exc}); PostgreSQL URLs "
                               "need psycopg (pip install 'psycopg[binary]')") from None
        except sa.exc.OperationalError as exc:
            raise HistoryError(f"history DB {_server(url)} cannot be reached: "
                               f"{str(exc.orig).strip().splitlines()[0]}") from None
    return History(engine, where, head)


# ----------------------------------------------------------------------------------------------

class History:
    """One history database. Safe to share between threads (each call takes a connection)."""

    def __init__(self, engine: Engine, where: str, revision: str,
                 conn: Connection | None = None) -> None:
        self.engine, self.where, self.revision = engine, where, revision
        self._conn = conn   # set: every read goes through this (open) transaction

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def recording(self, run: RunRecord) -> Iterator[tuple[int, "History"]]:
        """Record ``run`` in a transaction that commits when the block ends and rolls back if
        it fails: what the block does with the run (writing its report) happens before anyone
        reads the run as recorded, or the run is not recorded. Yields the run's id and a view of
        the history that reads through that transaction (so it sees the run)."""
        with writing(self.engine) as conn:
            yield self.record(run, conn=conn), History(self.engine, self.where, self.revision, conn)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------

    def record(self, run: RunRecord, *, conn: Connection | None = None) -> int:
        """Write a run with its devices, artifacts, figures and gates in one transaction. A run
        with a ``cell_key`` replaces an earlier run of the same cell (a retried cell), so a cell
        has one run however often it ran."""
        if conn is None:
            with writing(self.engine) as c:
                return self.record(run, conn=c)
        if run.cell_key is not None:
            conn.execute(sa.delete(s.runs).where(s.runs.c.cell_key == run.cell_key))
        run_id = conn.execute(sa.insert(s.runs).values(
            kind=run.kind, name=run.name, model=run.model, started_at=run.started_at,
            finished_at=run.finished_at or now(), ok=run.ok, verdict=run.verdict,
            config_sha256=run.config_sha256, host=run.host, out_dir=run.out_dir,
            summary=json.dumps(run.summary, default=str), git_revision=run.git_revision,
            recipe_sha256=run.recipe_sha256, artifact_sha256=run.artifact_sha256,
            device_fingerprint=run.device_fingerprint, night=run.night,
            device_slot=run.device_slot, cell_key=run.cell_key, error=run.error,
        )).inserted_primary_key[0]
        device_ids = {info["fingerprint"]: self._device_id(conn, info, run.git_revision)
                      for info in run.devices}
        prov = {"git_revision": run.git_revision, "recipe_sha256": run.recipe_sha256}
        if run.artifacts:
            conn.execute(sa.insert(s.artifacts), [
                {"run_id": run_id, "format": a.format, "path": a.path, "bytes": a.bytes,
                 "zipped_bytes": a.zipped_bytes, "artifact_sha256": a.sha256,
                 "device_fingerprint": None, **prov} for a in run.artifacts])
        if run.figures:
            conn.execute(sa.insert(s.metrics), [
                {"run_id": run_id, "figure": f.figure, "value": float(f.value), "unit": f.unit,
                 "higher_is_better": f.better_high, "task_metric": f.task_metric,
                 "format": f.format, "device": f.device,
                 "device_id": device_ids.get(f.fingerprint), "artifact_sha256": f.artifact_sha256,
                 "device_fingerprint": f.fingerprint, **prov} for f in run.figures])
        if run.gates:
            conn.execute(sa.insert(s.gates), [
                {"run_id": run_id, "gate": g.gate, "figure": g.figure, "subject": g.subject,
                 "format": g.format, "device": g.device, "actual": g.actual, "limit": g.limit,
                 "baseline": g.baseline, "ok": g.ok, "skipped": g.skipped or None,
                 "message": g.message or None, "artifact_sha256": g.artifact_sha256,
                 "device_fingerprint": g.fingerprint, **prov} for g in run.gates])
        return int(run_id)

    def _device_id(self, conn: Connection, info: Mapping[str, Any], git_revision: str) -> int:
        values = {"fingerprint": info["fingerprint"], "kind": info.get("kind", "?"),
                  "serial": info.get("serial"), "model": info.get("model"),
                  "os_version": info.get("os_version"), "abi": info.get("abi"),
                  "cores": info.get("cores"), "info": json.dumps(info, default=str),
                  "git_revision": git_revision, "first_seen": now()}
        insert = _dialect_insert(conn)(s.devices).values(**values)
        conn.execute(insert.on_conflict_do_nothing(index_elements=["fingerprint"]))
        return conn.execute(sa.select(s.devices.c.id).where(
            s.devices.c.fingerprint == info["fingerprint"])).scalar_one()

    # -- reading ---------------------------------------------------------------------------------

    def runs(self, *, name: str | None = None, kind: str | None = None, model: str | None = None,
             night: str | None = None, limit: int | None = 20) -> list[dict[str, Any]]:
        """Runs, newest first; ``limit`` None or 0: all of them."""
        if limit is not None and not 0 <= limit <= MAX_ID:
            raise HistoryError(f"limit {limit}: expected a number of runs, 0 (all) or more")
        q = sa.select(s.runs).order_by(s.runs.c.id.desc())
        for column, value in (("name", name), ("kind", kind), ("model", model), ("night", night)):
            if value is not None:
                q = q.where(s.runs.c[column] == value)
        if limit:
            q = q.limit(limit)
        with self._reading() as conn:
            return [_run_dict(row) for row in conn.execute(q).mappings()]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run with its artifacts, figures (``metrics``), gates and devices."""
        with self._reading() as conn:
            row = conn.execute(sa.select(s.runs).where(s.runs.c.id == run_id)).mappings().first()
            if row is None:
                return None
            out = _run_dict(row)
            for table, key in ((s.artifacts, "artifacts"), (s.metrics, "metrics"), (s.gates, "gates")):
                out[key] = [dict(r) for r in conn.execute(
                    sa.select(table).where(table.c.run_id == run_id).order_by(table.c.id)).mappings()]
            ids = {m["device_id"] for m in out["metrics"] if m["device_id"] is not None}
            out["devices"] = [dict(r) for r in conn.execute(
                sa.select(s.devices).where(s.devices.c.id.in_(ids))).mappings()] if ids else []
        return out

    def resolve_run(self, ref: str) -> int:
        """A run id from ``ref``: a number, ``latest`` or ``latest-passing``."""
        if ref.isascii() and ref.isdecimal():   # not "²": Unicode digits int() refuses
            if not 0 < int(ref) <= MAX_ID:
                raise HistoryError(f"run {_short_name(ref, 30)}: no run has that id (ids run "
                                   "from 1); see 'deepcompress history'")
            return int(ref)
        q = sa.select(s.runs.c.id).order_by(s.runs.c.id.desc()).limit(1)
        if ref == "latest-passing":
            q = q.where(s.runs.c.ok.is_(True))
        elif ref != "latest":
            raise HistoryError(f"run {_short_name(ref, 30)!r}: give a run id (see 'deepcompress "
                               "history'), latest or latest-passing")
        with self._reading() as conn:
            found = conn.execute(q).scalar()
        if found is None:
            raise HistoryError(f"run {ref!r}: the history {self.where} has no such run")
        return int(found)

    def last_passing(self, kind: str, name: str) -> tuple[int, dict[tuple, float]] | None:
        """The last passing run of this qualification (or cell): its id and its figures by
        ``Figure.compare_key``."""
        q = (sa.select(s.runs.c.id).where(s.runs.c.kind == kind, s.runs.c.name == name,
                                          s.runs.c.ok.is_(True))
             .order_by(s.runs.c.id.desc()).limit(1))
        with self._reading() as conn:
            run_id = conn.execute(q).scalar()
            if run_id is None:
                return None
            rows = conn.execute(sa.select(s.metrics).where(s.metrics.c.run_id == run_id)).mappings()
            figures = {(r["figure"], r["format"], r["device"], r["task_metric"],
                        r["device_fingerprint"] if r["device"] else None): r["value"] for r in rows}
        return int(run_id), figures

    def rolling_values(self, *, matrix: str, model: str, slot: str, night: str, figure: Figure,
                       window: int) -> list[float]:
        """The figure's values on the last ``window`` passing nights before ``night``, newest
        first (one per night: a cell has one run)."""
        m, r = s.metrics, s.runs
        q = (sa.select(m.c.value).join(r, r.c.id == m.c.run_id)
             .where(r.c.kind == "nightly", r.c.name == matrix, r.c.model == model,
                    r.c.device_slot == slot, r.c.night < night, r.c.ok.is_(True),
                    m.c.figure == figure.figure)
             .order_by(r.c.night.desc()).limit(window))
        for column, value in (("format", figure.format), ("task_metric", figure.task_metric)):
            q = q.where(m.c[column].is_(None) if value is None else m.c[column] == value)
        if figure.fingerprint is not None:
            q = q.where(m.c.device_fingerprint == figure.fingerprint)
        with self._reading() as conn:
            return [float(v) for v in conn.execute(q).scalars()]

    def series(self, *, kind: str, name: str, model: str | None = None,
               limit: int = 60) -> list[dict[str, Any]]:
        """Figures and gates of the last ``limit`` runs, oldest first, for trend plots."""
        runs = list(reversed(self.runs(kind=kind, name=name, model=model, limit=limit)))
        if not runs:
            return []
        ids = [run["id"] for run in runs]
        with self._reading() as conn:
            figures = conn.execute(sa.select(s.metrics).where(s.metrics.c.run_id.in_(ids))).mappings().all()
            gates = conn.execute(sa.select(s.gates).where(s.gates.c.run_id.in_(ids))).mappings().all()
        by_run: dict[int, dict[str, list]] = {i: {"metrics": [], "gates": []} for i in ids}
        for row in figures:
            by_run[row["run_id"]]["metrics"].append(dict(row))
        for row in gates:
            by_run[row["run_id"]]["gates"].append(dict(row))
        return [{**run, **by_run[run["id"]]} for run in runs]

    def counts(self) -> dict[str, int]:
        with self._reading() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                    for t in (s.runs, s.devices, s.artifacts, s.metrics, s.gates, s.cells)}

    # -- nightly cells ------------------------------------------------------------------------------

    def ensure_cells(self, matrix: str, night: str, models: Iterable[str], slots: Iterable[str]) -> None:
        """Create the night's cells that do not exist yet (every host may call it)."""
        rows = [{"matrix": matrix, "night": night, "model": m, "device": d, "state": "pending",
                 "attempts": 0, "updated_at": time.time()} for m in models for d in slots]
        with writing(self.engine) as conn:
            insert = _dialect_insert(conn)(s.cells)
            conn.execute(insert.on_conflict_do_nothing(
                index_elements=["matrix", "night", "model", "device"]), rows)

    def claim(self, matrix: str, night: str, slot: str, owner: str, lease_s: float, *,
              retry_failed: bool = False, alive=None) -> str | None:
        """Claim one cell of ``slot`` (its model name), or None when none is free.

        A cell is free when pending, when its lease has expired (its host died), when its owner
        is a process of this host that is gone (``alive(owner)`` is False), or, with
        ``retry_failed``, when it failed (and not in this owner's hands: once per run). PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``, so
        hosts claiming at once each get a different cell. SQLite: the transaction holds the
        database's write lock from its first statement (BEGIN IMMEDIATE)."""
        c = s.cells
        states = ["pending", "running"] + (["failed"] if retry_failed else [])
        with writing(self.engine) as conn:
            q = (sa.select(c).where(c.c.matrix == matrix, c.c.night == night, c.c.device == slot,
                                    c.c.state.in_(states))
                 .order_by(c.c.model).limit(50))
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            stamp = time.time()
            for row in conn.execute(q).mappings().all():
                if row["state"] == "running" and (row["lease_expires"] or 0) > stamp and \
                        (alive is None or alive(row["owner"])):
                    continue
                if row["state"] == "failed" and row["owner"] == owner:
                    continue   # retried by this very process already: once per run is enough
                conn.execute(sa.update(c).where(*_cell(matrix, night, row["model"], slot)).values(
                    state="running", owner=owner, lease_expires=stamp + lease_s,
                    attempts=row["attempts"] + 1, updated_at=stamp))
                return row["model"]
        return None

    def renew(self, matrix: str, night: str, model: str, slot: str, owner: str,
              lease_s: float) -> bool:
        """Extend this owner's lease; False when the cell is no longer its own."""
        c = s.cells
        with writing(self.engine) as conn:
            done = conn.execute(sa.update(c).where(
                *_cell(matrix, night, model, slot), c.c.owner == owner,
                c.c.state == "running").values(
                lease_expires=time.time() + lease_s, updated_at=time.time()))
            return done.rowcount == 1

    def finish(self, matrix: str, night: str, model: str, slot: str, owner: str,
               run: RunRecord) -> int | None:
        """Record a cell's run and close the cell, in one transaction, only if the cell is
        still this owner's; None when another host has it now (its result is the one kept)."""
        c = s.cells
        with writing(self.engine) as conn:
            q = sa.select(c).where(*_cell(matrix, night, model, slot))
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            row = conn.execute(q).mappings().first()
            if row is None or row["owner"] != owner or row["state"] != "running":
                return None
            run_id = self.record(run, conn=conn)
            conn.execute(sa.update(c).where(*_cell(matrix, night, model, slot)).values(
                state="done" if run.ok or run.error is None else "failed", run_id=run_id,
                error=run.error, lease_expires=None, updated_at=time.time()))
            return run_id

    def release(self, matrix: str, night: str, model: str, slot: str, owner: str) -> None:
        """Give a claimed cell back (interrupted before it finished)."""
        c = s.cells
        with writing(self.engine) as conn:
            conn.execute(sa.update(c).where(
                *_cell(matrix, night, model, slot), c.c.owner == owner,
                c.c.state == "running").values(
                state="pending", owner=None, lease_expires=None, updated_at=time.time()))

    def cells(self, matrix: str, night: str) -> list[dict[str, Any]]:
        c = s.cells
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(c).where(c.c.matrix == matrix, c.c.night == night)
                .order_by(c.c.model, c.c.device)).mappings()]


def _cell(matrix: str, night: str, model: str, device: str) -> list:
    """The conditions that pick one cell (its primary key)."""
    c = s.cells
    return [c.c.matrix == matrix, c.c.night == night, c.c.model == model, c.c.device == device]


def _dialect_insert(conn: Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise HistoryError(f"history DB dialect {conn.dialect.name!r}: use SQLite or PostgreSQL")
    return insert


def _run_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    try:
        out["summary"] = json.loads(out.get("summary") or "{}")
    except ValueError:
        out["summary"] = {}
    for key in ("started_at", "finished_at"):
        value = out.get(key)
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:   # SQLite keeps no zone; everything is written in UTC
                value = value.replace(tzinfo=dt.timezone.utc)
            out[key] = value.isoformat(timespec="seconds")
    return out
