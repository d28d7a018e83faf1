"""The companies' session feed: a header-less CSV of 16 positional columns, parsed into rows and rejections.

Format (reference §2.1): comma-delimited, no header, RFC 4180 quoting (a quoted field may hold commas, doubled
quotes and line breaks), every field trimmed of surrounding whitespace. Columns by position:

    0 external_session_id   4 country_code   8 escalated_raw      12 tokens
    1 start_time_raw        5 language       9 forwarded_hr_raw   13 tokens_eur
    2 end_time_raw          6 messages_sent  10 full_transcript_url  14 category
    3 ip_address            7 sentiment_raw  11 avg_response_time_seconds  15 initial_message

Decisions (each keeps good rows and says exactly why a bad one was refused):

* Blank lines, and lines whose fields are all empty (``,,,,`` rows that spreadsheet exports append), are skipped.
* A row must have exactly 16 columns. More are tolerated only when every extra column is empty (exports pad
  rows with trailing commas); a row with fewer columns, or with non-empty extra columns, is rejected: a shifted
  row would otherwise put values into the wrong fields.
* Column 0 is required. Columns 1 and 2 must be ``DD.MM.YYYY HH:mm:ss`` times of a real calendar date; the
  trimmed raw strings are stored, because the company's time zone is applied later, by import-processing.
* Numbers: ``messages_sent`` and ``tokens`` are whole numbers, ``avg_response_time_seconds`` and ``tokens_eur``
  decimals; none may be negative. ``0`` stays 0 (the original turned zeros into null, defect 8); an empty field
  is None; anything else rejects the row naming the column.
* Optional text fields are None when empty. Values longer than their database column, or containing a NUL
  character or text that cannot be encoded as UTF-8, reject the row: one such value would otherwise make the
  database refuse the whole batch it travels in.
* A session id seen earlier in the same feed rejects the later row (the first one is kept), so a batch never
  holds one session twice.

:func:`parse_feed` is pure and never raises: any text yields rows and rejections.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

COLUMNS: tuple[str, ...] = (
    "external_session_id",
    "start_time_raw",
    "end_time_raw",
    "ip_address",
    "country_code",
    "language",
    "messages_sent",
    "sentiment_raw",
    "escalated_raw",
    "forwarded_hr_raw",
    "full_transcript_url",
    "avg_response_time_seconds",
    "tokens",
    "tokens_eur",
    "category",
    "initial_message",
)
COLUMN_COUNT = len(COLUMNS)
INT_COLUMNS = {"messages_sent": 2**31 - 1, "tokens": 2**63 - 1}  # column -> largest value the database holds
# Longest value (characters) each text column holds; Text columns are capped at MariaDB's TEXT (65,535 bytes).
MAX_LENGTH: dict[str, int] = {
    "external_session_id": 255,
    "ip_address": 45,
    "country_code": 3,
    "language": 100,
    "sentiment_raw": 100,
    "escalated_raw": 20,
    "forwarded_hr_raw": 20,
    "category": 200,
}
MAX_TEXT_BYTES = 65_535

_TIME = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})[ \t]+(\d{1,2}):(\d{2}):(\d{2})$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True, slots=True)
class FeedRow:
    """One good row: its 1-based line number in the feed and its values keyed by column name."""

    line_number: int
    values: dict[str, Any]

    @property
    def external_session_id(self) -> str:
        return str(self.values["external_session_id"])


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused row: where it starts in the feed (1-based), why, and the raw text of the row."""

    line_number: int
    reason: str
    raw_line: str


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    rows: list[FeedRow]
    rejections: list[Rejection]


class _RowError(ValueError):
    """Why one row is refused; the message names the column."""


def is_feed_time(raw: str) -> bool:
    """True if ``raw`` is ``DD.MM.YYYY HH:mm:ss`` of a real date and time (no time zone is applied)."""
    if len(raw) == 19 and raw[2] == raw[5] == "." and raw[10] == " " and raw[13] == raw[16] == ":":
        digits = raw[:2] + raw[3:5] + raw[6:10] + raw[11:13] + raw[14:16] + raw[17:]
        if digits.isdigit() and digits.isascii():  # the canonical form, checked without a regex
            return _real_date(raw[:2], raw[3:5], raw[6:10]) and raw[11:13] < "24" and raw[14] < "6" and raw[17] < "6"
    match = _TIME.match(raw)
    if match is None:
        return False
    day, month, year, hour, minute, second = match.groups()
    return _real_date(day, month, year) and int(hour) < 24 and int(minute) < 60 and int(second) < 60


