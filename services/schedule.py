"""When does a scheduler service fire next?

Pure functions of their inputs: nothing here reads the clock or does I/O, every "now" is passed in, and
all instants going in and out are timezone-aware UTC datetimes.

Two kinds of schedule:

* ``IntervalSchedule`` (``@every 30s``): fire times are ``anchor + k * every`` for integers ``k >= 0``.
  Real elapsed time, so the timezone is irrelevant, and the persisted anchor keeps the rhythm across
  restarts.
* ``CronSchedule`` (5 fields, or 6 with a leading seconds field, or a macro such as ``@daily``): matched
  against the wall clock of an IANA timezone. croniter does the field matching on naive wall times; this
  module owns the mapping of wall times to instants, because that is where DST bites:

  - a *fixed-time* cron (the hour field is not "every hour") fires once per matching wall time: in the
    repeated fall-back hour only on the first pass, and a wall time that a spring-forward gap skips runs
    once, at the first instant after the jump (Vixie cron does the same);
  - a cron whose hour field covers every hour follows real elapsed time: it fires at every instant whose
    wall clock matches, so through a repeated hour it fires on both passes, and wall times inside a gap
    simply do not happen.
"""

from __future__ import annotations

import copy
import functools
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

__all__ = [
    "MISSED_CAP",
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "ScheduleError",
    "parse_duration",
    "parse_schedule",
]

MISSED_CAP = 10_000
"""Cron ``missed()`` counts exactly up to this many fires; past it the count is this lower bound."""

_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_SCAN_LIMIT = 100_000  # wall times inspected per next_fire; only reachable by a bug, never by a schedule

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_DURATION_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": _SECOND,
    "m": _MINUTE,
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_EVERY = re.compile(r"@every(?:\s+(?P<duration>.*)|)", re.IGNORECASE | re.DOTALL)
# croniter's H (hashed) and R (random) fields depend on a hash id or on chance; every process must agree on
# the fire times because they are claimed through the database, so neither is accepted.
_HASH_OR_RANDOM = re.compile(r"(?:^|,)[hr]", re.IGNORECASE)

_DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ScheduleError(ValueError):
    """Invalid expression or timezone; the message contains the offending expression/timezone verbatim."""


# --------------------------------------------------------------------------------------------- helpers


def parse_duration(text: str) -> timedelta:
    """``"30s"``, ``"3d"``, ``"1h30m"``, ``"500ms"``, ``"2w"`` -> timedelta.

    A unit is required: a bare ``"90"`` is ambiguous (seconds? minutes?) and is rejected.
    """
    cleaned = text.strip().lower()
    if not _DURATION.fullmatch(cleaned):
        raise ScheduleError(f"invalid duration '{text}': expected e.g. 500ms, 30s, 15m, 1h30m, 3d, 2w")
    return sum(
        (int(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION_PART.findall(cleaned)),
        timedelta(),
    )


def _format_duration(every: timedelta) -> str:
    """Inverse of parse_duration, largest units first: 90 minutes -> ``"1h30m"``."""
    rest = every
    parts = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = _DURATION_UNITS[unit]
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    if rest:  # sub-millisecond remainder: only reachable by constructing IntervalSchedule directly
        parts.append(f"{rest // timedelta(microseconds=1)}us")
    return "".join(parts) or "0s"


def _load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"unknown timezone '{name}'") from None


def _as_utc(moment: datetime, what: str) -> datetime:
    """Naive datetimes are a caller bug (whose wall clock would they be?), so refuse them loudly."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {moment!r}")
    return moment.astimezone(UTC)


def _ceil(wall: datetime, step: timedelta) -> datetime:
    """Round a naive wall time up to the cron's granularity (whole seconds or whole minutes)."""
    floor = wall.replace(microsecond=0) if step == _SECOND else wall.replace(second=0, microsecond=0)
    return floor if floor == wall else floor + step


