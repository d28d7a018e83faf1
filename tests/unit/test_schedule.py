"""Tests for services.schedule: parsing, interval anchoring, missed runs, describe() and above all DST.

Expected instants are written out by hand. 2025 transitions used below (UTC):
  Europe/Berlin        CET +1 / CEST +2. Spring 03-30 01:00 (02:00 CET -> 03:00 CEST, wall 02:xx skipped);
                       autumn 10-26 01:00 (03:00 CEST -> 02:00 CET, wall 02:xx twice: 00:xx and 01:xx UTC).
  America/New_York     EST -5 / EDT -4. Spring 03-09 07:00 (02:00 EST -> 03:00 EDT, wall 02:xx skipped);
                       autumn 11-02 06:00 (02:00 EDT -> 01:00 EST, wall 01:xx twice: 05:xx and 06:xx UTC).
  Australia/Lord_Howe  LHST +10:30 / LHDT +11. Spring 10-04 15:30 (local Sun 10-05 02:00 LHST -> 02:30 LHDT,
                       wall 02:00-02:29 skipped); autumn 04-05 15:00 (local Sun 04-06 02:00 LHDT -> 01:30
                       LHST, wall 01:30-01:59 twice: 14:30-14:59 and 15:00-15:29 UTC).
  America/Santiago     -3 / -4, switching at local midnight. Spring 09-07 04:00 (00:00 -4 -> 01:00 -3, wall
                       00:xx of 09-07 skipped); autumn 04-06 03:00 (00:00 -3 -> 23:00 -4 of 04-05 again).
"""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.schedule import (
    MISSED_CAP,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    ScheduleError,
    parse_duration,
    parse_schedule,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


ANCHOR = utc(2025, 1, 1)  # cron ignores the anchor; any value will do


def fires(expression: str, tz: str, after: datetime, count: int) -> list[datetime]:
    """``count`` consecutive fire times, each computed from the previous one like the runner does."""
    schedule = parse_schedule(expression, tz)
    out = []
    for _ in range(count):
        after = schedule.next_fire(after, ANCHOR)
        out.append(after)
    return out


# ------------------------------------------------------------------------------------------ DST matrix

DST_MATRIX = [
    # ---- Europe/Berlin, spring forward (03-30 01:00 UTC) ----
    pytest.param(
        "Europe/Berlin", "0 * * * *", utc(2025, 3, 29, 22, 30),
        [
            utc(2025, 3, 29, 23),  # 00:00 CET
            utc(2025, 3, 30, 0),  # 01:00 CET
            utc(2025, 3, 30, 1),  # 03:00 CEST (02:00 does not exist): still one real hour later
            utc(2025, 3, 30, 2),  # 04:00 CEST
        ],
        id="berlin-spring-hourly",
    ),
    pytest.param(
        "Europe/Berlin", "30 2 * * *", utc(2025, 3, 28, 12),
        [
            utc(2025, 3, 29, 1, 30),  # 02:30 CET
            utc(2025, 3, 30, 1, 0),  # 02:30 skipped -> once, right after the jump: 03:00 CEST
            utc(2025, 3, 31, 0, 30),  # 02:30 CEST
        ],
        id="berlin-spring-daily",
    ),
    pytest.param(
        "Europe/Berlin", "*/15 * * * *", utc(2025, 3, 30, 0, 20),
        [
            utc(2025, 3, 30, 0, 30),  # 01:30 CET
            utc(2025, 3, 30, 0, 45),  # 01:45 CET
            utc(2025, 3, 30, 1, 0),  # 03:00 CEST: 15 real minutes later
            utc(2025, 3, 30, 1, 15),  # 03:15 CEST
        ],
        id="berlin-spring-15min",
    ),
    # ---- Europe/Berlin, fall back (10-26 01:00 UTC) ----
    pytest.param(
        "Europe/Berlin", "0 * * * *", utc(2025, 10, 25, 22, 30),
        [
            utc(2025, 10, 25, 23),  # 01:00 CEST
            utc(2025, 10, 26, 0),  # 02:00 CEST (first pass)
            utc(2025, 10, 26, 1),  # 02:00 CET (second pass)
            utc(2025, 10, 26, 2),  # 03:00 CET
            utc(2025, 10, 26, 3),  # 04:00 CET
        ],
        id="berlin-fall-hourly",
    ),
    pytest.param(
        "Europe/Berlin", "30 2 * * *", utc(2025, 10, 24, 12),
        [
            utc(2025, 10, 25, 0, 30),  # 02:30 CEST
            utc(2025, 10, 26, 0, 30),  # 02:30 CEST, first pass only (not again at 01:30 UTC)
            utc(2025, 10, 27, 1, 30),  # 02:30 CET
        ],
        id="berlin-fall-daily",
    ),
    pytest.param(
        "Europe/Berlin", "*/15 * * * *", utc(2025, 10, 25, 23, 50),
        # 02:00..02:45 CEST, then 02:00..02:45 CET, then 03:00 CET: every 15 real minutes
        [utc(2025, 10, 26, 0) + timedelta(minutes=15 * k) for k in range(9)],
        id="berlin-fall-15min",
    ),
    # ---- America/New_York, spring forward (03-09 07:00 UTC) ----
    pytest.param(
        "America/New_York", "0 * * * *", utc(2025, 3, 9, 4, 30),
        [
            utc(2025, 3, 9, 5),  # 00:00 EST
            utc(2025, 3, 9, 6),  # 01:00 EST
            utc(2025, 3, 9, 7),  # 03:00 EDT (02:00 does not exist)
            utc(2025, 3, 9, 8),  # 04:00 EDT
        ],
        id="newyork-spring-hourly",
    ),
    pytest.param(
        "America/New_York", "30 2 * * *", utc(2025, 3, 7, 12),
        [
            utc(2025, 3, 8, 7, 30),  # 02:30 EST
            utc(2025, 3, 9, 7, 0),  # 02:30 skipped -> 03:00 EDT
            utc(2025, 3, 10, 6, 30),  # 02:30 EDT
        ],
        id="newyork-spring-daily",
    ),
    pytest.param(
        "America/New_York", "*/15 * * * *", utc(2025, 3, 9, 6, 20),
        [
            utc(2025, 3, 9, 6, 30),  # 01:30 EST
            utc(2025, 3, 9, 6, 45),  # 01:45 EST
            utc(2025, 3, 9, 7, 0),  # 03:00 EDT
            utc(2025, 3, 9, 7, 15),  # 03:15 EDT
        ],
        id="newyork-spring-15min",
    ),
    # ---- America/New_York, fall back (11-02 06:00 UTC) ----
    pytest.param(
        "America/New_York", "0 * * * *", utc(2025, 11, 2, 3, 30),
        [
            utc(2025, 11, 2, 4),  # 00:00 EDT
            utc(2025, 11, 2, 5),  # 01:00 EDT (first pass)
            utc(2025, 11, 2, 6),  # 01:00 EST (second pass)
            utc(2025, 11, 2, 7),  # 02:00 EST
            utc(2025, 11, 2, 8),  # 03:00 EST
        ],
        id="newyork-fall-hourly",
    ),
    pytest.param(
        "America/New_York", "30 1 * * *", utc(2025, 10, 31, 12),
        [
            utc(2025, 11, 1, 5, 30),  # 01:30 EDT
            utc(2025, 11, 2, 5, 30),  # 01:30 EDT, first pass only (not again at 06:30 UTC)
            utc(2025, 11, 3, 6, 30),  # 01:30 EST
        ],
        id="newyork-fall-daily",
    ),
    pytest.param(
        "America/New_York", "*/15 * * * *", utc(2025, 11, 2, 4, 50),
        # 01:00..01:45 EDT, 01:00..01:45 EST, 02:00 EST
        [utc(2025, 11, 2, 5) + timedelta(minutes=15 * k) for k in range(9)],
        id="newyork-fall-15min",
    ),
    # ---- Australia/Lord_Howe, spring forward by 30 minutes (10-04 15:30 UTC) ----
    pytest.param(
        "Australia/Lord_Howe", "0 * * * *", utc(2025, 10, 4, 12, 30),
        [
            utc(2025, 10, 4, 13, 30),  # 00:00 LHST (+10:30)
            utc(2025, 10, 4, 14, 30),  # 01:00 LHST
            utc(2025, 10, 4, 16, 0),  # 03:00 LHDT (+11); 02:00 does not exist, so no :00 for 1.5h
            utc(2025, 10, 4, 17, 0),  # 04:00 LHDT
        ],
        id="lordhowe-spring-hourly",
    ),
    pytest.param(
        "Australia/Lord_Howe", "15 2 * * *", utc(2025, 10, 3, 12),
        [
            utc(2025, 10, 3, 15, 45),  # 02:15 LHST (local 10-04)
            utc(2025, 10, 4, 15, 30),  # 02:15 skipped -> right after the jump: 02:30 LHDT
            utc(2025, 10, 5, 15, 15),  # 02:15 LHDT (local 10-06)
        ],
        id="lordhowe-spring-daily",
    ),
    pytest.param(
        "Australia/Lord_Howe", "*/15 * * * *", utc(2025, 10, 4, 14, 50),
        [
            utc(2025, 10, 4, 15, 0),  # 01:30 LHST
            utc(2025, 10, 4, 15, 15),  # 01:45 LHST
            utc(2025, 10, 4, 15, 30),  # 02:30 LHDT (02:00 and 02:15 do not exist)
            utc(2025, 10, 4, 15, 45),  # 02:45 LHDT
        ],
        id="lordhowe-spring-15min",
    ),
    # ---- Australia/Lord_Howe, fall back by 30 minutes (04-05 15:00 UTC) ----
    pytest.param(
        "Australia/Lord_Howe", "0 * * * *", utc(2025, 4, 5, 12, 30),
        [
            utc(2025, 4, 5, 13, 0),  # 00:00 LHDT (+11)
            utc(2025, 4, 5, 14, 0),  # 01:00 LHDT
            utc(2025, 4, 5, 15, 30),  # 02:00 LHST (+10:30); the repeated half hour holds no :00
            utc(2025, 4, 5, 16, 30),  # 03:00 LHST
        ],
        id="lordhowe-fall-hourly",
    ),
    pytest.param(
        "Australia/Lord_Howe", "45 1 * * *", utc(2025, 4, 4, 12),
        [
            utc(2025, 4, 4, 14, 45),  # 01:45 LHDT (local 04-05)
            utc(2025, 4, 5, 14, 45),  # 01:45 LHDT, first pass only (not again at 15:15 UTC)
            utc(2025, 4, 6, 15, 15),  # 01:45 LHST (local 04-07)
        ],
        id="lordhowe-fall-daily",
    ),
    pytest.param(
        "Australia/Lord_Howe", "*/15 * * * *", utc(2025, 4, 5, 14, 20),
        [
            utc(2025, 4, 5, 14, 30),  # 01:30 LHDT
            utc(2025, 4, 5, 14, 45),  # 01:45 LHDT
            utc(2025, 4, 5, 15, 0),  # 01:30 LHST (second pass)
            utc(2025, 4, 5, 15, 15),  # 01:45 LHST
            utc(2025, 4, 5, 15, 30),  # 02:00 LHST
        ],
        id="lordhowe-fall-15min",
    ),
    # ---- America/Santiago: the transitions sit at midnight, so a whole date is affected ----
    pytest.param(
        "America/Santiago", "0 0 * * *", utc(2025, 9, 5, 12),
        [
            utc(2025, 9, 6, 4),  # 09-06 00:00 -4
            utc(2025, 9, 7, 4),  # 09-07 00:00 skipped -> 01:00 -3, the first instant of that day
            utc(2025, 9, 8, 3),  # 09-08 00:00 -3
        ],
        id="santiago-spring-midnight",
    ),
    pytest.param(
        "America/Santiago", "30 23 * * *", utc(2025, 4, 4, 12),
        [
            utc(2025, 4, 5, 2, 30),  # 04-04 23:30 -3
            utc(2025, 4, 6, 2, 30),  # 04-05 23:30 -3, first pass only (not again at 03:30 UTC)
            utc(2025, 4, 7, 3, 30),  # 04-06 23:30 -4
        ],
        id="santiago-fall-late-evening",
    ),
]


@pytest.mark.parametrize(("tz", "expression", "after", "expected"), DST_MATRIX)
def test_dst_matrix(tz: str, expression: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(expression, tz, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("tz", "expression", "after", "expected"),
    [
        # Several wall times inside one gap collapse into a single run at the jump...
        pytest.param(
            "Europe/Berlin", "0,30 2 * * *", utc(2025, 3, 29, 12),
            [utc(2025, 3, 30, 1), utc(2025, 3, 31, 0), utc(2025, 3, 31, 0, 30)],
            id="two-times-in-gap",
        ),
        # ...and so does a gap time with the real wall time right after the gap (03:00 CEST == the jump).
        pytest.param(
            "Europe/Berlin", "0 2,3 * * *", utc(2025, 3, 29, 12),
            [utc(2025, 3, 30, 1), utc(2025, 3, 31, 0), utc(2025, 3, 31, 1)],
            id="gap-and-after-gap",
        ),
        # A fixed hour with a minute step fires on the first pass only.
        pytest.param(
            "Europe/Berlin", "*/30 2 * * *", utc(2025, 10, 25, 12),
            [utc(2025, 10, 26, 0), utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1), utc(2025, 10, 27, 1, 30)],
            id="fixed-hour-minute-step-fall",
        ),
        # A 6-field cron in the gap: 02:30:15 does not exist -> 03:00:00 CEST.
        pytest.param(
            "Europe/Berlin", "15 30 2 * * *", utc(2025, 3, 29, 12),
            [utc(2025, 3, 30, 1), utc(2025, 3, 31, 0, 30, 15)],
            id="seconds-cron-in-gap",
        ),
        # A seconds cron runs on both passes of the repeated hour (real elapsed time).
        pytest.param(
            "Europe/Berlin", "*/20 59 * * * *", utc(2025, 10, 26, 0, 30),
            [
                utc(2025, 10, 26, 0, 59, 0), utc(2025, 10, 26, 0, 59, 20), utc(2025, 10, 26, 0, 59, 40),
                utc(2025, 10, 26, 1, 59, 0), utc(2025, 10, 26, 1, 59, 20), utc(2025, 10, 26, 1, 59, 40),
                utc(2025, 10, 26, 2, 59, 0),
            ],
            id="seconds-cron-fall-both-passes",
        ),
        # Every-2-hours is fixed-time by the rule (its hour field does not cover every hour).
        pytest.param(
            "Europe/Berlin", "0 */2 * * *", utc(2025, 10, 25, 21, 30),
            # 00:00 CEST, 02:00 CEST (not again in CET), 04:00 CET
            [utc(2025, 10, 25, 22), utc(2025, 10, 26, 0), utc(2025, 10, 26, 3)],
            id="every-2-hours-fall",
        ),
    ],
)
def test_dst_edge_cases(tz: str, expression: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(expression, tz, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("tz", "expression", "after", "expected"),
    [
        # `after` in the second pass (02:07:30.5 CET): next is 02:15 CET, not 03:15 nor 02:15 CEST.
        ("Europe/Berlin", "*/15 * * * *", datetime(2025, 10, 26, 1, 7, 30, 500_000, UTC), utc(2025, 10, 26, 1, 15)),
        # `after` in the first pass (02:50 CEST): next is 02:00 CET, the start of the second pass.
        ("Europe/Berlin", "*/15 * * * *", utc(2025, 10, 26, 0, 50), utc(2025, 10, 26, 1)),
        # `after` in the second pass: the fixed-time job already ran on the first pass -> tomorrow.
        ("Europe/Berlin", "30 2 * * *", utc(2025, 10, 26, 1, 10), utc(2025, 10, 27, 1, 30)),
        # `after` in the first pass, before 02:30 CEST: still today, first pass.
        ("Europe/Berlin", "30 2 * * *", utc(2025, 10, 26, 0, 10), utc(2025, 10, 26, 0, 30)),
        # Lord Howe second pass (01:40 LHST) -> 01:45 LHST.
        ("Australia/Lord_Howe", "*/15 * * * *", utc(2025, 4, 5, 15, 10), utc(2025, 4, 5, 15, 15)),
        # Just before a jump, with microseconds.
        ("Europe/Berlin", "30 2 * * *", datetime(2025, 3, 30, 0, 59, 59, 999_999, UTC), utc(2025, 3, 30, 1)),
        # Exactly at the jump, which was the shifted run: the next run is tomorrow.
        ("Europe/Berlin", "30 2 * * *", utc(2025, 3, 30, 1), utc(2025, 3, 31, 0, 30)),
    ],
)
def test_next_fire_from_arbitrary_points(tz: str, expression: str, after: datetime, expected: datetime) -> None:
    assert parse_schedule(expression, tz).next_fire(after, ANCHOR) == expected


# ------------------------------------------------------------------------------- basic cron behaviour


def test_utc_is_the_default_timezone() -> None:
    schedule = parse_schedule("0 2 * * *")
    assert schedule.timezone == "UTC"
    assert schedule.next_fire(utc(2025, 6, 1, 2), ANCHOR) == utc(2025, 6, 2, 2)


def test_timezone_is_applied_and_result_is_utc() -> None:
    result = parse_schedule("0 9 * * *", "Asia/Kolkata").next_fire(utc(2025, 6, 1), ANCHOR)
    assert result == utc(2025, 6, 1, 3, 30)  # 09:00 IST (+5:30)
    assert result.tzinfo is UTC


def test_non_utc_aware_input_is_accepted() -> None:
    after = datetime(2025, 6, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 10:00 UTC
    assert parse_schedule("0 * * * *").next_fire(after, ANCHOR) == utc(2025, 6, 1, 11)


@pytest.mark.parametrize("schedule", [parse_schedule("0 * * * *"), parse_schedule("@every 1h")])
def test_naive_datetimes_are_rejected(schedule: Schedule) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_fire(datetime(2025, 1, 1), ANCHOR)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * * *", utc(2025, 6, 1, 12, 0, 3), [utc(2025, 6, 1, 12, 0, 5), utc(2025, 6, 1, 12, 0, 10)]),
        ("* * * * * *", utc(2025, 6, 1, 12, 0, 59), [utc(2025, 6, 1, 12, 1, 0), utc(2025, 6, 1, 12, 1, 1)]),
        # The FIRST field is seconds: 30 seconds past 12:00 daily, not "minute 30 ... second 12".
        ("30 0 12 * * *", utc(2025, 6, 1, 12), [utc(2025, 6, 1, 12, 0, 30), utc(2025, 6, 2, 12, 0, 30)]),
        (
            "0 0 * * * *",
            datetime(2025, 6, 1, 12, 0, 0, 1, UTC),
            [utc(2025, 6, 1, 13), utc(2025, 6, 1, 14)],
        ),
    ],
)
def test_six_field_cron_has_seconds_first(expression: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(expression, "UTC", after, len(expected)) == expected


@pytest.mark.parametrize(
    ("macro", "equivalent", "expected_first"),
    [
        ("@yearly", "0 0 1 1 *", utc(2026, 1, 1)),
        ("@annually", "0 0 1 1 *", utc(2026, 1, 1)),
        ("@monthly", "0 0 1 * *", utc(2025, 7, 1)),
        ("@weekly", "0 0 * * 0", utc(2025, 6, 8)),  # 2025-06-08 is a Sunday
        ("@daily", "0 0 * * *", utc(2025, 6, 2)),
        ("@midnight", "0 0 * * *", utc(2025, 6, 2)),
        ("@hourly", "0 * * * *", utc(2025, 6, 1, 13)),
        ("  @DAILY\n", "0 0 * * *", utc(2025, 6, 2)),  # trimmed, case-insensitive
    ],
)
def test_macros(macro: str, equivalent: str, expected_first: datetime) -> None:
    after = utc(2025, 6, 1, 12, 30)
    assert parse_schedule(macro).next_fire(after, ANCHOR) == expected_first
    assert fires(macro, "Europe/Berlin", after, 5) == fires(equivalent, "Europe/Berlin", after, 5)


def test_cron_dataclass_identity() -> None:
    a, b = parse_schedule(" */5 * * * * ", "Europe/Berlin"), parse_schedule("*/5 * * * *", "Europe/Berlin")
    assert isinstance(a, CronSchedule)
    assert a.expression == "*/5 * * * *"  # surrounding whitespace trimmed
    assert a == b
    assert hash(a) == hash(b)
    assert a != parse_schedule("*/5 * * * *", "UTC")
    with pytest.raises(AttributeError):
        a.expression = "x"  # type: ignore[misc]


def test_cron_can_be_constructed_directly() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert schedule.next_fire(utc(2025, 3, 29, 12), ANCHOR) == utc(2025, 3, 30, 1)
    with pytest.raises(ScheduleError, match=re.escape("'61 * * * *'")):
        CronSchedule("61 * * * *")


# ------------------------------------------------------------------------------------------- interval

A3 = utc(2025, 1, 10, 7, 13, 20)  # an arbitrary persisted anchor


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (A3 - timedelta(days=30), A3),  # before the anchor: the anchor itself is the first fire
        (A3 - timedelta(microseconds=1), A3),
        (A3, A3 + timedelta(days=3)),  # strictly after
        (A3 + timedelta(days=1), A3 + timedelta(days=3)),
        (A3 + timedelta(days=3) - timedelta(microseconds=1), A3 + timedelta(days=3)),
        (A3 + timedelta(days=3), A3 + timedelta(days=6)),
        # "restart" a week and some hours later: the rhythm is kept, no reset to after + 3d
        (A3 + timedelta(days=7, hours=5), A3 + timedelta(days=9)),
        (A3 + timedelta(days=3000, seconds=1), A3 + timedelta(days=3003)),
    ],
)
def test_interval_is_anchored(after: datetime, expected: datetime) -> None:
    assert parse_schedule("@every 3d").next_fire(after, A3) == expected


