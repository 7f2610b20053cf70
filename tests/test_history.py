"""The history database on SQLite: created at the head schema, an old one migrated, a newer or a
damaged one refused and left as it was, figures read back, two processes sharing one file, and
the history and compare commands."""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from deepcompress.cli import main
from deepcompress.qualify._gates import Figure, Gate
from deepcompress.qualify.history import HistoryError, RunRecord, open_history
from deepcompress.qualify.history import _schema
from deepcompress.qualify.history._store import MIGRATIONS

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
HOST = {"kind": "host", "serial": "host", "model": "CPU", "os_version": "Linux", "abi": "x86_64",
        "cores": 2, "max_freq_khz": [], "fingerprint": "f" * 16}


def record(name: str = "q", ok: bool = True, p50: float = 1.0, size: int = 1000, **kw) -> RunRecord:
    dev = dict(format="tflite", device="host", fingerprint=HOST["fingerprint"], artifact_sha256="a" * 64)
    figures = [Figure("size_bytes", size, format="tflite", artifact_sha256="a" * 64),
               Figure("metric", 0.9, task_metric="accuracy", higher_is_better=True),
               Figure("latency_p50_ms", p50, **dev)]
    gates = [Gate("max_latency_p50_ms", "latency_p50_ms", "tflite on host", ok, actual=p50, limit=2.0,
                  format="tflite", device="host", fingerprint=HOST["fingerprint"])]
    return RunRecord(kind=kw.pop("kind", "qualify"), name=name, model=kw.pop("model", name),
                     started_at=T0, ok=ok, verdict="v", git_revision="abc123",
                     recipe_sha256="r" * 64, devices=[HOST], figures=figures, gates=gates, **kw)


def alembic_upgrade(url: str, revision: str) -> None:
    """What an older deepcompress did to a new history: the migrations up to ``revision``."""
    from alembic import command
    from alembic.config import Config

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_a_new_history_has_the_head_schema(tmp_path):
    with open_history(tmp_path / "h.sqlite") as h:
        assert h.revision == "0002"
        inspector = sa.inspect(h.engine)
        for table in _schema.metadata.sorted_tables:   # the code's tables are the migrations' head
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
        with h.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_folder_means_its_history_file(tmp_path):
    with open_history(tmp_path) as h:
        assert h.where == str(tmp_path / "history.sqlite")


