"""HTTP cron jobs: projects, client credentials (hashed secrets), jobs (claimable work items), execution log.

Revision ID: 0004_http_jobs
Revises: 0003_pipeline
Create Date: 2026-11-23 21:39:09.262911
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004_http_jobs"
down_revision: str | None = "0003_pipeline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# storage.types.UTCDateTime as stored: naive UTC, microseconds on MariaDB/MySQL.
_UTC = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "http_job_projects",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_http_job_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_http_job_projects_name")),
    )
    op.create_table(
        "http_job_credentials",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("api_key", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("revoked_at", _UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["http_job_projects.id"],
            name=op.f("fk_http_job_credentials_project_id_http_job_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_http_job_credentials")),
        sa.UniqueConstraint("api_key", name=op.f("uq_http_job_credentials_api_key")),
    )
    with op.batch_alter_table("http_job_credentials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_http_job_credentials_project_id"), ["project_id"], unique=False)

    op.create_table(
        "http_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("spec", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("timeout_ms", sa.Integer(), nullable=False),
        sa.Column("retry_max", sa.Integer(), nullable=False),
        sa.Column("retry_delay_ms", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("anchor_at", _UTC, nullable=False),
        sa.Column("next_fire_at", _UTC, nullable=True),
        sa.Column("claimed_by", sa.String(length=255), nullable=True),
        sa.Column("claimed_until", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["http_job_projects.id"],
            name=op.f("fk_http_jobs_project_id_http_job_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_http_jobs")),
    )
    with op.batch_alter_table("http_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_http_jobs_next_fire_at_id"), ["next_fire_at", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_http_jobs_project_id_created_at_id"), ["project_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "http_job_executions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("fire_time", _UTC, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("lag_ms", sa.Double(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["http_jobs.id"], name=op.f("fk_http_job_executions_job_id_http_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_http_job_executions")),
        sa.UniqueConstraint("job_id", "fire_time", name=op.f("uq_http_job_executions_job_id_fire_time")),
    )
    with op.batch_alter_table("http_job_executions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_http_job_executions_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_http_job_executions_project_id_created_at"), ["project_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("http_job_executions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_http_job_executions_project_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_http_job_executions_created_at"))

    op.drop_table("http_job_executions")
    with op.batch_alter_table("http_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_http_jobs_project_id_created_at_id"))
        batch_op.drop_index(batch_op.f("ix_http_jobs_next_fire_at_id"))

    op.drop_table("http_jobs")
    with op.batch_alter_table("http_job_credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_http_job_credentials_project_id"))

    op.drop_table("http_job_credentials")
    op.drop_table("http_job_projects")
