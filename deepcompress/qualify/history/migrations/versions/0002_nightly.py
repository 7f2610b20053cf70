"""Nightly runs and gates: a run may be one cell of a nightly matrix (night, device slot, and a
unique cell key, so a cell's results are written once however often it is retried); every gate's
verdict is kept with its limit and baseline; cells are claimed with a lease.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("night", sa.String(10)))
    op.add_column("runs", sa.Column("device_slot", sa.String(64)))
    op.add_column("runs", sa.Column("cell_key", sa.String(400)))
    op.add_column("runs", sa.Column("error", sa.Text))
    op.create_index("runs_by_cell", "runs", ["cell_key"], unique=True)
    op.create_table(
        "gates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("gate", sa.String(64), nullable=False),
        sa.Column("figure", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(400), nullable=False),
        sa.Column("format", sa.String(32)),
        sa.Column("device", sa.String(200)),
        sa.Column("actual", sa.Float),
        sa.Column("limit", sa.Float),
        sa.Column("baseline", sa.Float),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("skipped", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("git_revision", sa.String(80), nullable=False),
        sa.Column("recipe_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_sha256", sa.String(64)),
        sa.Column("device_fingerprint", sa.String(16)))
    op.create_index("gates_by_run", "gates", ["run_id"])
    op.create_table(
        "cells",
        sa.Column("matrix", sa.String(200), primary_key=True),
        sa.Column("night", sa.String(10), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200)),
        sa.Column("lease_expires", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("updated_at", sa.Float))


def downgrade() -> None:
    op.drop_table("cells")
    op.drop_table("gates")
    op.drop_index("runs_by_cell", "runs")
    for column in ("error", "cell_key", "device_slot", "night"):
        op.drop_column("runs", column)
