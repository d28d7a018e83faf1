"""Core scheduler tables: scheduler_runs (one row per attempt; the insert is the claim) and scheduler_state.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001_core"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    """storage.types.UTCDateTime frozen as DDL: naive UTC timestamp, microseconds on MySQL/MariaDB too."""
    return sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "scheduler_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("scheduler", sa.String(length=100), nullable=False),
        sa.Column("scheduled_for", _utc(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("duration_seconds", sa.Double(), nullable=True),
        sa.Column("lag_seconds", sa.Double(), nullable=True),
        sa.Column("items_processed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_runs")),
        sa.UniqueConstraint(
            "scheduler",
            "scheduled_for",
            "attempt",
            name=op.f("uq_scheduler_runs_scheduler_scheduled_for_attempt"),
        ),
    )
    op.create_index(op.f("ix_scheduler_runs_scheduled_for"), "scheduler_runs", ["scheduled_for"])
    op.create_index(op.f("ix_scheduler_runs_scheduler_started_at"), "scheduler_runs", ["scheduler", "started_at"])

    op.create_table(
        "scheduler_state",
        sa.Column("scheduler", sa.String(length=100), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=True),
        sa.Column("anchor_at", _utc(), nullable=True),
        sa.Column("last_fire_at", _utc(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("scheduler", name=op.f("pk_scheduler_state")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_state")
    op.drop_table("scheduler_runs")  # its indexes go with it
