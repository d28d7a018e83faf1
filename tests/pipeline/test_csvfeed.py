"""The CSV feed parser: columns, quoting, times, numbers, line numbers; and property tests on arbitrary input."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.csvfeed import COLUMN_COUNT, COLUMNS, is_feed_time, parse_feed

GOOD = [
    "s-1",
    "30.04.2025 11:38:14",
    "30.04.2025 11:40:00",
    "31.176.221.57",
    "BA",
    "english",
    "3",
    "happy",
    "no",
    "yes",
    "transcripts/s-1.txt",
    "2.5",
    "1200",
    "0.024",
    "Onboarding",
    "Hello, I start on Monday",
]


def line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def quoted_line(fields: list[str]) -> str:
    """Every field quoted: Python's writer leaves a lone \\r unquoted with a \\n terminator (invalid CSV)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(fields)
    return out.getvalue()


def with_(index: int, value: str, base: list[str] = GOOD) -> list[str]:
    fields = list(base)
    fields[index] = value
    return fields


def test_a_good_row_is_read_by_position() -> None:
    result = parse_feed(line(GOOD))
    assert result.rejections == []
    (row,) = result.rows
    assert row.line_number == 1
    assert row.values == {
        "external_session_id": "s-1",
        "start_time_raw": "30.04.2025 11:38:14",
        "end_time_raw": "30.04.2025 11:40:00",
        "ip_address": "31.176.221.57",
        "country_code": "BA",
        "language": "english",
        "messages_sent": 3,
        "sentiment_raw": "happy",
        "escalated_raw": "no",
        "forwarded_hr_raw": "yes",
        "full_transcript_url": "transcripts/s-1.txt",
        "avg_response_time_seconds": 2.5,
        "tokens": 1200,
        "tokens_eur": 0.024,
        "category": "Onboarding",
        "initial_message": "Hello, I start on Monday",
    }


def test_zeros_stay_zero_and_empty_fields_are_none() -> None:
    fields = with_(6, "0", with_(11, "0.0", with_(12, "0", with_(13, "0"))))
    fields = with_(3, "", with_(7, "", with_(15, "", fields)))
    (row,) = parse_feed(line(fields)).rows
    assert row.values["messages_sent"] == 0 and row.values["tokens"] == 0
    assert row.values["avg_response_time_seconds"] == 0.0 and row.values["tokens_eur"] == 0.0
    assert row.values["ip_address"] is None and row.values["sentiment_raw"] is None
    assert row.values["initial_message"] is None


def test_fields_are_trimmed_and_quoted_fields_keep_commas_quotes_and_line_breaks() -> None:
    text = (
        "  s-1 , 30.04.2025 11:38:14 ,30.04.2025 11:40:00,1.2.3.4,NL,dutch, 3 ,happy,no,no,,,,,Salary,"
        '"Hi, I said ""hello""\nand then more"\n' + line(with_(0, "s-2"))
    )
    result = parse_feed(text)
    assert result.rejections == []
    first, second = result.rows
    assert first.values["external_session_id"] == "s-1"
    assert first.values["start_time_raw"] == "30.04.2025 11:38:14"
    assert first.values["messages_sent"] == 3
    assert first.values["initial_message"] == 'Hi, I said "hello"\nand then more'
    assert (first.line_number, second.line_number) == (1, 3)  # the quoted break spans lines 1-2


def test_blank_lines_and_rows_of_empty_columns_are_skipped_and_line_numbers_count_them() -> None:
    text = "\n   \n" + line(GOOD) + ",,,,,,,,,,,,,,,\n\r\n" + line(with_(0, "s-2")).replace("\n", "\r\n")
    result = parse_feed(text)
    assert result.rejections == []
    assert [(r.line_number, r.external_session_id) for r in result.rows] == [(3, "s-1"), (6, "s-2")]


def test_column_count_rules() -> None:
    text = (
        line(GOOD[:15])  # one short
        + line([*with_(0, "s-2"), "", " "])  # trailing empty columns: tolerated
        + line([*with_(0, "s-3"), "surprise"])  # a non-empty extra column: refused
        + line(with_(0, "s-4"))
    )
    result = parse_feed(text)
    assert [r.external_session_id for r in result.rows] == ["s-2", "s-4"]
    assert [(r.line_number, r.reason) for r in result.rejections] == [
        (1, f"expected {COLUMN_COUNT} columns, found 15"),
        (3, f"expected {COLUMN_COUNT} columns, found 17 (the extra ones are not empty)"),
    ]
    assert result.rejections[0].raw_line == line(GOOD[:15]).rstrip("\n")


def test_bad_dates_reject_the_row_naming_the_column() -> None:
    text = line(with_(1, "31.02.2025 10:00:00")) + line(with_(0, "s-2", with_(2, "2025-04-30 11:40:00")))
    text += line(with_(0, "s-3", with_(1, "29.02.2024 23:59:59")))  # a real leap day
    result = parse_feed(text)
    assert [r.external_session_id for r in result.rows] == ["s-3"]
    first, second = result.rejections
    assert first.line_number == 1 and "start_time_raw" in first.reason and "31.02.2025" in first.reason
    assert second.line_number == 2 and "end_time_raw" in second.reason