@lru_cache(maxsize=4096)
def _real_date(day: str, month: str, year: str) -> bool:
    """Cached: a feed's dates repeat far more than its times (this check was a fifth of the parse time)."""
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def parse_feed(text: str) -> ParsedFeed:
    """The good rows and the rejections of a feed, in file order. Never raises."""
    parser = FeedParser(text)
    rows = parser.take(None)
    return ParsedFeed(rows, parser.rejections)


class FeedParser:
    """The same parse, incrementally: :meth:`take` returns the next good rows, rejections accumulate.

    Lets an importer write one batch while the next is being parsed. Never raises.
    """

    def __init__(self, text: str) -> None:
        self._records = _records(text)
        self._first_seen: dict[str, int] = {}
        self.rejections: list[Rejection] = []
        self.done = False

    def take(self, limit: int | None, max_chars: int | None = None) -> list[FeedRow]:
        """Up to ``limit`` more good rows (all the rest when None), fewer once their lines hold ``max_chars``
        characters; an empty list once the feed is exhausted."""
        rows: list[FeedRow] = []
        chars = 0
        for line_number, raw, fields, error in self._records:
            if error is not None:
                self.rejections.append(Rejection(line_number, error, raw))
                continue
            trimmed = [field.strip() for field in fields]
            if not any(trimmed):
                continue  # a blank line or a row of empty columns
            try:
                values = _row_values(trimmed)
            except _RowError as exc:
                self.rejections.append(Rejection(line_number, str(exc), raw))
                continue
            session_id = values["external_session_id"]
            earlier = self._first_seen.get(session_id)
            if earlier is not None:
                reason = f"session id {_show(session_id)} already appeared on line {earlier}; the first row is kept"
                self.rejections.append(Rejection(line_number, reason, raw))
                continue
            self._first_seen[session_id] = line_number
            rows.append(FeedRow(line_number, values))
            chars += len(raw)
            if (limit is not None and len(rows) >= limit) or (max_chars is not None and chars >= max_chars):
                return rows
        self.done = True
        return rows


def _records(text: str) -> Iterator[tuple[int, str, list[str], str | None]]:
    """(first line number, raw text, fields, error) per CSV record; a malformed record has an error and no fields.

    Lines are fed to the csv module one at a time so that each record's raw text and starting line are known
    even when a quoted field spans several lines.
    """
    consumed: list[str] = []
    lines = iter(io.StringIO(text, newline=""))  # splits at \n, \r\n and \r, keeping them (quoted breaks survive)

    def feeder() -> Iterator[str]:
        for line in lines:
            consumed.append(line)
            yield line

    source = feeder()
    next_line = 1
    while True:
        reader = csv.reader(source, skipinitialspace=True, strict=False)
        try:
            for fields in reader:
                raw = "".join(consumed).rstrip("\r\n")
                yield next_line, raw, fields, None
                next_line += len(consumed)
                consumed.clear()
            return
        except csv.Error as exc:
            if not consumed:  # nothing was read: the error cannot repeat on the same input, but never loop
                return
            raw = "".join(consumed).rstrip("\r\n")
            yield next_line, raw, [], f"malformed CSV: {exc}"
            next_line += len(consumed)
            consumed.clear()
            # A fresh reader continues with the next line; the shared line iterator remembers the position.


_LIMITED = tuple((COLUMNS.index(name), name, limit) for name, limit in MAX_LENGTH.items())
_LONG_CHARS = MAX_TEXT_BYTES // 4  # shorter text cannot exceed MAX_TEXT_BYTES in UTF-8