def test_interval_rhythm_survives_restart() -> None:
    schedule = parse_schedule("@every 1h30m")
    before_restart = []
    t = A3
    for _ in range(10):
        t = schedule.next_fire(t, A3)
        before_restart.append(t)
    # A new process with the same persisted anchor, starting at an arbitrary moment, joins the same grid.
    restarted = schedule.next_fire(A3 + timedelta(hours=4, minutes=7), A3)
    assert restarted == A3 + timedelta(hours=4, minutes=30)
    assert restarted in before_restart
    assert all((f - A3) % timedelta(minutes=90) == timedelta(0) for f in before_restart)


def test_interval_ignores_timezone_and_dst() -> None:
    schedule = parse_schedule("@every 1h", "Europe/Berlin")
    got = fires("@every 1h", "Europe/Berlin", utc(2025, 10, 25, 23), 4)
    assert got == [utc(2025, 10, 26, h) for h in range(4)]  # midnight anchor in UTC, every real hour
    assert schedule.next_fire(utc(2025, 3, 30, 0, 30), utc(2025, 1, 1)) == utc(2025, 3, 30, 1)


def test_interval_construction() -> None:
    schedule = parse_schedule("  @EVERY   1h30m ")
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.every == timedelta(hours=1, minutes=30)
    assert schedule.expression == "@EVERY   1h30m"
    assert IntervalSchedule("@every 30s", every=timedelta(seconds=30)).timezone == "UTC"
    with pytest.raises(ScheduleError, match="positive"):
        IntervalSchedule("x", every=timedelta(0))


