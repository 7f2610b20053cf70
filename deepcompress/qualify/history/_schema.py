"""The history's tables as this version of the code reads and writes them: the head of the
migrations in ``migrations/versions`` (a test holds the two equal).

Every row of ``runs``, ``artifacts``, ``metrics`` and ``gates`` carries its provenance: the git
revision of the code, the recipe's sha256 (``unknown`` for a ready .dcz that records none), the
artifact's sha256 and the device's fingerprint (NULL where the row is about no single artifact or
device: a qualify run spans several, a size has no device).
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Integer,
                        MetaData, String, Table, Text)

metadata = MetaData()


def _provenance() -> list[Column]:
    return [Column("git_revision", String(80), nullable=False),
            Column("recipe_sha256", String(64), nullable=False),
            Column("artifact_sha256", String(64)),
            Column("device_fingerprint", String(16))]


runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),          # "qualify" | "nightly"
    Column("name", String(200), nullable=False),         # the qualification's or matrix's name
    Column("model", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("ok", Boolean, nullable=False),
    Column("verdict", Text, nullable=False),
    Column("config_sha256", String(64)),
    Column("host", String(255)),
    Column("out_dir", Text),
    Column("summary", Text),                             # JSON: phases, paths, what the run said
    *_provenance(),
    Column("night", String(10)),                         # nightly: YYYY-MM-DD
    Column("device_slot", String(64)),                   # nightly: the matrix's device slot
    Column("cell_key", String(400), unique=True),        # nightly: matrix/night/model/slot
    Column("error", Text),
)

devices = Table(
    "devices", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(16), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("serial", String(200)),
    Column("model", String(200)),
    Column("os_version", String(200)),
    Column("abi", String(64)),
    Column("cores", Integer),
    Column("info", Text),
    Column("git_revision", String(80), nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
)

artifacts = Table(
    "artifacts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("format", String(32), nullable=False),
    Column("path", Text),
    Column("bytes", BigInteger, nullable=False),
    Column("zipped_bytes", BigInteger, nullable=False),
    *_provenance(),
)

metrics = Table(
    "metrics", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("figure", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("unit", String(16), nullable=False),
    Column("higher_is_better", Boolean, nullable=False),
    Column("task_metric", String(64)),
    Column("format", String(32)),
    Column("device", String(200)),
    Column("device_id", Integer, ForeignKey("devices.id")),
    *_provenance(),
)

gates = Table(
    "gates", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("gate", String(64), nullable=False),
    Column("figure", String(64), nullable=False),
    Column("subject", String(400), nullable=False),
    Column("format", String(32)),
    Column("device", String(200)),
    Column("actual", Float),
    Column("limit", Float),
    Column("baseline", Float),
    Column("ok", Boolean, nullable=False),
    Column("skipped", Text),
    Column("message", Text),
    *_provenance(),
)

cells = Table(
    "cells", metadata,
    Column("matrix", String(200), primary_key=True),
    Column("night", String(10), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("state", String(16), nullable=False),         # pending | running | done | failed
    Column("owner", String(200)),                        # host:pid:token of the claimant
    Column("lease_expires", Float),                      # epoch seconds
    Column("attempts", Integer, nullable=False),
    Column("run_id", Integer),
    Column("error", Text),
    Column("updated_at", Float),
)
