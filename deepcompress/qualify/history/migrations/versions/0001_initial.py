"""The first history schema: runs, devices, artifacts, metrics.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _provenance() -> list[sa.Column]:
    return [sa.Column("git_revision", sa.String(80), nullable=False),
            sa.Column("recipe_sha256", sa.String(64), nullable=False),
            sa.Column("artifact_sha256", sa.String(64)),
            sa.Column("device_fingerprint", sa.String(16))]


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("config_sha256", sa.String(64)),
        sa.Column("host", sa.String(255)),
        sa.Column("out_dir", sa.Text),
        sa.Column("summary", sa.Text),
        *_provenance())
    op.create_index("runs_by_name", "runs", ["kind", "name", "id"])
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(16), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("serial", sa.String(200)),
        sa.Column("model", sa.String(200)),
        sa.Column("os_version", sa.String(200)),
        sa.Column("abi", sa.String(64)),
        sa.Column("cores", sa.Integer),
        sa.Column("info", sa.Text),
        sa.Column("git_revision", sa.String(80), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False))
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("zipped_bytes", sa.BigInteger, nullable=False),
        *_provenance())
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("figure", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("higher_is_better", sa.Boolean, nullable=False),
        sa.Column("task_metric", sa.String(64)),
        sa.Column("format", sa.String(32)),
        sa.Column("device", sa.String(200)),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id")),
        *_provenance())
    op.create_index("metrics_by_run", "metrics", ["run_id"])


def downgrade() -> None:
    for name in ("metrics", "artifacts", "devices", "runs"):
        op.drop_table(name)