def _transition(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """The instant in (lo, hi] where the UTC offset changes, found by bisection on whole seconds.

    Precondition: exactly one offset change in between. zoneinfo does not expose its transition table,
    and ``lo``/``hi`` are at most a DST shift apart, so this takes ~12 cheap steps.
    """
    lo_s, hi_s = int(lo.timestamp()), -int(-hi.timestamp() // 1)
    before = datetime.fromtimestamp(lo_s, zone).utcoffset()
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo_s = mid
        else:
            hi_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


# ------------------------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule(ABC):
    """A parsed schedule; build one with ``parse_schedule``."""

    expression: str
    timezone: str = "UTC"

    @abstractmethod
    def next_fire(self, after: datetime, anchor: datetime) -> datetime:
        """First fire time strictly after ``after`` (UTC in, UTC out).

        ``anchor`` is the persisted origin of interval schedules; cron ignores it.
        """

    @abstractmethod
    def missed(self, after: datetime, until: datetime, anchor: datetime) -> tuple[int, datetime | None]:
        """``(count, latest)`` of the fire times ``t`` with ``after < t <= until``; cheap for huge gaps."""

    @abstractmethod
    def describe(self) -> str:
        """Human terms for an operator, e.g. ``"every 30s"`` or ``"daily at 02:00 UTC"``."""


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """Fires at ``anchor + k * every`` (``k >= 0``): real elapsed time, so the timezone plays no part."""

    every: timedelta = field(kw_only=True)

    def __post_init__(self) -> None:
        if self.every <= timedelta(0):
            raise ScheduleError(f"invalid schedule '{self.expression}': the interval must be positive")
        _load_zone(self.timezone)  # irrelevant to the fire times, but a typo should still be reported

    def next_fire(self, after: datetime, anchor: datetime) -> datetime:
        after, anchor = _as_utc(after, "after"), _as_utc(anchor, "anchor")
        if after < anchor:
            return anchor
        return anchor + ((after - anchor) // self.every + 1) * self.every

    def missed(self, after: datetime, until: datetime, anchor: datetime) -> tuple[int, datetime | None]:
        """Exact, by arithmetic on k, however large the gap."""
        after, until, anchor = _as_utc(after, "after"), _as_utc(until, "until"), _as_utc(anchor, "anchor")
        if until < anchor or until <= after:
            return 0, None
        first = 0 if after < anchor else (after - anchor) // self.every + 1
        last = (until - anchor) // self.every
        if last < first:
            return 0, None
        return last - first + 1, anchor + last * self.every

    def describe(self) -> str:
        return f"every {_format_duration(self.every)}"


@dataclass(frozen=True)
class _CompiledCron:
    """What a cron expression boils down to; shared by every schedule with the same expression."""

    fields: tuple[str, ...]  # (seconds, minute, hour, day of month, month, day of week); seconds "0" for 5
    step: timedelta  # granularity of the wall times croniter produces
    fixed_time: bool  # the hour field does not cover every hour: see the DST rules in the module docstring
    template: croniter[datetime]  # never advanced itself: next_wall() works on a shallow copy

    def next_wall(self, lower: datetime, inclusive: bool) -> datetime:
        """First matching naive wall time > ``lower`` (>= if ``inclusive``)."""
        if inclusive:
            lower = _ceil(lower, self.step) - self.step
        return copy.copy(self.template).get_next(datetime, start_time=lower)


@functools.lru_cache(maxsize=1024)
def _compile_cron(expression: str) -> _CompiledCron:
    """Validate and parse once per distinct expression: croniter's parsing is the expensive part."""
    text = expression.strip()
    body = text
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ScheduleError(
                f"invalid schedule '{expression}': unknown macro (expected one of "
                f"{', '.join(_MACROS)} or @every <duration>)"
            )
        body = _MACROS[text.lower()]
    parts = body.split()
    if len(parts) not in (5, 6):
        raise ScheduleError(
            f"invalid schedule '{expression}': expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or 6 with a leading seconds field, got {len(parts)}"
        )
    if any(_HASH_OR_RANDOM.search(part) for part in parts):
        raise ScheduleError(f"invalid schedule '{expression}': hashed/random fields (H, R) are not supported")
    has_seconds = len(parts) == 6
    try:
        template = croniter(" ".join(parts), datetime(2000, 1, 1), ret_type=datetime, second_at_beginning=has_seconds)
        copy.copy(template).get_next(datetime)  # croniter gives up after 50 years without a match
    except CroniterBadDateError:
        raise ScheduleError(f"invalid schedule '{expression}': never fires (no matching date)") from None
    except (ValueError, LookupError, TypeError) as exc:
        raise ScheduleError(f"invalid schedule '{expression}': {exc}") from None
    return _CompiledCron(
        fields=tuple(parts) if has_seconds else ("0", *parts),
        step=_SECOND if has_seconds else _MINUTE,
        fixed_time=template.expanded[1] != ["*"],  # croniter normalises 0-23, */1 etc. to "*"
        template=template,
    )


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """Cron evaluated on the wall clock of ``timezone``; see the module docstring for the DST rules."""

    _cron: _CompiledCron = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cron", _compile_cron(self.expression))
        object.__setattr__(self, "_zone", _load_zone(self.timezone))

    def next_fire(self, after: datetime, anchor: datetime) -> datetime:
        return self._next(_as_utc(after, "after"))

    def missed(self, after: datetime, until: datetime, anchor: datetime) -> tuple[int, datetime | None]:
        """Exact count up to MISSED_CAP; beyond it the count is MISSED_CAP (a lower bound).

        ``latest`` is always exact: past the cap it is found by bisecting on "is there a fire between s
        and until?", ~40 next_fire calls even for a gap of years.
        """
        after, until = _as_utc(after, "after"), _as_utc(until, "until")
        count, latest, moment = 0, None, after
        while count < MISSED_CAP:
            moment = self._next(moment)
            if moment > until:
                return count, latest
            count, latest = count + 1, moment
        assert latest is not None
        if self._next(latest) > until:
            return count, latest
        lo, hi = latest, until  # invariant: a fire lies in (lo, until], none in (hi, until]
        while hi - lo > _SECOND:  # fire times are whole seconds, so 1s resolution pins the latest
            mid = lo + (hi - lo) / 2
            if self._next(mid) <= until:
                lo = mid
            else:
                hi = mid
        return count, self._next(lo)

    def describe(self) -> str:
        return _describe_cron(self._cron.fields, self.timezone) or f"cron '{self.expression}' ({self.timezone})"

    # The wall-time mapping. Each naive wall time W has 0 instants (skipped by a spring-forward gap), 1,
    # or 2 (repeated by a fall-back). Taking the first instant of each W is monotone in W, and so is
    # taking the last one, so "first W whose instant is > after" is a forward scan that stops at its
    # first hit once it starts from the right lower bound.

    def _next(self, after: datetime) -> datetime:
        zone = self._zone
        local = after.astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0)
        first_offset = wall.replace(tzinfo=zone).utcoffset()
        second_offset = wall.replace(tzinfo=zone, fold=1).utcoffset()
        assert first_offset is not None
        assert second_offset is not None
        if first_offset == second_offset:
            # An ordinary wall time. Every later wall time's first instant comes before its second one,
            # so one scan of first instants finds the answer for either kind of cron.
            return self._scan(after, wall, False, first=True)
        if local.fold:
            # `after` is on the second pass of a repeated hour. The first instants of the repeated wall
            # times are all behind us, so that scan starts where the repeated range ends on the wall
            # clock: at the transition read with the old offset.
            jump = _transition(zone, wall.replace(tzinfo=zone).astimezone(UTC), after)
            first = self._scan(after, jump.replace(tzinfo=None) + first_offset, True, first=True)
            if self._cron.fixed_time:
                return first
            return min(first, self._scan(after, wall, False, first=False))
        first = self._scan(after, wall, False, first=True)
        if self._cron.fixed_time:
            return first
        # On the first pass of a repeated hour: the second pass starts at the transition, whose wall time
        # is earlier than `wall`, so its scan must start there.
        jump = _transition(zone, after, wall.replace(tzinfo=zone, fold=1).astimezone(UTC))
        jump_wall = jump.astimezone(zone).replace(tzinfo=None, fold=0)
        return min(first, self._scan(after, jump_wall, True, first=False))

    def _scan(self, after: datetime, lower: datetime, inclusive: bool, *, first: bool) -> datetime:
        """First instant > after of the matching wall times from ``lower`` on.

        ``first`` picks which instant of a repeated wall time counts. Wall times inside a gap run at the
        jump for fixed-time crons and are skipped otherwise.
        """
        cron, zone = self._cron, self._zone
        wall = cron.next_wall(lower, inclusive)
        for _ in range(_SCAN_LIMIT):
            early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
            late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
            if early <= late:  # exists (once if equal, twice if repeated)
                instant = early if first else late
                if instant > after:
                    return instant
                wall = cron.next_wall(wall, False)
                continue
            # In a gap, fold=0 reads the wall with the old offset (lands after the jump) and fold=1 with
            # the new one (lands before it); the jump itself lies in between.
            jump = _transition(zone, late, early)
            if cron.fixed_time and jump > after:
                return jump
            wall = cron.next_wall(jump.astimezone(zone).replace(tzinfo=None), True)
        raise RuntimeError(f"no fire time found for '{self.expression}' after {after.isoformat()}")


def parse_schedule(expression: str, timezone: str = "UTC") -> Schedule:
    """``"@every 30s"`` -> IntervalSchedule; a cron expression or macro -> CronSchedule.

    Raises ScheduleError naming the expression or timezone when either is invalid.
    """
    text = expression.strip()
    if not text:
        raise ScheduleError(f"invalid schedule '{expression}': empty expression")
    every = _EVERY.fullmatch(text)
    if every:
        duration = (every.group("duration") or "").strip()
        if not duration:
            raise ScheduleError(f"invalid schedule '{expression}': @every needs a duration such as 30s or 1h30m")
        try:
            interval = parse_duration(duration)
        except ScheduleError as exc:
            raise ScheduleError(f"invalid schedule '{expression}': {exc}") from None
        return IntervalSchedule(text, timezone, every=interval)
    return CronSchedule(text, timezone)


# -------------------------------------------------------------------------------------------- describe


def _step(text: str, size: int) -> int | None:
    """``*`` -> 1, ``*/n`` -> n when n divides the cycle evenly (otherwise "every n" would lie)."""
    if text == "*":
        return 1
    match = re.fullmatch(r"\*/(\d+)", text)
    if match and int(match.group(1)) > 0 and size % int(match.group(1)) == 0:
        return int(match.group(1))
    return None


def _number(text: str, low: int, high: int) -> int | None:
    return int(text) if text.isdigit() and low <= int(text) <= high else None


def _day_of_week(text: str) -> str | None:
    """``1-5`` -> ``Mon-Fri``, ``sat,sun`` -> ``Sat,Sun``; None for anything fancier (steps, #, L)."""
    names = [name.lower() for name in _DAY_NAMES]

    def one(token: str) -> str | None:
        if token.lower() in names:
            return _DAY_NAMES[names.index(token.lower())]
        number = _number(token, 0, 7)
        return None if number is None else _DAY_NAMES[number]

    out = []
    for item in text.split(","):
        ends = [one(token) for token in item.split("-")]
        if len(ends) > 2 or None in ends:
            return None
        out.append("-".join(end for end in ends if end))
    return ",".join(out)


def _describe_cron(fields: tuple[str, ...], timezone: str) -> str | None:
    """Best effort for the common shapes; None means "fall back to the raw expression"."""
    second, minute, hour, dom, month, dow = fields
    if second != "0":
        step = _step(second, 60)
        if step is None or (minute, hour, dom, month, dow) != ("*",) * 5:
            return None
        return "every second" if step == 1 else f"every {step} seconds"
    days = "" if dow in ("*", "?") else _day_of_week(dow)
    if days is None:
        return None
    on_days = f" on {days}" if days else ""
    m, h = _number(minute, 0, 59), _number(hour, 0, 23)
    if dom in ("*", "?") and month == "*":
        minute_step, hour_step = _step(minute, 60), _step(hour, 24)
        if hour == "*" and minute_step is not None:
            return ("every minute" if minute_step == 1 else f"every {minute_step} minutes") + on_days
        if m is not None and hour_step is not None:
            if hour_step == 1:
                return f"hourly at :{m:02d}{on_days}"
            return f"every {hour_step} hours at :{m:02d}{on_days}"
        if m is not None and h is not None:
            return f"at {h:02d}:{m:02d} {timezone}{on_days}" if days else f"daily at {h:02d}:{m:02d} {timezone}"
        return None
    day = _number(dom, 1, 31)
    if days or m is None or h is None or day is None:
        return None
    if month == "*":
        return f"monthly on day {day} at {h:02d}:{m:02d} {timezone}"
    month_number = _number(month, 1, 12)
    if month_number is None and month.capitalize() in _MONTH_NAMES:
        month_number = _MONTH_NAMES.index(month.capitalize()) + 1
    if month_number is None:
        return None
    return f"yearly on {_MONTH_NAMES[month_number - 1]} {day} at {h:02d}:{m:02d} {timezone}"