# ----------------------------------------------------------------------------------------------- missed


def test_missed_interval_huge_gap_is_fast_and_exact() -> None:
    schedule = parse_schedule("@every 1s")
    anchor = utc(2025, 1, 1)
    after, until = utc(2025, 6, 1), utc(2025, 6, 4)
    started = time.perf_counter()
    assert schedule.missed(after, until, anchor) == (3 * 86_400, until)
    assert schedule.missed(after, utc(2125, 6, 1), anchor)[0] == (utc(2125, 6, 1) - after).total_seconds()
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        (A3, A3 + timedelta(days=9), (3, A3 + timedelta(days=9))),  # after exclusive, until inclusive
        (A3, A3 + timedelta(days=9) - timedelta(microseconds=1), (2, A3 + timedelta(days=6))),
        (A3 - timedelta(days=1), A3, (1, A3)),  # the anchor itself counts
        (A3 - timedelta(days=10), A3 - timedelta(days=1), (0, None)),  # all before the anchor
        (A3 + timedelta(days=1), A3 + timedelta(days=2), (0, None)),  # no fire in between
        (A3 + timedelta(days=5), A3 + timedelta(days=5), (0, None)),  # empty range
        (A3 + timedelta(days=5), A3 + timedelta(days=1), (0, None)),  # reversed range
    ],
)
def test_missed_interval_boundaries(
    after: datetime, until: datetime, expected: tuple[int, datetime | None]
) -> None:
    assert parse_schedule("@every 3d").missed(after, until, A3) == expected


