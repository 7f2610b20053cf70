"""The shared history on a real PostgreSQL server, started by the tests themselves in a temporary
folder (tests/pg_server.py): migrations, cells claimed with FOR UPDATE SKIP LOCKED by
processes racing for them, a dead host's cell claimed again after its lease, and a nightly run
of two hosts (two processes) on one matrix."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from deepcompress.qualify.history import open_history
from pg_server import find_bin, new_database, throwaway_postgres

from test_history import _claimer, alembic_upgrade, record, run_processes
from test_nightly import tiny_dcz  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(find_bin() is None, reason="no PostgreSQL server binaries "
                                "(initdb, pg_ctl): apt-get install postgresql")
NIGHT = "2026-01-01"


@pytest.fixture(scope="module")
def server():
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def db(server, request):
    return new_database(server, request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:60])


def test_a_new_history_on_postgresql(db):
    with open_history(db) as h:
        assert h.dialect == "postgresql" and h.revision == "0002"
        run_id = h.record(record())
        assert h.run(run_id)["metrics"][0]["git_revision"] == "abc123"
        assert "postgres@" in h.where and "host=" in h.where


def test_a_v1_history_on_postgresql_is_migrated(db):
    alembic_upgrade(db, "0001")
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO runs (kind, name, model, started_at, ok, verdict, git_revision, "
            "recipe_sha256) VALUES ('qualify', 'old', 'old', now(), true, 'v1 run', 'deadbeef', 'r0')")
    engine.dispose()
    with open_history(db) as h:
        assert h.revision == "0002"
        assert [r["verdict"] for r in h.runs()] == ["v1 run"]
        h.record(record(kind="nightly", night=NIGHT, device_slot="host", cell_key="k"))
        assert h.counts()["runs"] == 2


def test_skip_locked_hands_a_locked_cell_to_nobody_else(db):
    with open_history(db) as h:
        h.ensure_cells("m", NIGHT, ["a", "b"], ["host"])
        other = sa.create_engine(db)
        with other.connect() as conn, conn.begin():   # another host, mid-claim: row "a" locked
            conn.exec_driver_sql("SELECT * FROM cells WHERE model = 'a' FOR UPDATE")
            t0 = time.perf_counter()
            assert h.claim("m", NIGHT, "host", "me:1:x", 60) == "b"
            assert time.perf_counter() - t0 < 5, "the claim waited for the lock instead of skipping"
        other.dispose()
        assert h.claim("m", NIGHT, "host", "me:1:x", 60) == "a"


def test_racing_hosts_claim_each_cell_once(db, tmp_path):
    models = [f"m{i:02d}" for i in range(20)]
    with open_history(db) as h:
        h.ensure_cells("m", NIGHT, models, ["host"])
    run_processes(*[(_claimer, (db, f"host{i}:{i}:x", str(tmp_path / f"{i}.json"), 0.01))
                    for i in range(3)])
    claimed = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(3)]
    assert sorted(sum(claimed, [])) == models
    assert sum(1 for c in claimed if c) >= 2, "one host took every cell: no race was tested"
    with open_history(db) as h:
        cells = h.cells("m", NIGHT)
        assert {(c["state"], c["attempts"]) for c in cells} == {("done", 1)}
        assert h.counts()["runs"] == 20


def test_a_dead_hosts_cell_is_claimed_again_after_its_lease(db):
    with open_history(db) as h:
        h.ensure_cells("m", NIGHT, ["a"], ["host"])
        assert h.claim("m", NIGHT, "host", "hostA:1:x", lease_s=1.0) == "a"
        assert h.claim("m", NIGHT, "host", "hostB:2:y", lease_s=60) is None    # A's lease holds
        time.sleep(1.2)                                                         # A died; lease over
        assert h.claim("m", NIGHT, "host", "hostB:2:y", lease_s=60) == "a"
        run = record(kind="nightly", model="a", night=NIGHT, device_slot="host", cell_key=f"m/{NIGHT}/a/host")
        assert h.finish("m", NIGHT, "a", "host", "hostA:1:x", run) is None     # A came back: refused
        assert h.finish("m", NIGHT, "a", "host", "hostB:2:y", run) is not None
        (cell,) = h.cells("m", NIGHT)
        assert (cell["state"], cell["attempts"], cell["owner"]) == ("done", 2, "hostB:2:y")
        assert h.counts()["runs"] == 1


def test_two_hosts_work_one_matrix(db, tmp_path, tiny_dcz):
    """Two nightly processes (two hosts, each with its own folder) on one PostgreSQL: every cell
    runs once, on one of them, and the results are complete."""
    matrix = tmp_path / "m.toml"
    matrix.write_text(f"""
name = "shared"
lease_s = 60
[devices]
cpu0 = "host"
cpu1 = "host"
[bench]
runs = 5
warmup = 1
{"".join(f'''
[[models]]
name = "m{i}"
model = {{ dcz = "{tiny_dcz}" }}
export = {{ formats = ["tflite"], examples = 20, dense = false }}
''' for i in range(3))}
""")
    procs = [subprocess.Popen([sys.executable, "-m", "deepcompress", "nightly", str(matrix), "--out",
                               str(tmp_path / f"host{i}"), "--db", db, "--night", NIGHT, "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    ran = []
    for i in range(2):
        results = json.loads((tmp_path / f"host{i}" / "results.json").read_text())
        ran += [(c["model"], c["device"]) for c in results["ran_here"]]
        assert results["ok"] and len(results["cells"]) == 6
    assert sorted(ran) == sorted((f"m{i}", d) for i in range(3) for d in ("cpu0", "cpu1"))
    with open_history(db) as h:
        assert len(h.runs(kind="nightly", night=NIGHT, limit=None)) == 6
        assert {c["attempts"] for c in h.cells("shared", NIGHT)} == {1}