def _row_values(fields: list[str]) -> dict[str, Any]:
    """The typed values of one row's trimmed fields. Written for speed: this runs once per feed line."""
    if len(fields) != COLUMN_COUNT:
        if len(fields) < COLUMN_COUNT:
            raise _RowError(f"expected {COLUMN_COUNT} columns, found {len(fields)}")
        if any(fields[COLUMN_COUNT:]):
            raise _RowError(f"expected {COLUMN_COUNT} columns, found {len(fields)} (the extra ones are not empty)")
        fields = fields[:COLUMN_COUNT]
    joined = "".join(fields)
    if "\x00" in joined or not joined.isascii() or len(joined) > _LONG_CHARS:
        for name, field in zip(COLUMNS, fields, strict=True):  # the slow path finds the column to blame
            _check_text(name, field)
    for index, name, limit in _LIMITED:
        if len(fields[index]) > limit:
            raise _RowError(f"column {name} is {len(fields[index])} characters long; at most {limit} fit")
    sid, start, end, ip, country, language, messages, sentiment, esc, fwd, url, avg, tokens, eur, cat, first = fields
    if not sid:
        raise _RowError("column external_session_id is empty")
    if not is_feed_time(start):
        raise _RowError(f"column start_time_raw: {_show(start)} is not a DD.MM.YYYY HH:mm:ss date and time")
    if not is_feed_time(end):
        raise _RowError(f"column end_time_raw: {_show(end)} is not a DD.MM.YYYY HH:mm:ss date and time")
    return {
        "external_session_id": sid,
        "start_time_raw": start,
        "end_time_raw": end,
        "ip_address": ip or None,
        "country_code": country or None,
        "language": language or None,
        "messages_sent": _parse_int("messages_sent", messages),
        "sentiment_raw": sentiment or None,
        "escalated_raw": esc or None,
        "forwarded_hr_raw": fwd or None,
        "full_transcript_url": url or None,
        "avg_response_time_seconds": _parse_float("avg_response_time_seconds", avg),
        "tokens": _parse_int("tokens", tokens),
        "tokens_eur": _parse_float("tokens_eur", eur),
        "category": cat or None,
        "initial_message": first or None,
    }


def _check_text(name: str, field: str) -> None:
    if "\x00" in field:
        raise _RowError(f"column {name} contains a NUL character")
    try:
        size = len(field.encode("utf-8"))
    except UnicodeEncodeError:
        raise _RowError(f"column {name} contains text that is not valid Unicode") from None
    limit = MAX_LENGTH.get(name)
    if limit is not None and len(field) > limit:
        raise _RowError(f"column {name} is {len(field)} characters long; at most {limit} fit")
    if size > MAX_TEXT_BYTES:
        raise _RowError(f"column {name} is {size} bytes long; at most {MAX_TEXT_BYTES} fit")


def _parse_int(name: str, field: str) -> int | None:
    if not field:
        return None
    largest = INT_COLUMNS[name]
    if field.isdigit() and field.isascii() and len(field) < 10:  # the common case, and surely in range
        return int(field)
    if len(field) > 40:  # also keeps int() clear of its 4,300-digit conversion limit
        raise _RowError(f"column {name}: {_show(field)} is too long for a whole number")
    if _INT.match(field):
        value = int(field)
    elif _FLOAT.match(field) and float(field).is_integer():  # "12.0" from spreadsheets is still 12
        value = int(float(field))
    else:
        raise _RowError(f"column {name}: {_show(field)} is not a whole number")
    if value < 0:
        raise _RowError(f"column {name}: {value} is negative")
    if value > largest:
        raise _RowError(f"column {name}: {_show(field)} is larger than {largest}")
    return value


def _parse_float(name: str, field: str) -> float | None:
    if not field:
        return None
    if field.replace(".", "", 1).isdigit() and field.isascii():  # plain decimals: no sign, exponent or words
        return float(field)
    if not _FLOAT.match(field):
        raise _RowError(f"column {name}: {_show(field)} is not a number")
    value = float(field)
    if not math.isfinite(value):
        raise _RowError(f"column {name}: {_show(field)} is out of range")
    if value < 0:
        raise _RowError(f"column {name}: {_show(field)} is negative")
    return value


def _show(value: str, limit: int = 40) -> str:
    """A value quoted for a message: shortened, and escaped by repr (control characters stay visible)."""
    return repr(value if len(value) <= limit else value[:limit] + "…")