@pytest.mark.parametrize(
    ("expression", "tz", "after", "until", "expected"),
    [
        # 24 real hours across the Berlin fall-back day: every 15 real minutes -> 96, none lost or doubled.
        ("*/15 * * * *", "Europe/Berlin", utc(2025, 10, 25, 22), utc(2025, 10, 26, 22), (96, utc(2025, 10, 26, 22))),
        # Same for the spring day.
        ("*/15 * * * *", "Europe/Berlin", utc(2025, 3, 29, 22), utc(2025, 3, 30, 22), (96, utc(2025, 3, 30, 22))),
        # Fixed-time daily over both transition days: once per local day.
        ("30 2 * * *", "Europe/Berlin", utc(2025, 3, 29, 12), utc(2025, 3, 31, 12), (2, utc(2025, 3, 31, 0, 30))),
        ("30 2 * * *", "Europe/Berlin", utc(2025, 10, 25, 12), utc(2025, 10, 27, 12), (2, utc(2025, 10, 27, 1, 30))),
        # Hourly across fall-back in New York: 24 real hours (25 on the local clock's day) -> 24 fires.
        ("0 * * * *", "America/New_York", utc(2025, 11, 2, 3, 30), utc(2025, 11, 3, 3, 30), (24, utc(2025, 11, 3, 3))),
        # Nothing due.
        ("0 0 1 1 *", "UTC", utc(2025, 1, 1), utc(2025, 12, 31, 23, 59), (0, None)),
        ("* * * * *", "UTC", utc(2025, 1, 1), utc(2025, 1, 1), (0, None)),
    ],
)
def test_missed_cron(
    expression: str, tz: str, after: datetime, until: datetime, expected: tuple[int, datetime | None]
) -> None:
    assert parse_schedule(expression, tz).missed(after, until, ANCHOR) == expected


