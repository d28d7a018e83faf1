"""The HTTP-jobs tables (SQLAlchemy Core), registered on the shared metadata so one Alembic history holds all.

``http_jobs`` is the work item: it carries its next fire time and claim columns, so replicas share the due
jobs through :mod:`storage.claims` (SKIP LOCKED). ``http_job_executions`` is the execution log: one row per
(job, fire time), unique, so a batch delivered again after a crash is never recorded twice.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from storage.claims import claim_columns
from storage.schema import metadata
from storage.types import BigId, UTCDateTime

projects = Table(
    "http_job_projects",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

credentials = Table(
    "http_job_credentials",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), ForeignKey("http_job_projects.id", ondelete="CASCADE"), nullable=False),
    Column("api_key", String(64), nullable=False, unique=True),
    # "pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>": the secret itself is never stored (jobs.credentials).
    Column("secret_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Index(None, "project_id"),
)

jobs = Table(
    "http_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), ForeignKey("http_job_projects.id", ondelete="CASCADE"), nullable=False),
    Column("spec", String(200), nullable=False),  # cron (5 or 6 fields), a macro or "@every <duration>"
    Column("timezone", String(64), nullable=False),
    Column("callback_url", Text, nullable=False),
    Column("data", JSON, nullable=True),  # the payload sent with every fire
    Column("timeout_ms", Integer, nullable=False),
    Column("retry_max", Integer, nullable=False),
    Column("retry_delay_ms", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    # "@every" fire times are anchor + k * interval: persisted, so the rhythm survives restarts.
    Column("anchor_at", UTCDateTime(), nullable=False),
    # The next fire still to deliver; NULL while paused. Due = next_fire_at <= database clock.
    Column("next_fire_at", UTCDateTime(), nullable=True),
    *claim_columns(),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "next_fire_at", "id"),  # serves the dispatcher's claim (due first)
    Index(None, "project_id", "created_at", "id"),  # serves listing a project's jobs
)

executions = Table(
    "http_job_executions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("http_jobs.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", String(36), nullable=False),
    Column("fire_time", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),  # "succeeded" | "failed"
    Column("status_code", Integer, nullable=True),  # of the last attempt; NULL when no response came
    Column("latency_ms", Double, nullable=True),  # of the last attempt
    Column("lag_ms", Double, nullable=True),  # first attempt start minus fire time
    Column("attempt", Integer, nullable=False),  # attempts made (1 = first try)
    Column("error", Text, nullable=True),
    Column("node", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("job_id", "fire_time"),  # one record per fire, whoever delivered it
    Index(None, "project_id", "created_at"),
    Index(None, "created_at"),  # serves retention by age
)
