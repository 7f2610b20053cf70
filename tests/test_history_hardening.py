"""The history opener and its commands on hostile or ordinary-but-odd input (issue 19, items 10, 11
and 13): another program's SQLite file is judged read-only and left byte for byte as it was; a
symbolic link is refused, dangling or not; a PostgreSQL server that accepts and never answers
fails in seconds naming the server; run ids, limits and --db names that are not what they should
be are one-line usage errors (exit 2), never internal errors."""
from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from deepcompress.cli import main
from deepcompress.qualify.history import HistoryError, open_history
from deepcompress.qualify.history import _store

from test_history import record


def foreign_db(path: Path) -> bytes:
    """Another program's SQLite database, in the default (rollback journal) mode."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.commit()
    conn.close()
    return path.read_bytes()


def test_another_programs_database_is_refused_and_its_bytes_stay_the_same(tmp_path, capsys):
    path = tmp_path / "invoices.sqlite"
    before = foreign_db(path)
    with pytest.raises(HistoryError, match="not a deepcompress history"):
        open_history(path)
    assert path.read_bytes() == before   # still in rollback-journal mode: not switched to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["invoices.sqlite"]
    assert main(["history", "--db", str(path)]) == 2
    assert "not a deepcompress history" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_a_newer_history_in_rollback_mode_is_refused_unchanged(tmp_path):
    path = tmp_path / "h.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    conn.execute("INSERT INTO alembic_version VALUES ('0099')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="0099, newer"):
        open_history(path)
    assert path.read_bytes() == before


def test_a_symbolic_link_to_a_history_is_refused(tmp_path):
    real = tmp_path / "real.sqlite"
    open_history(real).close()
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)
    with pytest.raises(HistoryError, match="not a regular file"):
        open_history(link)


def test_a_dangling_symbolic_link_creates_nothing_elsewhere(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "h.sqlite"
    link.symlink_to(elsewhere / "planted.sqlite")
    with pytest.raises(HistoryError, match="not a regular file"):
        open_history(link)
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "history.sqlite").symlink_to(elsewhere / "planted2.sqlite")
    with pytest.raises(HistoryError, match="not a regular file"):
        open_history(folder)           # a folder means its history.sqlite: the link in it
    assert list(elsewhere.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# item 11: ordinary input, one line, exit 2

@pytest.fixture
def history_db(tmp_path) -> Path:
    path = tmp_path / "h.sqlite"
    with open_history(path) as h:
        h.record(record("q"))
        h.record(record("q"))
    return path


@pytest.mark.parametrize("argv", [
    ["history", "--run", "99999999999999999999999"],
    ["history", "--run", "9223372036854775808"],
    ["history", "--run", "0"],
    ["history", "--run", "²"],
    ["compare", "1", "³"],
    ["compare", "١", "1"],                              # an Arabic-Indic one
    ["history", "--limit", "1e23"],
    ["history", "--limit", "100000000000000000000000"],
    ["history", "--limit", "-1"],
])
def test_odd_run_ids_and_limits_are_usage_errors(history_db, capsys, argv):
    assert main([*argv, "--db", str(history_db)]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and err.count("\n") == 1, err


def test_a_5000_character_db_is_a_usage_error_that_does_not_quote_all_of_it(tmp_path, capsys):
    for db in ("a" * 5000, str(tmp_path / ("b" * 5000)), "postgresql://u:secret@127.0.0.1:1/" + "c" * 5000):
        for argv in (["history"], ["compare", "1", "2"]):
            assert main([*argv, "--db", db]) == 2
            err = capsys.readouterr().err
            assert "internal error" not in err and err.count("\n") == 1, err[:300]
            assert len(err) < 600 and "secret" not in err


def test_limit_zero_still_means_every_run(history_db, capsys):
    assert main(["history", "--limit", "0", "--json", "--db", str(history_db)]) == 0
    assert capsys.readouterr().out.count('"id"') == 2


# ----------------------------------------------------------------------------------------------
# item 10: a PostgreSQL server that accepts and never answers

@contextlib.contextmanager
def silent_server():
    """A TCP server on 127.0.0.1 that accepts every connection and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        for conn in held:
            conn.close()