def test_missed_cron_beyond_cap_counts_a_lower_bound_and_finds_the_exact_latest() -> None:
    schedule = parse_schedule("* * * * * *", "Europe/Berlin")  # 259 200 fires in 3 days
    after, until = utc(2025, 6, 1), datetime(2025, 6, 4, 0, 0, 0, 500_000, UTC)
    assert schedule.missed(after, until, ANCHOR) == (MISSED_CAP, utc(2025, 6, 4))

    daily = parse_schedule("30 2 * * *", "Europe/Berlin")  # well below the cap: exact
    assert daily.missed(utc(2000, 1, 1), utc(2025, 10, 26, 12), ANCHOR) == (9431, utc(2025, 10, 26, 0, 30))


def test_missed_cron_latest_past_cap_with_sparse_tail() -> None:
    # Every second of 02:xx on Sundays: the cap is hit in January, and the latest fire lies days before
    # `until` (a Wednesday), so it has to be found by the backwards search.
    schedule = parse_schedule("* * 2 * * 0", "Europe/Berlin")
    count, latest = schedule.missed(utc(2025, 1, 1), utc(2025, 12, 31, 12), ANCHOR)
    assert count == MISSED_CAP
    assert latest == utc(2025, 12, 28, 1, 59, 59)  # Sunday 2025-12-28 02:59:59 CET


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "got 3"),
        ("* * * * * * *", "got 7"),
        ("@every 0s", "positive"),
        ("@every 0ms", "positive"),
        ("@every", "needs a duration"),
        ("@every   ", "needs a duration"),
        ("@every 90", "invalid duration '90'"),
        ("@every -5s", "invalid duration '-5s'"),
        ("@every 1.5h", "invalid duration '1.5h'"),
        ("@bogus", "unknown macro"),
        ("@reboot", "unknown macro"),
        ("", "empty"),
        ("   ", "empty"),
        ("*/0 * * * *", "step"),
        ("0 0 31 2 *", "never fires"),
        ("H * * * *", "not supported"),
        ("0 r * * *", "not supported"),
        ("a b c d e", "not acceptable"),
    ],
)
def test_invalid_expressions(expression: str, why: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(why)) as caught:
        parse_schedule(expression)
    assert f"invalid schedule '{expression}'" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("expression", ["0 * * * *", "@every 30s", "@daily"])
