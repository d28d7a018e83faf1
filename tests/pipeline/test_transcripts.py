"""The transcript parser: message starts, continuation lines, roles, timestamps in the company's zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.transcripts import ParsedMessage, parse_local_time, parse_transcript, render_transcript

BERLIN = ZoneInfo("Europe/Berlin")


def test_messages_with_timestamps_roles_and_continuations() -> None:
    text = (
        "[30.04.2025 11:38:14] User: Hello, I have a question\n"
        "about my contract.\n"
        "\n"
        "It is urgent.\r\n"
        "[30.04.2025 11:38:20] ASSISTANT:   Of course.  \n"
        "system: note\n"
        "Agent: I am the agent\n"
        "bot : and the bot\n"
    )
    got = parse_transcript(text, BERLIN)
    assert [(m.position, m.role, m.content) for m in got] == [
        (0, "user", "Hello, I have a question\nabout my contract.\n\nIt is urgent."),
        (1, "assistant", "Of course."),
        (2, "system", "note"),
        (3, "assistant", "I am the agent"),
        (4, "assistant", "and the bot"),
    ]
    # Berlin is UTC+2 in April (CEST): wall-clock 11:38:14 is 09:38:14Z.
    assert got[0].timestamp == datetime(2025, 4, 30, 9, 38, 14, tzinfo=UTC)
    assert got[1].timestamp == datetime(2025, 4, 30, 9, 38, 20, tzinfo=UTC)
    assert got[2].timestamp is None


def test_leading_lines_become_one_unknown_message() -> None:
    got = parse_transcript("Transcript export\nsecond header line\nUser: hi")
    assert [(m.role, m.content) for m in got] == [("unknown", "Transcript export\nsecond header line"), ("user", "hi")]


def test_empty_messages_are_skipped_and_positions_stay_contiguous() -> None:
    got = parse_transcript("User:   \nAssistant:\n\nUser: real\n   \n")
    assert [(m.position, m.role, m.content) for m in got] == [(0, "user", "real")]
    assert parse_transcript("") == []
    assert parse_transcript("\n \r\n\t") == []


def test_a_role_word_inside_a_line_or_an_unknown_role_is_not_a_message_start() -> None:
    got = parse_transcript("User: see\nthe User: field\nCustomer: hello\n[note] User: x")
    assert [(m.role, m.content) for m in got] == [("user", "see\nthe User: field\nCustomer: hello\n[note] User: x")]


def test_an_impossible_timestamp_still_starts_a_message_without_a_time() -> None:
    got = parse_transcript("[31.02.2025 10:00:00] User: a\n[1.5.2025 9:03:04] User: b", ZoneInfo("UTC"))
    assert [(m.content, m.timestamp) for m in got] == [
        ("a", None),
        ("b", datetime(2025, 5, 1, 9, 3, 4, tzinfo=UTC)),
    ]


def test_local_times_follow_the_zone_across_dst() -> None:
    # Winter: CET = UTC+1; summer: CEST = UTC+2; the server's own zone plays no part.
    assert parse_local_time("15.01.2025 12:00:00", BERLIN) == datetime(2025, 1, 15, 11, 0, tzinfo=UTC)
    assert parse_local_time("15.07.2025 12:00:00", BERLIN) == datetime(2025, 7, 15, 10, 0, tzinfo=UTC)
    assert parse_local_time("30.04.2025 11:38:14", ZoneInfo("UTC")) == datetime(2025, 4, 30, 11, 38, 14, tzinfo=UTC)
    assert parse_local_time("2025-04-30 11:38:14", BERLIN) is None
    assert parse_local_time("", BERLIN) is None


# ---------------------------------------------------------------------------------------------- properties

_START = re.compile(r"^[ \t]*(\[[^\]]*\][ \t]*)?(user|assistant|system|agent|bot)[ \t]*:", re.IGNORECASE)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises_and_positions_are_contiguous(text: str) -> None:
    got = parse_transcript(text, BERLIN)
    assert [m.position for m in got] == list(range(len(got)))
    assert all(m.content and m.content == m.content.strip() for m in got)
    assert all(m.role in {"user", "assistant", "system", "unknown"} for m in got)
    assert all(m.timestamp is None or m.timestamp.utcoffset() is not None for m in got)


_line = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), min_size=0, max_size=40
).filter(lambda line: _START.match(line) is None)
_content = (
    st.lists(_line, min_size=1, max_size=4)
    .map(lambda lines: "\n".join(lines).strip())
    .filter(lambda content: content != "" and _START.match(content) is None)
)
_timestamp = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC)
    ),
)
_message = st.tuples(st.sampled_from(["user", "assistant", "system"]), _content, _timestamp)
_recent = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)
_zone_message = st.tuples(st.sampled_from(["user", "assistant", "system"]), _content, st.one_of(st.none(), _recent))


@settings(max_examples=200, deadline=None)
@given(st.lists(_message, max_size=8))
def test_rendered_messages_parse_back_to_the_same_messages(drafts: list[tuple[str, str, datetime | None]]) -> None:
    original = [ParsedMessage(i, role, content, ts) for i, (role, content, ts) in enumerate(drafts)]
    assert parse_transcript(render_transcript(original)) == original


@settings(max_examples=100, deadline=None)
@given(st.lists(_zone_message, min_size=1, max_size=5))
def test_round_trip_in_a_company_zone(drafts: list[tuple[str, str, datetime | None]]) -> None:
    # Times rendered in Tokyo (no DST since 1951, so every wall-clock time is unambiguous) come back the same.
    tokyo = ZoneInfo("Asia/Tokyo")
    original = [ParsedMessage(i, role, content, ts) for i, (role, content, ts) in enumerate(drafts)]
    assert parse_transcript(render_transcript(original, tokyo), tokyo) == original