def test_a_v1_history_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    alembic_upgrade(f"sqlite:///{path}", "0001")
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:   # a run as version 0001 wrote it
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, name, model, started_at, ok, verdict, git_revision, "
            "recipe_sha256) VALUES ('qualify', 'old', 'old', '2025-12-01 10:00:00', 1, "
            "'8/8 gates hold', 'deadbeef', 'r0')")
        assert {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")} >= {"runs", "metrics"}
        assert "gates" not in {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")}
    engine.dispose()
    with open_history(path) as h:
        assert h.revision == "0002"
        (old,) = h.runs()
        assert (old["name"], old["verdict"], old["git_revision"], old["night"]) == \
            ("old", "8/8 gates hold", "deadbeef", None)
        h.record(record("new"))
        assert h.counts()["gates"] == 1 and len(h.runs()) == 2


def test_a_newer_history_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "new.sqlite"
    open_history(path).close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    engine.dispose()
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="0099, newer than this deepcompress knows .*Upgrade"):
        open_history(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"this is my diary, not a database\n" * 40,
                                     b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_corrupt_history_is_refused_with_the_fix_and_left_alone(tmp_path, capsys, content):
    path = tmp_path / "h.sqlite"
    path.write_bytes(content)
    with pytest.raises(HistoryError, match=r"not a usable SQLite database .*mv .*\.corrupt"):
        open_history(path)
    assert path.read_bytes() == content
    assert main(["history", "--db", str(path), "--json"]) == 2
    assert "not a usable SQLite database" in json.loads(capsys.readouterr().out)["error"]


def test_a_database_that_is_not_a_history_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE invoices (id INTEGER)")
    engine.dispose()
    with pytest.raises(HistoryError, match="not a deepcompress history"):
        open_history(path)


def test_runs_read_back_with_provenance_and_the_last_passing_run(tmp_path):
    with open_history(tmp_path / "h.sqlite") as h:
        first = h.record(record(p50=1.0))
        h.record(record(ok=False, p50=5.0))
        h.record(record(name="other", p50=3.0))
        run_id, figures = h.last_passing("qualify", "q")
        assert run_id == first
        key = Figure("latency_p50_ms", 0, format="tflite", device="host",
                     fingerprint=HOST["fingerprint"]).compare_key
        assert figures[key] == 1.0
        detail = h.run(first)
        for row in detail["metrics"] + detail["gates"]:
            assert row["git_revision"] == "abc123" and row["recipe_sha256"] == "r" * 64
        device_rows = [m for m in detail["metrics"] if m["device"]]
        assert device_rows and all(m["device_fingerprint"] == "f" * 16 and m["artifact_sha256"]
                                   for m in device_rows)
        assert detail["devices"][0]["fingerprint"] == "f" * 16
        assert h.counts()["devices"] == 1   # one device, however many runs
        assert [r["id"] for r in h.runs(name="q")] == [2, 1]


def test_a_cell_is_recorded_once_however_often_it_ran(tmp_path):
    with open_history(tmp_path / "h.sqlite") as h:
        for p50 in (1.0, 1.1, 1.2):
            h.record(record(kind="nightly", night="2026-01-01", device_slot="host",
                            cell_key="m/2026-01-01/q/host", p50=p50))
        (run,) = h.runs()
        assert h.counts()["metrics"] == 3 and h.counts()["gates"] == 1
        assert h.run(run["id"])["metrics"][-1]["value"] == 1.2


def _writer(path: str, name: str, n: int) -> None:
    with open_history(path) as h:
        for i in range(n):
            h.record(record(name=name, p50=float(i)))


def _claimer(db: str, owner: str, out: str, pause_s: float = 0.0) -> None:
    """A host working the cells of slot "host": claim, (work), record, until none is left."""
    claimed = []
    with open_history(db) as h:
        while (model := h.claim("m", "2026-01-01", "host", owner, 60)) is not None:
            claimed.append(model)
            time.sleep(pause_s)   # a cell takes a while: the other hosts claim meanwhile
            assert h.finish("m", "2026-01-01", model, "host", owner,
                            record(kind="nightly", model=model, night="2026-01-01", device_slot="host",
                                   cell_key=f"m/2026-01-01/{model}/host")) is not None
    Path(out).write_text(json.dumps(claimed))


def run_processes(*targets: tuple) -> None:
    """Run each (function, args) in its own fresh process (spawned: this test process may hold
    threads, which a fork would copy in whatever state they were), and wait for all of them."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=fn, args=args) for fn, args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0


def test_two_processes_share_one_sqlite_file(tmp_path):
    """WAL and a busy timeout: concurrent writers wait for each other; nothing is lost or torn;
    cells claimed by two processes at once are each claimed once."""
    path = str(tmp_path / "h.sqlite")
    models = [f"m{i:02d}" for i in range(16)]
    with open_history(path) as h:
        h.ensure_cells("m", "2026-01-01", models, ["host"])
    run_processes(*[(_writer, (path, f"w{i}", 15)) for i in range(2)],
                  *[(_claimer, (path, f"host:{i}:x", str(tmp_path / f"c{i}.json"))) for i in range(2)])
    claimed = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in range(2)]
    assert sorted(claimed[0] + claimed[1]) == models
    with open_history(path) as h:
        with h.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert len(h.runs(name="w0", limit=None)) == 15 and len(h.runs(name="w1", limit=None)) == 15
        assert len(h.runs(kind="nightly", limit=None)) == 16
        assert {c["state"] for c in h.cells("m", "2026-01-01")} == {"done"}


def test_history_and_compare_commands(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    with open_history(db) as h:
        a = h.record(record(p50=1.0, size=1000))
        b = h.record(record(p50=1.2, size=900, ok=False))
    assert main(["history", "--db", str(db), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in runs] == [b, a] and runs[0]["ok"] is False
    assert main(["history", "--db", str(db), "--run", "latest-passing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == a
    assert main(["compare", str(a), str(b), "--db", str(db), "--json"]) == 0
    rows = {(r["figure"], r["format"]): r for r in json.loads(capsys.readouterr().out)["figures"]}
    lat = rows[("latency_p50_ms", "tflite")]
    assert (lat["a"], lat["b"], lat["better"]) == (1.0, 1.2, False)
    assert lat["change_pct"] == pytest.approx(20.0)
    assert rows[("size_bytes", "tflite")]["better"] is True
    assert main(["compare", str(a), str(b), "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "+20.0% worse" in table and "-10.0% better" in table
    assert main(["history", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert not (tmp_path / "none.sqlite").exists()


@pytest.mark.parametrize("db, words", [("mysql://u@h/db", "SQLite (a file) or PostgreSQL"),
                                       ("postgresql://u@127.0.0.1:1/db", "cannot be reached")])
def test_a_database_that_cannot_hold_the_history_is_a_usage_error(db, words, capsys):
    assert main(["history", "--db", db, "--json"]) == 2
    assert words in json.loads(capsys.readouterr().out)["error"]