@pytest.mark.parametrize("tz", ["Mars/Base", "", "../etc/passwd", "europe/berlin "])
def test_invalid_timezone(expression: str, tz: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(f"unknown timezone '{tz}'")):
        parse_schedule(expression, tz)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("3d", timedelta(days=3)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("2w", timedelta(weeks=2)),
        ("1m1ms", timedelta(minutes=1, milliseconds=1)),
        (" 15M ", timedelta(minutes=15)),
        ("0s", timedelta(0)),  # a valid duration; "@every 0s" is what gets rejected
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["90", "", "s", "1.5h", "-1s", "5x", "1h 30m", "1 h", "h1"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(f"invalid duration '{text}'")):
        parse_duration(text)


# ------------------------------------------------------------------------------------------- describe


@pytest.mark.parametrize(
    ("expression", "tz", "expected"),
    [
        ("@every 30s", "UTC", "every 30s"),
        ("@every 3d", "UTC", "every 3d"),
        ("@every 90m", "UTC", "every 1h30m"),
        ("@every 500ms", "UTC", "every 500ms"),
        ("@every 14d", "UTC", "every 2w"),
        ("0 2 * * *", "UTC", "daily at 02:00 UTC"),
        ("@daily", "UTC", "daily at 00:00 UTC"),
        ("0 * * * *", "UTC", "hourly at :00"),
        ("@hourly", "Europe/Berlin", "hourly at :00"),
        ("5 * * * 1-5", "UTC", "hourly at :05 on Mon-Fri"),
        ("*/15 * * * *", "UTC", "every 15 minutes"),
        ("* * * * *", "UTC", "every minute"),
        ("30 2 * * 1-5", "Europe/Berlin", "at 02:30 Europe/Berlin on Mon-Fri"),
        ("30 2 * * mon-fri", "Europe/Berlin", "at 02:30 Europe/Berlin on Mon-Fri"),
        ("0 9 * * sat,0", "UTC", "at 09:00 UTC on Sat,Sun"),
        ("0 */6 * * *", "UTC", "every 6 hours at :00"),
        ("*/5 * * * * *", "UTC", "every 5 seconds"),
        ("* * * * * *", "UTC", "every second"),
        ("0 15 10 * * *", "UTC", "daily at 10:15 UTC"),
        ("@weekly", "UTC", "at 00:00 UTC on Sun"),
        ("@monthly", "UTC", "monthly on day 1 at 00:00 UTC"),
        ("@yearly", "America/New_York", "yearly on Jan 1 at 00:00 America/New_York"),
        ("0 12 25 dec *", "UTC", "yearly on Dec 25 at 12:00 UTC"),
        # Fall back to the raw expression whenever a summary would be vague or wrong.
        ("*/7 * * * *", "UTC", "cron '*/7 * * * *' (UTC)"),  # 7 does not divide the hour
        ("*/15 9-17 * * 1-5", "Europe/Berlin", "cron '*/15 9-17 * * 1-5' (Europe/Berlin)"),
        ("0 0 L * *", "UTC", "cron '0 0 L * *' (UTC)"),
        ("0 0 * * 1#2", "UTC", "cron '0 0 * * 1#2' (UTC)"),
        ("15 0 2 * * *", "UTC", "cron '15 0 2 * * *' (UTC)"),
    ],
)
def test_describe(expression: str, tz: str, expected: str) -> None:
    assert parse_schedule(expression, tz).describe() == expected


# ------------------------------------------------------------------------- randomized property checks

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "Europe/London", "UTC"]


