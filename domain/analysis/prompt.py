"""What a model is asked: the system prompt, a session's transcript, and the chat-completions body.

The original rendered timestamps with the en-GB locale (``30/04/2025, 11:38:14``), which a model can read as
either day-first or month-first; here they are ISO-8601 UTC. A company's model is its ``default_model``,
otherwise the configured default (``OPENAI_MODEL``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.tables import companies, messages, sessions

TEMPERATURE = 0.3
_IDS_PER_QUERY = 1000  # ids travel as bound parameters; stay far below every driver's limit

SYSTEM_PROMPT = """\
You are an analyst of HR support chats between employees and an assistant. Read the transcript and answer \
with exactly one JSON object and nothing else, with these keys:

{
  "language": "ISO 639-1 code of the user's primary language, e.g. en, de, nl, fr",
  "sentiment": "POSITIVE | NEUTRAL | NEGATIVE (the user's overall sentiment)",
  "escalated": false,
  "forwarded_hr": false,
  "category": "SCHEDULE_HOURS | LEAVE_VACATION | SICK_LEAVE_RECOVERY | SALARY_COMPENSATION | CONTRACT_HOURS | \
ONBOARDING | OFFBOARDING | WORKWEAR_STAFF_PASS | TEAM_CONTACTS | PERSONAL_QUESTIONS | ACCESS_LOGIN | \
SOCIAL_QUESTIONS | UNRECOGNIZED_OTHER",
  "questions": ["up to 5 paraphrased questions the user asked, in English"],
  "summary": "a summary of the conversation, 10 to 300 characters",
  "session_id": "the session id given below"
}

Rules: "escalated" is true when the conversation was escalated to a supervisor or manager (or the user asked \
for that); "forwarded_hr" is true when HR contact details were mentioned or provided. Use UNRECOGNIZED_OTHER \
when no category fits. Timestamps are ISO-8601 UTC."""


@dataclass(frozen=True)
class TranscriptMessage:
    role: str  # lower case: user, assistant, system, unknown
    content: str
    timestamp: datetime | None  # the message's own time, or when it was stored


@dataclass
class Transcript:
    """A session's messages in order, ready for a model (``lines``) or the local analyzer (``messages``)."""

    session_id: str
    company_id: str
    model: str
    lines: list[str]
    messages: list[TranscriptMessage] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def iso(value: datetime) -> str:
    """``2025-04-30T11:38:14Z``: UTC, seconds precision, unambiguous for a model and a human."""
    moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_line(message: TranscriptMessage) -> str:
    stamp = f"[{iso(message.timestamp)}] " if message.timestamp is not None else ""
    return f"{stamp}{message.role}: {message.content}"


async def load_transcripts(
    conn: AsyncConnection, session_ids: Iterable[str], *, default_model: str
) -> dict[str, Transcript]:
    """The transcripts of ``session_ids`` (messages in order); a session without messages has empty lines.

    Sessions that do not exist are absent from the result. Two queries per thousand sessions, whatever
    the number of messages.
    """
    ids = list(dict.fromkeys(session_ids))
    result: dict[str, Transcript] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        heads = await conn.execute(
            select(sessions.c.id, sessions.c.company_id, companies.c.default_model)
            .join(companies, companies.c.id == sessions.c.company_id)
            .where(sessions.c.id.in_(chunk))
        )
        for session_id, company_id, model in heads:
            result[str(session_id)] = Transcript(str(session_id), str(company_id), model or default_model, [], [])
        rows = await conn.execute(
            select(
                messages.c.session_id, messages.c.role, messages.c.content, messages.c.timestamp, messages.c.created_at
            )
            .where(messages.c.session_id.in_(chunk))
            .order_by(messages.c.session_id, messages.c.position)
        )
        for session_id, role, content, timestamp, created_at in rows:
            transcript = result.get(str(session_id))
            if transcript is None:
                continue
            message = TranscriptMessage(str(role).lower(), str(content), timestamp or created_at)
            transcript.messages.append(message)
            transcript.lines.append(format_line(message))
    return result


def user_prompt(transcript: Transcript) -> str:
    return f"Session id: {transcript.session_id}\n\nTranscript:\n{transcript.text}"


def chat_body(transcript: Transcript) -> dict[str, Any]:
    """The ``/v1/chat/completions`` request body for one session (also a Batch API line's ``body``)."""
    return {
        "model": transcript.model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(transcript)},
        ],
        "temperature": TEMPERATURE,
        "response_format": {"type": "json_object"},
    }
