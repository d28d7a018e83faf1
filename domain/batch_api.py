"""What the batch flow knows of the OpenAI Batch API: a remote batch and an API failure.

Kept apart from the SDK client (:mod:`domain.openai_batch_client`) so that the flow, and every process that
merely registers the batch-processing service, does not import the ``openai`` SDK (about 20 MB and 0.3 s)
until a batch is really sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ERROR_CHARS = 500


class BatchAPIError(Exception):
    """A Batch API call failed. ``transient``: worth retrying later; ``status``: the HTTP status, if any."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class RemoteBatch:
    """What OpenAI says about one batch."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def local_id(self) -> str | None:
        return self.metadata.get("local_batch_id")

    @classmethod
    def from_sdk(cls, batch: Any) -> RemoteBatch:
        errors: list[str] = []
        for item in getattr(getattr(batch, "errors", None), "data", None) or []:
            code = getattr(item, "code", None)
            message = getattr(item, "message", None) or ""
            line = getattr(item, "line", None)
            where = f" (line {line})" if line is not None else ""
            errors.append(f"{code or 'error'}{where}: {message}"[:MAX_ERROR_CHARS])
        return cls(
            id=str(batch.id),
            status=str(batch.status),
            input_file_id=batch.input_file_id,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            created_at=int(batch.created_at or 0),
            metadata={str(k): str(v) for k, v in (batch.metadata or {}).items()},
            errors=tuple(errors),
        )