def _field(text: str, low: int, high: int) -> set[int]:
    """A deliberately tiny, independent cron field parser for the oracle: * a a-b */n a-b/n and lists."""
    values: set[int] = set()
    for item in text.split(","):
        body, _, step = item.partition("/")
        if body == "*":
            start, stop = low, high
        elif "-" in body:
            start, stop = (int(x) for x in body.split("-"))
        else:
            start = stop = int(body)
        values.update(range(start, stop + 1, int(step or 1)))
    return values


def _oracle(expression: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """The DST rules applied literally, one UTC minute at a time, for fire times in (start, end]."""
    minute, hour, dom, month, dow = expression.split()
    minutes, hours, doms, months = _field(minute, 0, 59), _field(hour, 0, 23), _field(dom, 1, 31), _field(month, 1, 12)
    dows = {d % 7 for d in _field(dow, 0, 7)}
    fixed_time = hours != set(range(24))

    def matches(wall: datetime) -> bool:
        dom_ok, dow_ok = wall.day in doms, wall.isoweekday() % 7 in dows
        day_ok = (dom_ok or dow_ok) if dom != "*" and dow != "*" else (dom_ok and dow_ok)
        return wall.minute in minutes and wall.hour in hours and wall.month in months and day_ok

    zone, step = ZoneInfo(tz), timedelta(minutes=1)
    out = []
    t = start.replace(second=0, microsecond=0) + step
    while t <= end:
        local, before = t.astimezone(zone), (t - step).astimezone(zone)
        wall = local.replace(tzinfo=None)
        if not fixed_time:
            fire = matches(wall)
        else:
            fire = matches(wall) and local.fold == 0  # first pass only
            now_offset, before_offset = local.utcoffset(), before.utcoffset()
            assert now_offset is not None
            assert before_offset is not None
            if now_offset > before_offset:
                # t is the instant right after a spring-forward jump: run skipped wall times here, once
                skipped = before.replace(tzinfo=None) + step
                while skipped < wall:
                    fire = fire or matches(skipped)
                    skipped += step
        if fire:
            out.append(t)
        t += step
    return out


def _transitions(tz: str, year: int) -> list[datetime]:
    zone, t, out = ZoneInfo(tz), utc(year, 1, 1), []
    while t.year == year:
        if (t + timedelta(hours=1)).astimezone(zone).utcoffset() != t.astimezone(zone).utcoffset():
            out.append(t + timedelta(hours=1))
        t += timedelta(hours=1)
    return out


def _random_cron(rng: random.Random) -> str:
    minute = rng.choice(["*/15", "0", "30", "*/20", "5,35", "*/10", "59", "45", str(rng.randrange(60))])
    hour = rng.choice(["*", "*", "*/1", "0", "1", "2", "3", "23", "1-3", "*/2", "0,2", "22-23"])
    dom = rng.choice(["*", "*", "*", "1-15", "5,6"])
    month = rng.choice(["*", "*", "3,4,9,10,11"])
    dow = rng.choice(["*", "*", "*", "0", "1-5", "6,0", "6"])
    return f"{minute} {hour} {dom} {month} {dow}"


def test_randomized_against_brute_force_oracle_around_transitions() -> None:
    rng = random.Random(20250330)
    crons = [
        "*/15 * * * *", "0 * * * *", "30 2 * * *", "45 1 * * *", "15 2 * * *", "0 0 * * *", "30 23 * * *",
        "*/30 2 * * *", "0,30 2 * * *", "0 2,3 * * *",
    ] + [_random_cron(rng) for _ in range(25)]
    for tz in ZONES:
        for jump in _transitions(tz, 2025) or [utc(2025, 3, 30, 1)]:
            for expression in rng.sample(crons, 12):
                start, end = jump - timedelta(hours=26), jump + timedelta(hours=26)
                schedule = parse_schedule(expression, tz)
                got, t = [], start
                while (t := schedule.next_fire(t, ANCHOR)) <= end:
                    got.append(t)
                expected = _oracle(expression, tz, start, end)
                assert got == expected, (expression, tz, jump)
                # Also from arbitrary points (not just from the previous fire), mostly near the jump.
                for _ in range(40):
                    after = jump + timedelta(seconds=rng.uniform(-3 * 3600, 3 * 3600))
                    want = next((f for f in expected if f > after), None)
                    if want is not None:
                        assert schedule.next_fire(after, ANCHOR) == want, (expression, tz, after)


@pytest.mark.parametrize("tz", ZONES)
def test_randomized_next_fire_is_strictly_increasing_over_a_year(tz: str) -> None:
    rng = random.Random(f"strictly-increasing-{tz}")
    for expression in ["0 * * * *", "30 2 * * *", "*/15 1-3 * * 0", "0 0 * * *", "17 */3 * * *"]:
        schedule = parse_schedule(expression, tz)
        t = utc(2025, 1, 1) + timedelta(seconds=rng.randrange(86_400 * 30))
        end = t + timedelta(days=365)
        while t < end:
            nxt = schedule.next_fire(t, ANCHOR)
            assert nxt > t, (expression, tz, t)
            t = nxt
    # Random probes anywhere in the year, also for a seconds cron: next_fire is > after, is monotone in
    # `after`, and no fire hides between `after` and its result.
    schedule = parse_schedule(rng.choice(["*/15 * * * *", "*/7 * * * * *", "0 2 * * *"]), tz)
    for _ in range(300):
        after = utc(2025, 1, 1) + timedelta(microseconds=rng.randrange(365 * 86_400 * 10**6))
        nxt = schedule.next_fire(after, ANCHOR)
        assert nxt > after
        between = after + (nxt - after) * rng.random()
        assert schedule.next_fire(between, ANCHOR) in (nxt, schedule.next_fire(nxt, ANCHOR))
        assert schedule.next_fire(max(after, nxt - timedelta(microseconds=1)), ANCHOR) == nxt
