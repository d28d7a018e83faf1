"""Chat transcripts as the feeds serve them, parsed into ordered messages.

A transcript is plain text. A message starts on a line with an optional ``[DD.MM.YYYY HH:mm:ss]`` timestamp
and a role prefix::

    [30.04.2025 11:38:14] User: Hello, I have a question
    about my contract.
    [30.04.2025 11:38:20] Assistant: Of course.

Rules (they fix the original's line-per-message parser, which split every wrapped line into a message of
its own):

* roles ``User:``, ``Assistant:`` and ``System:`` in any letter case, stored lower case; ``Agent:`` and
  ``Bot:`` are other feeds' names for the assistant and are stored as ``assistant``;
* a line without a role prefix continues the message before it (joined with ``\\n``), so wrapped and
  multi-paragraph messages stay whole; lines before the first role prefix form one message of role
  ``unknown``;
* a message whose content is empty (only whitespace) is dropped; positions count the kept messages 0..n-1;
* timestamps are wall-clock times of the company's time zone and come back as aware UTC; a bracket that
  looks like a timestamp but is not a real date (``[31.02.2025 10:00:00]``) still marks the message start,
  with no timestamp;
* lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only (not at the other characters ``str.splitlines`` breaks on,
  which may appear inside a message).

The parser never raises: any text yields some list of messages, possibly empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

ROLE_ALIASES: dict[str, str] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "agent": "assistant",
    "bot": "assistant",
}
UNKNOWN_ROLE = "unknown"
TIME_FORMAT = "%d.%m.%Y %H:%M:%S"  # the feeds' DD.MM.YYYY HH:mm:ss

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MESSAGE_START = re.compile(
    r"^[ \t]*(?:\[(?P<ts>\d{1,2}\.\d{1,2}\.\d{4}[ \t]+\d{1,2}:\d{2}:\d{2})\][ \t]*)?"
    r"(?P<role>" + "|".join(ROLE_ALIASES) + r")[ \t]*:",
    re.IGNORECASE,
)
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class ParsedMessage:
    position: int
    role: str
    content: str
    timestamp: datetime | None  # aware UTC, or None when the line had no (valid) timestamp


def parse_local_time(raw: str, zone: tzinfo) -> datetime | None:
    """``DD.MM.YYYY HH:mm:ss`` read as wall-clock time in ``zone``, as aware UTC; None if it is not one.

    Wall-clock times that occur twice (the autumn DST hour) read as the first occurrence (``fold=0``);
    times skipped by the spring jump read with the offset before the jump, as zoneinfo does.
    """
    try:
        local = datetime.strptime(_SPACES.sub(" ", raw.strip()), TIME_FORMAT)
    except ValueError:
        return None
    return to_utc(local, zone)


def to_utc(local: datetime, zone: tzinfo, *, fold: int = 0) -> datetime | None:
    """A naive wall-clock time in ``zone`` as aware UTC; None when it falls outside datetime's range."""
    try:
        return local.replace(tzinfo=zone, fold=fold).astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 / 9999 shifted past the representable range
        return None


def parse_transcript(text: str, zone: tzinfo = UTC) -> list[ParsedMessage]:
    """The messages of ``text`` in order; timestamps read in ``zone`` (the company's time zone)."""
    drafts: list[tuple[str, datetime | None, list[str]]] = []
    for line in _LINE_BREAK.split(text):
        start = _MESSAGE_START.match(line)
        if start is None:
            if drafts:
                drafts[-1][2].append(line)
            else:
                drafts.append((UNKNOWN_ROLE, None, [line]))
            continue
        raw_time = start.group("ts")
        timestamp = parse_local_time(raw_time, zone) if raw_time else None
        role = ROLE_ALIASES[start.group("role").lower()]
        drafts.append((role, timestamp, [line[start.end() :]]))

    messages: list[ParsedMessage] = []
    for role, timestamp, lines in drafts:
        content = "\n".join(lines).strip()
        if content:
            messages.append(ParsedMessage(len(messages), role, content, timestamp))
    return messages


def render_transcript(messages: list[ParsedMessage], zone: tzinfo = UTC) -> str:
    """The inverse of :func:`parse_transcript` for well-formed messages (tests and demo data use it)."""
    lines: list[str] = []
    for message in messages:
        prefix = ""
        if message.timestamp is not None:
            prefix = f"[{message.timestamp.astimezone(zone).strftime(TIME_FORMAT)}] "
        lines.append(f"{prefix}{message.role.capitalize()}: {message.content}")
    return "\n".join(lines)
