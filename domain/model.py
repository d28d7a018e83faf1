"""The pipeline's vocabularies: every status and category value the tables accept."""

from __future__ import annotations

from enum import StrEnum


class CompanyStatus(StrEnum):
    ACTIVE = "ACTIVE"  # the only status the pipeline processes
    SUSPENDED = "SUSPENDED"
    TRIAL = "TRIAL"
    ARCHIVED = "ARCHIVED"


class Stage(StrEnum):
    """Processing stages of a session, in pipeline order."""

    CSV_IMPORT = "CSV_IMPORT"
    TRANSCRIPT_FETCH = "TRANSCRIPT_FETCH"
    SESSION_CREATION = "SESSION_CREATION"
    AI_ANALYSIS = "AI_ANALYSIS"
    QUESTION_EXTRACTION = "QUESTION_EXTRACTION"


class StageStatus(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class Sentiment(StrEnum):
    POSITIVE = "POSITIVE"
    NEUTRAL = "NEUTRAL"
    NEGATIVE = "NEGATIVE"


class Category(StrEnum):
    SCHEDULE_HOURS = "SCHEDULE_HOURS"
    LEAVE_VACATION = "LEAVE_VACATION"
    SICK_LEAVE_RECOVERY = "SICK_LEAVE_RECOVERY"
    SALARY_COMPENSATION = "SALARY_COMPENSATION"
    CONTRACT_HOURS = "CONTRACT_HOURS"
    ONBOARDING = "ONBOARDING"
    OFFBOARDING = "OFFBOARDING"
    WORKWEAR_STAFF_PASS = "WORKWEAR_STAFF_PASS"
    TEAM_CONTACTS = "TEAM_CONTACTS"
    PERSONAL_QUESTIONS = "PERSONAL_QUESTIONS"
    ACCESS_LOGIN = "ACCESS_LOGIN"
    SOCIAL_QUESTIONS = "SOCIAL_QUESTIONS"
    UNRECOGNIZED_OTHER = "UNRECOGNIZED_OTHER"


class RequestStatus(StrEnum):
    """An AI processing request's place in the batch flow."""

    PENDING_BATCHING = "PENDING_BATCHING"
    BATCHING_IN_PROGRESS = "BATCHING_IN_PROGRESS"
    PROCESSING_COMPLETE = "PROCESSING_COMPLETE"
    PROCESSING_FAILED = "PROCESSING_FAILED"


class BatchStatus(StrEnum):
    PENDING = "PENDING"  # row written, nothing uploaded yet (or the upload's outcome is unknown)
    UPLOADING = "UPLOADING"
    VALIDATING = "VALIDATING"
    IN_PROGRESS = "IN_PROGRESS"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"  # OpenAI finished; results not applied yet
    PROCESSED = "PROCESSED"  # results applied
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class DuplicateMode(StrEnum):
    """What csv-import does with a row whose (company, external session id) it already has."""

    SKIP = "skip"  # insert-only: the stored row stays as it is
    UPDATE = "update"  # overwrite the raw fields of rows not processed yet


PROCESSING_TYPE = "session_analysis"
