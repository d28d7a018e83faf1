"""The scheduling layer's tables (SQLAlchemy Core). Alembic migrations are generated from this metadata."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from storage.types import UTCDateTime

# Stable constraint names make migrations identical on every engine.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per run attempt. The insert of (scheduler, scheduled_for, attempt) IS the claim: the unique
# constraint lets exactly one node across the fleet own a fire time; losers see the conflict and skip.
runs = Table(
    "scheduler_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("scheduler", String(100), nullable=False),
    Column("scheduled_for", UTCDateTime(), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("trigger", String(16), nullable=False),  # schedule | manual | retry
    Column("status", String(16), nullable=False),  # see services.runs.RunStatus
    Column("node", String(255), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("duration_seconds", Double, nullable=True),
    Column("lag_seconds", Double, nullable=True),
    Column("items_processed", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("fencing_token", BigInteger, nullable=True),  # the lease token the run executed under
    UniqueConstraint("scheduler", "scheduled_for", "attempt"),
    Index(None, "scheduler", "started_at"),
    Index(None, "scheduled_for"),
    Index(None, "status", "scheduler"),  # the heartbeat's sweep for orphaned `running` rows
)

# One row per service instance: what must survive a restart and be visible to every process.
service_state = Table(
    "scheduler_state",
    metadata,
    Column("scheduler", String(100), primary_key=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("overrides", JSON, nullable=True),  # runtime config changes from the admin API
    Column("anchor_at", UTCDateTime(), nullable=True),  # origin of @every intervals
    Column("last_fire_at", UTCDateTime(), nullable=True),  # newest fire time this service has handled
    Column("status", String(16), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("node", String(255), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# One row per service: who may run it right now. The token grows on every acquisition, so a node that lost
# its lease (paused, partitioned, killed) cannot write over its successor: its writes carry an old token.
leases = Table(
    "scheduler_leases",
    metadata,
    Column("scheduler", String(100), primary_key=True),
    Column("holder", String(255), nullable=True),  # NULL when free
    Column("fencing_token", BigInteger, nullable=False, default=0),
    Column("run_id", String(36), nullable=True),
    Column("acquired_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),  # database clock
)

# Every process that runs services: its heartbeat says it is alive (status views, health).
nodes = Table(
    "scheduler_nodes",
    metadata,
    Column("node_id", String(255), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(50), nullable=False),
    Column("services", JSON, nullable=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),  # database clock
    Column("stopped_at", UTCDateTime(), nullable=True),
)
