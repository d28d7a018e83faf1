"""Leases (one running instance of a service across the fleet, fencing tokens) and the node registry.

Revision ID: 0002_leases
Revises: 0001_core
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002_leases"
down_revision: str | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    """storage.types.UTCDateTime frozen as DDL: naive UTC timestamp, microseconds on MySQL/MariaDB too."""
    return sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "scheduler_leases",
        sa.Column("scheduler", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("acquired_at", _utc(), nullable=True),
        sa.Column("expires_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("scheduler", name=op.f("pk_scheduler_leases")),
    )
    op.create_table(
        "scheduler_nodes",
        sa.Column("node_id", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("services", sa.JSON(), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("heartbeat_at", _utc(), nullable=False),
        sa.Column("stopped_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_scheduler_nodes")),
    )
    with op.batch_alter_table("scheduler_runs") as batch:
        batch.add_column(sa.Column("fencing_token", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_scheduler_runs_status_scheduler"), "scheduler_runs", ["status", "scheduler"])


def downgrade() -> None:
    op.drop_index(op.f("ix_scheduler_runs_status_scheduler"), table_name="scheduler_runs")
    with op.batch_alter_table("scheduler_runs") as batch:
        batch.drop_column("fencing_token")
    op.drop_table("scheduler_nodes")
    op.drop_table("scheduler_leases")