def test_time_validation() -> None:
    assert is_feed_time("01.01.2025 00:00:00") and is_feed_time("1.1.2025 0:00:00")
    assert not is_feed_time("32.01.2025 10:00:00")
    assert not is_feed_time("01.13.2025 10:00:00")
    assert not is_feed_time("01.01.2025 24:00:00")
    assert not is_feed_time("01.01.2025")
    assert not is_feed_time("")


def test_bad_numbers_reject_the_row_naming_the_column() -> None:
    cases = {
        6: ("twelve", "messages_sent"),
        11: ("fast", "avg_response_time_seconds"),
        12: ("-5", "tokens"),
        13: ("nan", "tokens_eur"),
    }
    text = "".join(line(with_(0, f"s-{i}", with_(i, bad))) for i, (bad, _) in cases.items())
    text += line(with_(0, "ok", with_(6, "12.0", with_(12, "+7"))))
    result = parse_feed(text)
    assert [
        (r.line_number, name in r.reason) for r, (_, name) in zip(result.rejections, cases.values(), strict=True)
    ] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
    ]
    (row,) = result.rows
    assert row.values["messages_sent"] == 12 and row.values["tokens"] == 7


def test_values_the_database_would_refuse_are_rejected_not_sent() -> None:
    text = (
        line(with_(0, "x" * 256))
        + line(with_(0, "s-2", with_(4, "NLD!")))
        + line(with_(0, "s-3", with_(15, "a\x00b")))
        + line(with_(0, "s-4", with_(6, "99999999999")))
        + line(with_(0, ""))
        + line(with_(0, "s-6"))
    )
    result = parse_feed(text)
    assert [r.external_session_id for r in result.rows] == ["s-6"]
    reasons = [r.reason for r in result.rejections]
    assert "external_session_id" in reasons[0] and "255" in reasons[0]
    assert "country_code" in reasons[1]
    assert "initial_message" in reasons[2] and "NUL" in reasons[2]
    assert "messages_sent" in reasons[3]
    assert reasons[4] == "column external_session_id is empty"


def test_a_repeated_session_id_keeps_the_first_row() -> None:
    text = line(GOOD) + line(with_(0, "s-2")) + line(with_(5, "dutch"))
    result = parse_feed(text)
    assert [(r.line_number, r.values["language"]) for r in result.rows] == [
        (1, "english"),
        (2, None) if False else (2, "english"),
    ]
    (dup,) = result.rejections
    assert dup.line_number == 3 and "line 1" in dup.reason


def test_an_unterminated_quote_is_a_rejection() -> None:
    text = line(GOOD) + '"never closed,1,2\nmore text\n'
    result = parse_feed(text)
    assert [r.external_session_id for r in result.rows] == ["s-1"]
    (bad,) = result.rejections
    assert bad.line_number == 2 and bad.reason


# ------------------------------------------------------------------------------------------------ properties

ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=36)
times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.strftime("%d.%m.%Y %H:%M:%S")
)
free_text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
counts = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6))
amounts = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.25, 3.0, 1234.5]))


@st.composite
def good_rows(draw: st.DrawFn) -> list[str]:
    def num(value: float | None) -> str:
        return "" if value is None else str(value)

    return [
        draw(ids),
        draw(times),
        draw(times),
        draw(st.sampled_from(["", "10.0.0.1", "::1"])),
        draw(st.sampled_from(["", "NL", "DE"])),
        draw(free_text.map(lambda s: s[:100])),
        num(draw(counts)),
        draw(free_text.map(lambda s: s[:100])),
        draw(st.sampled_from(["", "yes", "no"])),
        draw(st.sampled_from(["", "yes", "no"])),
        draw(free_text),
        num(draw(amounts)),
        num(draw(counts)),
        num(draw(amounts)),
        draw(free_text.map(lambda s: s[:200])),
        draw(free_text),
    ]


# Junk lines cannot open a quoted field (no '"'), so they never swallow the good rows after them.
junk = st.text(alphabet=st.characters(exclude_characters='"\r\n\x1c\x1d\x1e\x85\u2028\u2029'), max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises_and_rejections_have_reasons(text: str) -> None:
    result = parse_feed(text)
    lines = max(1, text.count("\n") + text.count("\r") + 1)
    for rejection in result.rejections:
        assert rejection.reason
        assert 1 <= rejection.line_number <= lines
    for row in result.rows:
        assert 1 <= row.line_number <= lines
        assert set(row.values) == set(COLUMNS)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(good_rows(), st.lists(junk, max_size=2)), min_size=1, max_size=8))
def test_every_good_row_survives_bad_lines_mixed_in(blocks: list[tuple[list[str], list[str]]]) -> None:
    text = ""
    expected: dict[str, list[str]] = {}
    for row, bad_lines in blocks:
        if row[0] in expected:
            continue
        text += "".join(bad + "\n" for bad in bad_lines)
        text += quoted_line(row)
        expected[row[0]] = row
    result = parse_feed(text)
    got = {r.external_session_id: r for r in result.rows}
    assert set(expected) <= set(got)  # a junk line can at most add rows, never hide one
    for session_id, fields in expected.items():
        values = got[session_id].values
        assert values["start_time_raw"] == fields[1]
        assert values["messages_sent"] == (int(fields[6]) if fields[6] else None)
        assert values["tokens_eur"] == (float(fields[13]) if fields[13] else None)
        assert values["initial_message"] == (fields[15].strip() or None)
    for rejection in result.rejections:
        assert rejection.reason and rejection.line_number >= 1
