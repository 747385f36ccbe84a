"""Business-hours calendars: when SLA clocks run.

A calendar is a time zone, working intervals per weekday (several a day allowed, `"24:00"` ends a
day) and days off: public holidays from the `holidays` package (a country, optionally one of its
subdivisions) plus custom dates. Two pure functions answer the SLA questions:

- `add_business_time(calendar, start, duration)`: the earliest moment by which `duration` of
  business time has elapsed since `start`;
- `business_time_between(calendar, a, b)`: how much business time lies in `[a, b)`.

Intervals are laid out on the local wall clock and converted to UTC day by day, so a day that
loses or gains an hour at a DST change counts the hours that really elapse (a 00:00-03:00 interval
lasts two hours on a spring-forward night). Arithmetic is on exact `timedelta`s (microseconds), so
`business_time_between(c, s, add_business_time(c, s, d)) == d` holds exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY = 24 * 60
# A calendar with some working time finds it within a few years, whatever its holidays.
_SEARCH_DAYS = 3 * 366


class CalendarError(ValueError):
    """A calendar that cannot be used: unknown time zone or country, malformed hours."""


def _minutes(clock: str) -> int:
    try:
        hours, minutes = clock.split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise CalendarError(f"{clock!r} is not a time of day (HH:MM)") from None
    if not (0 <= int(minutes) < 60 and 0 <= value <= _DAY and len(hours) == 2 and len(minutes) == 2):
        raise CalendarError(f"{clock!r} is not a time of day between 00:00 and 24:00")
    return value


def parse_hours(hours: Mapping[str, Sequence[Sequence[str]]]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """`{"mon": [["09:00", "12:00"], ["13:00", "18:00"]], …}` as minutes of the day per weekday (0 = Monday).

    Overlapping or touching intervals are merged; an interval must end after it starts.
    """
    unknown = sorted(set(hours) - set(WEEKDAYS))
    if unknown:
        raise CalendarError(f"unknown weekdays {unknown}; use {list(WEEKDAYS)}")
    days: list[tuple[tuple[int, int], ...]] = []
    for name in WEEKDAYS:
        spans: list[tuple[int, int]] = []
        for pair in hours.get(name, ()):
            if len(pair) != 2:
                raise CalendarError(f"{name}: an interval is a pair [start, end]")
            start, end = _minutes(pair[0]), _minutes(pair[1])
            if end <= start:
                raise CalendarError(f"{name}: {pair[0]}-{pair[1]} ends before it starts")
            spans.append((start, end))
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        days.append(tuple(merged))
    return tuple(days)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; CalendarError if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from None


@functools.lru_cache(maxsize=256)
def public_holidays(country: str, subdivision: str | None) -> holidays.HolidayBase:
    """The `holidays` package's calendar for a country (and subdivision); it fills years as asked."""
    try:
        return holidays.country_holidays(country, subdiv=subdivision)
    except NotImplementedError as e:
        raise CalendarError(str(e)) from None


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    """When business time runs: `hours[weekday]` in minutes of the local day, minus days off."""

    time_zone: str = "UTC"
    hours: tuple[tuple[tuple[int, int], ...], ...] = ((),) * 7
    country: str | None = None
    subdivision: str | None = None
    custom_holidays: frozenset[date] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        *,
        time_zone: str = "UTC",
        hours: Mapping[str, Sequence[Sequence[str]]],
        country: str | None = None,
        subdivision: str | None = None,
        custom_holidays: Sequence[str | date] = (),
    ) -> BusinessCalendar:
        """A checked calendar from its stored form (weekday names, "HH:MM" strings, ISO dates)."""
        zone(time_zone)
        parsed = parse_hours(hours)
        if not any(parsed):
            raise CalendarError("a business calendar needs working hours on at least one weekday")
        if subdivision is not None and country is None:
            raise CalendarError("a holiday subdivision needs its country")
        if country is not None:
            public_holidays(country.upper(), subdivision)
        days = frozenset(d if isinstance(d, date) else date.fromisoformat(d) for d in custom_holidays)
        return cls(time_zone, parsed, country.upper() if country else None, subdivision, days)

    @classmethod
    def always(cls) -> BusinessCalendar:
        """Every hour of every day (what a policy without a calendar uses)."""
        return cls("UTC", (((0, _DAY),),) * 7)

    @property
    def is_always(self) -> bool:
        return self.hours == (((0, _DAY),),) * 7 and self.country is None and not self.custom_holidays

    def is_day_off(self, day: date) -> bool:
        if day in self.custom_holidays:
            return True
        return self.country is not None and day in public_holidays(self.country, self.subdivision)

    def intervals_from(self, moment: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Business intervals (UTC, half-open) in time order, from the local day containing `moment`."""
        tz = zone(self.time_zone)
        day = _aware(moment).astimezone(tz).date()
        for offset in range(_SEARCH_DAYS):
            current = day + timedelta(days=offset)
            if self.is_day_off(current):
                continue
            midnight = datetime.combine(current, time())
            for start, end in self.hours[current.weekday()]:
                yield (
                    _to_utc(midnight + timedelta(minutes=start), tz),
                    _to_utc(midnight + timedelta(minutes=end), tz),
                )
        raise CalendarError(f"no business time within {_SEARCH_DAYS} days of {moment.isoformat()}")

    def is_open(self, moment: datetime) -> bool:
        """True if `moment` is business time."""
        moment = _aware(moment)
        for start, end in self.intervals_from(moment - timedelta(days=1)):
            if start > moment:
                return False
            if moment < end:
                return True
        return False  # pragma: no cover - intervals_from raises first


def _to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """A local wall-clock time as UTC; a time skipped by a DST jump is the moment of the jump.

    (zoneinfo would place a skipped 02:30 after a 03:00 of the same night, and an interval's end
    before its start.) Ambiguous times take their first occurrence (`fold=0`).
    """
    moment = wall.replace(tzinfo=tz).astimezone(UTC)
    if moment.astimezone(tz).replace(tzinfo=None) == wall:
        return moment
    for minutes in range(1, 24 * 60):  # zones jump on whole minutes: find where the gap ends
        later = wall + timedelta(minutes=minutes)
        moment = later.replace(tzinfo=tz).astimezone(UTC)
        if moment.astimezone(tz).replace(tzinfo=None) == later:
            return moment
    raise CalendarError(f"{wall.isoformat()} does not exist in {tz.key}")  # pragma: no cover


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("business time needs aware datetimes")
    return moment.astimezone(UTC)


def add_business_time(calendar: BusinessCalendar, start: datetime, duration: timedelta) -> datetime:
    """The earliest moment by which `duration` of business time has elapsed since `start` (UTC)."""
    start = _aware(start)
    if duration < timedelta(0):
        raise ValueError("duration must not be negative")
    if calendar.is_always:
        return start + duration
    if not duration:
        return start
    left = duration
    # The day before too: a local day's last interval may reach past `start`'s local midnight.
    for begin, end in calendar.intervals_from(start - timedelta(days=1)):
        if end <= start:
            continue
        begin = max(begin, start)
        if begin + left <= end:
            return begin + left
        left -= end - begin
    raise AssertionError("unreachable")  # pragma: no cover - intervals_from raises first


def business_time_between(calendar: BusinessCalendar, a: datetime, b: datetime) -> timedelta:
    """Business time in `[a, b)`; negative when `b` is before `a`."""
    a, b = _aware(a), _aware(b)
    if b < a:
        return -business_time_between(calendar, b, a)
    if calendar.is_always:
        return b - a
    total = timedelta(0)
    for begin, end in calendar.intervals_from(a - timedelta(days=1)):
        if begin >= b:
            return total
        if end <= a:
            continue
        total += min(end, b) - max(begin, a)
    return total  # pragma: no cover - intervals_from raises first


def calendar_from_row(row: Any | None) -> BusinessCalendar:
    """The calendar stored in a `business_calendars` row; None (no calendar) is round the clock."""
    if row is None:
        return BusinessCalendar.always()
    return BusinessCalendar.build(
        time_zone=row.time_zone,
        hours=row.hours,
        country=row.holiday_country,
        subdivision=row.holiday_subdivision,
        custom_holidays=row.custom_holidays,
    )
