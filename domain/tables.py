"""The pipeline's tables (SQLAlchemy Core), registered on the shared metadata so one Alembic history holds all.

CSV feed → ``session_imports`` (raw rows) → ``sessions`` + ``messages`` + one ``processing_status`` row per
stage → ``ai_processing_requests`` (cost record and batch work item) → ``ai_batch_requests`` (an OpenAI batch)
→ results written back to ``sessions`` and ``questions``.

Work items carry ``claimed_by`` / ``claimed_until`` so replicas share a backlog through
:mod:`storage.claims` (SKIP LOCKED) without touching the same row twice.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
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
from sqlalchemy.dialects import mysql

from storage.claims import claim_columns
from storage.schema import metadata
from storage.types import BigId, UTCDateTime

# MariaDB's TEXT holds 64 KiB; transcripts and messages can be longer.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")



companies = Table(
    "companies",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # domain.model.CompanyStatus; only ACTIVE is processed
    Column("csv_url", Text, nullable=False),  # http(s):// or file://
    Column("csv_username", String(255), nullable=True),
    # A reference to the secret (env:NAME or file:/path), never the password itself: see domain.secrets.
    Column("csv_password_ref", String(512), nullable=True),
    Column("timezone", String(64), nullable=False),  # how the feed's local times are read
    Column("default_model", String(100), nullable=True),  # AI model; OPENAI_MODEL when NULL
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint("status IN ('ACTIVE','SUSPENDED','TRIAL','ARCHIVED')", name="status"),
)

# One raw CSV row per (company, external session id). import-processing claims rows with processed_at NULL.
session_imports = Table(
    "session_imports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("company_id", String(36), ForeignKey("companies.id", ondelete="CASCADE"), nullable=False),
    Column("external_session_id", String(255), nullable=False),
    Column("start_time_raw", String(64), nullable=False),
    Column("end_time_raw", String(64), nullable=False),
    Column("ip_address", String(45), nullable=True),
    Column("country_code", String(3), nullable=True),
    Column("language", String(100), nullable=True),
    Column("messages_sent", Integer, nullable=True),
    Column("sentiment_raw", String(100), nullable=True),
    Column("escalated_raw", String(20), nullable=True),
    Column("forwarded_hr_raw", String(20), nullable=True),
    Column("full_transcript_url", Text, nullable=True),
    Column("avg_response_time_seconds", Double, nullable=True),
    Column("tokens", BigInteger, nullable=True),
    Column("tokens_eur", Double, nullable=True),
    Column("category", String(200), nullable=True),
    Column("initial_message", LongText, nullable=True),
    Column("raw_transcript_content", LongText, nullable=True),
    Column("line_number", Integer, nullable=True),  # where the row was in its feed, for error reports
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("processed_at", UTCDateTime(), nullable=True),  # became a session, or failed for good
    Column("error", Text, nullable=True),  # why it could not become a session (never re-selected)
    Column("attempts", Integer, nullable=False, default=0),
    *claim_columns(),
    UniqueConstraint("company_id", "external_session_id"),
    Index(None, "processed_at", "created_at", "id"),  # serves the import-processing claim
)

# A CSV line that was rejected: one row per (company, line content), however often the feed repeats it.
import_rejections = Table(
    "import_rejections",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("company_id", String(36), ForeignKey("companies.id", ondelete="CASCADE"), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # sha256 of the raw line
    Column("line_number", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw_line", Text, nullable=False),  # truncated
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("seen_count", Integer, nullable=False, default=1),
    UniqueConstraint("company_id", "fingerprint"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("company_id", String(36), ForeignKey("companies.id", ondelete="CASCADE"), nullable=False),
    Column("import_id", String(36), ForeignKey("session_imports.id", ondelete="SET NULL"), nullable=True, unique=True),
    Column("external_session_id", String(255), nullable=False),
    Column("start_time", UTCDateTime(), nullable=False),
    Column("end_time", UTCDateTime(), nullable=False),
    Column("ip_address", String(45), nullable=True),  # validated by ipaddress before insert
    Column("country", String(3), nullable=True),
    Column("full_transcript_url", Text, nullable=True),
    Column("avg_response_time", Double, nullable=True),
    Column("initial_msg", LongText, nullable=True),
    Column("language", String(10), nullable=True),
    Column("messages_sent", Integer, nullable=True),
    Column("sentiment", String(16), nullable=True),  # domain.model.Sentiment
    Column("escalated", Boolean, nullable=True),
    Column("forwarded_hr", Boolean, nullable=True),
    Column("category", String(32), nullable=True),  # domain.model.Category
    Column("summary", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("company_id", "external_session_id"),
    CheckConstraint("end_time >= start_time", name="end_after_start"),
    Index(None, "company_id", "start_time"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("session_id", String(36), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),  # 0-based order within the session
    Column("timestamp", UTCDateTime(), nullable=True),
    Column("role", String(50), nullable=False),  # lower case: user, assistant, system, unknown
    Column("content", LongText, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("session_id", "position"),
    CheckConstraint("position >= 0", name="position_not_negative"),
)

# One row per (session, stage); the AI stages are claimed through these rows.
processing_status = Table(
    "processing_status",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_id", String(36), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(32), nullable=False),  # domain.model.Stage
    Column("status", String(16), nullable=False),  # domain.model.StageStatus
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("retry_count", Integer, nullable=False, default=0),
    Column("details", JSON, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    *claim_columns(),
    UniqueConstraint("session_id", "stage"),
    CheckConstraint("retry_count >= 0", name="retry_count_not_negative"),
    CheckConstraint(
        "stage IN ('CSV_IMPORT','TRANSCRIPT_FETCH','SESSION_CREATION','AI_ANALYSIS','QUESTION_EXTRACTION')",
        name="stage",
    ),
    CheckConstraint("status IN ('PENDING','IN_PROGRESS','COMPLETED','FAILED','SKIPPED')", name="status"),
    Index(None, "stage", "status", "created_at", "id"),  # serves the per-stage claim
)

questions = Table(
    "questions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("content", String(512), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

session_questions = Table(
    "session_questions",
    metadata,
    Column("session_id", String(36), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("question_id", BigId, ForeignKey("questions.id"), nullable=False),
    UniqueConstraint("session_id", "question_id"),
)

# An OpenAI batch: one model per batch (the API requires it). Created PENDING before anything is uploaded so
# that a crash between submission and bookkeeping can be recovered from the batch's metadata.
ai_batch_requests = Table(
    "ai_batch_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("model", String(100), nullable=False),
    Column("openai_batch_id", String(255), nullable=True, unique=True),
    Column("input_file_id", String(255), nullable=True),
    Column("output_file_id", String(255), nullable=True),
    Column("error_file_id", String(255), nullable=True),
    Column("status", String(16), nullable=False),  # domain.model.BatchStatus
    Column("request_count", Integer, nullable=False, default=0),
    Column("input_bytes", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("submitted_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("processed_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    *claim_columns(),
    CheckConstraint(
        "status IN ('PENDING','UPLOADING','VALIDATING','IN_PROGRESS','FINALIZING','COMPLETED','PROCESSED',"
        "'FAILED','CANCELLED')",
        name="status",
    ),
    Index(None, "status", "created_at", "id"),
)

# One AI call's cost record; in batch mode also the work item that waits for, and travels in, a batch.
ai_processing_requests = Table(
    "ai_processing_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_id", String(36), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("model", String(100), nullable=False),
    Column("processing_type", String(32), nullable=False),  # session_analysis
    Column("processing_status", String(32), nullable=False),  # domain.model.RequestStatus
    Column("batch_id", String(36), ForeignKey("ai_batch_requests.id", ondelete="SET NULL"), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),  # batch submissions so far (retry cap)
    Column("openai_request_id", String(255), nullable=True),
    Column("service_tier", String(50), nullable=True),
    Column("system_fingerprint", String(100), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("total_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("audio_tokens_prompt", Integer, nullable=False, default=0),
    Column("audio_tokens_completion", Integer, nullable=False, default=0),
    Column("accepted_prediction_tokens", Integer, nullable=False, default=0),
    Column("rejected_prediction_tokens", Integer, nullable=False, default=0),
    Column("prompt_token_cost", Double, nullable=False, default=0.0),  # USD per token
    Column("completion_token_cost", Double, nullable=False, default=0.0),  # USD per token
    Column("total_cost_usd", Double, nullable=False, default=0.0),
    Column("total_cost_eur", Double, nullable=False, default=0.0),
    Column("success", Boolean, nullable=False, default=False),
    Column("error_message", Text, nullable=True),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=True),
    *claim_columns(),
    CheckConstraint(
        "processing_status IN ('PENDING_BATCHING','BATCHING_IN_PROGRESS','PROCESSING_COMPLETE','PROCESSING_FAILED')",
        name="processing_status",
    ),
    CheckConstraint(
        "prompt_tokens >= 0 AND completion_tokens >= 0 AND total_tokens >= 0 AND cached_tokens >= 0"
        " AND reasoning_tokens >= 0 AND audio_tokens_prompt >= 0 AND audio_tokens_completion >= 0"
        " AND accepted_prediction_tokens >= 0 AND rejected_prediction_tokens >= 0",
        name="tokens_not_negative",
    ),
    CheckConstraint(
        "prompt_token_cost >= 0 AND completion_token_cost >= 0 AND total_cost_usd >= 0 AND total_cost_eur >= 0",
        name="costs_not_negative",
    ),
    Index(None, "processing_status", "model", "requested_at", "id"),  # serves the batch-creation claim
    Index(None, "batch_id"),
    Index(None, "session_id"),
)

# Per-token prices in USD, valid from effective_from until effective_until (NULL: still in effect).
ai_model_pricing = Table(
    "ai_model_pricing",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model", String(100), nullable=False),
    Column("prompt_usd_per_million", Double, nullable=False),
    Column("completion_usd_per_million", Double, nullable=False),
    Column("effective_from", UTCDateTime(), nullable=False),
    Column("effective_until", UTCDateTime(), nullable=True),
    UniqueConstraint("model", "effective_from"),
    CheckConstraint("prompt_usd_per_million >= 0 AND completion_usd_per_million >= 0", name="prices_not_negative"),
    info={"seeded_by_migration": True},  # storage.transfer replaces these rows instead of refusing the target
)