def test_a_server_that_never_answers_fails_in_seconds_naming_it(monkeypatch, capsys):
    pytest.importorskip("psycopg")
    monkeypatch.setattr(_store, "CONNECT_TIMEOUT_S", 2.0)   # the default, 10 s, made quick
    with silent_server() as port:
        t0 = time.monotonic()
        with pytest.raises(HistoryError) as caught:
            open_history(f"postgresql://ci:hunter2@127.0.0.1:{port}/history")
        waited = time.monotonic() - t0
        message = str(caught.value)
        assert f"127.0.0.1:{port}/history" in message and "timeout" in message
        assert "hunter2" not in message and "\n" not in message
        assert waited < 30   # psycopg waits at least 2 s; without a timeout it was 131 s
        url = f"postgresql://ci:hunter2@127.0.0.1:{port}/history?connect_timeout=2"
        assert main(["history", "--db", url]) == 2      # the URL's own timeout is used
        err = capsys.readouterr().err
        assert f"127.0.0.1:{port}/history" in err and "hunter2" not in err


def test_the_timeouts_reach_the_driver_unless_the_url_sets_them():
    import sqlalchemy as sa

    pytest.importorskip("psycopg")
    default = _store._postgres_engine(sa.engine.make_url("postgresql+psycopg://u@h/d"))
    own = _store._postgres_engine(sa.engine.make_url(
        "postgresql+psycopg://u@h/d?connect_timeout=3&options=-c%20statement_timeout%3D5000"))
    try:
        cparams = _connect_params(default)
        assert cparams["connect_timeout"] == 10
        assert "statement_timeout=60000" in cparams["options"]
        cparams = _connect_params(own)
        assert cparams["connect_timeout"] == "3" and cparams["options"] == "-c statement_timeout=5000"
    finally:
        default.dispose()
        own.dispose()


def _connect_params(engine) -> dict:
    """What the engine hands psycopg.connect: the URL's parameters with connect_args over them."""
    seen: dict = {}

    def fake_connect(*_args, **kwargs):
        seen.update(kwargs)
        raise engine.dialect.loaded_dbapi.OperationalError("no server here")

    engine.dialect.loaded_dbapi.connect, real = fake_connect, engine.dialect.loaded_dbapi.connect
    try:
        with pytest.raises(HistoryError):
            engine.connect()
    finally:
        engine.dialect.loaded_dbapi.connect = real
    return seen


def test_a_hung_statement_on_postgresql_is_cancelled_naming_the_server(monkeypatch, tmp_path):
    """A statement that waits (here on a lock another session holds) ends after the statement
    timeout with a one-line error, instead of waiting for ever; a negative limit is refused
    before PostgreSQL sees it (LIMIT -1 is an error there, "all" in SQLite)."""
    import sqlalchemy as sa

    from pg_server import find_bin, new_database, throwaway_postgres

    if find_bin() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    monkeypatch.setattr(_store, "STATEMENT_TIMEOUT_S", 1.0)
    with throwaway_postgres() as server:
        db = new_database(server, "hung")
        with open_history(db) as h:
            h.record(record("q"))
            with pytest.raises(HistoryError, match="limit -1"):
                h.runs(limit=-1)
            locker = sa.create_engine(db.replace("postgresql://", "postgresql+psycopg://", 1))
            try:
                with locker.connect() as conn, conn.begin():
                    conn.exec_driver_sql("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
                    t0 = time.monotonic()
                    with pytest.raises(HistoryError) as caught:
                        h.runs()
                    assert time.monotonic() - t0 < 20
            finally:
                locker.dispose()
            message = str(caught.value)
            assert "statement" in message and "/hung" in message and "\n" not in message
            assert len(h.runs()) == 1   # the lock is gone: the history works on
