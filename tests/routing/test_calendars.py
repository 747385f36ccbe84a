"""Business-hours arithmetic: worked examples (weekends, holidays, DST nights) and properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.calendars import (
    WEEKDAYS,
    BusinessCalendar,
    CalendarError,
    add_business_time,
    business_time_between,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAY_HOURS = {day: [["09:00", "18:00"]] for day in WEEKDAYS[:5]}
OFFICE = BusinessCalendar.build(time_zone="Europe/Paris", hours=WEEKDAY_HOURS)


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


def test_friday_evening_plus_an_hour_is_monday_morning() -> None:
    friday = paris(2026, 11, 20, 17, 30)
    assert add_business_time(OFFICE, friday, timedelta(hours=1)) == paris(2026, 11, 23, 9, 30)
    assert business_time_between(OFFICE, friday, paris(2026, 11, 23, 9, 30)) == timedelta(hours=1)


def test_a_public_holiday_is_skipped() -> None:
    french = BusinessCalendar.build(time_zone="Europe/Paris", hours=WEEKDAY_HOURS, country="fr")
    tuesday = paris(2026, 11, 10, 17, 30)  # Wednesday 11 November is Armistice Day
    assert add_business_time(OFFICE, tuesday, timedelta(hours=1)) == paris(2026, 11, 11, 9, 30)
    assert add_business_time(french, tuesday, timedelta(hours=1)) == paris(2026, 11, 12, 9, 30)
    assert business_time_between(french, paris(2026, 11, 10), paris(2026, 11, 13)) == timedelta(hours=18)


def test_a_subdivision_has_its_own_holidays() -> None:
    # 31 March 2026 is César Chávez Day in California, not in New York.
    hours = {day: [["09:00", "17:00"]] for day in WEEKDAYS[:5]}
    california = BusinessCalendar.build(
        time_zone="America/Los_Angeles", hours=hours, country="US", subdivision="CA"
    )
    new_york = BusinessCalendar.build(
        time_zone="America/New_York", hours=hours, country="US", subdivision="NY"
    )
    la = ZoneInfo("America/Los_Angeles")
    start = datetime(2026, 3, 30, 16, 0, tzinfo=la)
    assert add_business_time(california, start, timedelta(hours=2)) == datetime(2026, 4, 1, 10, 0, tzinfo=la)
    ny_start = datetime(2026, 3, 30, 16, 0, tzinfo=NEW_YORK)
    assert add_business_time(new_york, ny_start, timedelta(hours=2)) == datetime(
        2026, 3, 31, 10, 0, tzinfo=NEW_YORK
    )


def test_custom_holidays_and_several_intervals_a_day() -> None:
    calendar = BusinessCalendar.build(
        time_zone="Europe/Paris",
        hours={day: [["09:00", "12:00"], ["14:00", "18:00"]] for day in WEEKDAYS[:5]},
        custom_holidays=["2026-11-23"],
    )
    # Friday 11:00 + 3 h: 1 h before lunch, 2 h after.
    assert add_business_time(calendar, paris(2026, 11, 20, 11), timedelta(hours=3)) == paris(2026, 11, 20, 16)
    # Friday 17:00 + 2 h: Monday is a company holiday, so Tuesday 10:00.
    assert add_business_time(calendar, paris(2026, 11, 20, 17), timedelta(hours=2)) == paris(2026, 11, 24, 10)
    assert business_time_between(calendar, paris(2026, 11, 20, 12), paris(2026, 11, 20, 14)) == timedelta(0)


def test_dst_nights_count_the_hours_that_really_pass() -> None:
    night = BusinessCalendar.build(time_zone="Europe/Paris", hours={"sun": [["00:00", "04:00"]]})
    spring = paris(2026, 3, 29)  # 02:00 → 03:00
    autumn = paris(2026, 10, 25)  # 03:00 → 02:00
    assert business_time_between(night, spring, spring + timedelta(days=1)) == timedelta(hours=3)
    assert business_time_between(night, autumn, autumn + timedelta(days=1)) == timedelta(hours=5)
    # An interval inside the skipped hour does not exist that night.
    skipped = BusinessCalendar.build(time_zone="Europe/Paris", hours={"sun": [["02:15", "02:45"]]})
    assert business_time_between(skipped, spring, spring + timedelta(days=1)) == timedelta(0)
    assert business_time_between(skipped, autumn, autumn + timedelta(days=1)) == timedelta(minutes=30)
    # 9-18 across the spring change: still 9 hours of work on Monday 30 March.
    monday = paris(2026, 3, 30, 9)
    assert add_business_time(OFFICE, paris(2026, 3, 27, 18), timedelta(hours=9)) == paris(2026, 3, 30, 18)
    assert business_time_between(OFFICE, monday, monday + timedelta(hours=9)) == timedelta(hours=9)


def test_twenty_four_hours_and_the_always_calendar() -> None:
    weekends = BusinessCalendar.build(
        time_zone="UTC", hours={"sat": [["00:00", "24:00"]], "sun": [["00:00", "24:00"]]}
    )
    friday = datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert add_business_time(weekends, friday, timedelta(hours=36)) == datetime(2026, 11, 22, 12, tzinfo=UTC)
    always = BusinessCalendar.always()
    assert add_business_time(always, friday, timedelta(minutes=90)) == friday + timedelta(minutes=90)
    assert business_time_between(always, friday, friday - timedelta(hours=1)) == -timedelta(hours=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_zone": "Mars/Olympus", "hours": WEEKDAY_HOURS}, "unknown time zone"),
        ({"hours": WEEKDAY_HOURS, "country": "XX"}, "XX"),
        ({"hours": WEEKDAY_HOURS, "country": "US", "subdivision": "ZZ"}, "ZZ"),
        ({"hours": {"mon": [["18:00", "09:00"]]}}, "ends before it starts"),
        ({"hours": {"funday": [["09:00", "10:00"]]}}, "unknown weekdays"),
        ({"hours": {"mon": [["25:00", "26:00"]]}}, "time of day"),
        ({"hours": {}}, "at least one weekday"),
    ],
)
def test_unusable_calendars_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CalendarError, match=message):
        BusinessCalendar.build(**kwargs)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        add_business_time(OFFICE, datetime(2026, 1, 1), timedelta(hours=1))


# --- properties -----------------------------------------------------------------------------------

_clock = st.integers(min_value=0, max_value=96).map(lambda q: q * 15)  # quarter hours, 00:00-24:00


@st.composite
def calendars(draw: st.DrawFn) -> BusinessCalendar:
    hours: dict[str, list[list[str]]] = {}
    for day in WEEKDAYS:
        spans = []
        for _ in range(draw(st.integers(0, 3))):
            a, b = sorted((draw(_clock), draw(_clock)))
            if a < b:
                spans.append([f"{a // 60:02d}:{a % 60:02d}", f"{b // 60:02d}:{b % 60:02d}"])
        hours[day] = spans
    if not any(hours.values()):
        hours["wed"] = [["09:00", "17:00"]]
    return BusinessCalendar.build(
        time_zone=draw(st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"])),
        hours=hours,
        country=draw(st.sampled_from([None, "FR", "US", "GB"])),
        custom_holidays=draw(st.lists(st.dates(date(2026, 1, 1), date(2027, 12, 31)), max_size=5)),
    )


_moments = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 6, 30), timezones=st.just(UTC)
)
_durations = st.integers(min_value=0, max_value=60 * 24 * 60).map(lambda s: timedelta(seconds=s))


@settings(max_examples=150, deadline=None)
@given(calendars(), _moments, _durations, _durations)
def test_adding_is_additive(calendar: BusinessCalendar, start: datetime, a: timedelta, b: timedelta) -> None:
    assert add_business_time(calendar, add_business_time(calendar, start, a), b) == add_business_time(
        calendar, start, a + b
    )


@settings(max_examples=150, deadline=None)
@given(calendars(), _moments, _durations)
def test_adding_then_measuring_gives_the_duration_back(
    calendar: BusinessCalendar, start: datetime, duration: timedelta
) -> None:
    end = add_business_time(calendar, start, duration)
    assert end >= start
    assert business_time_between(calendar, start, end) == duration
    if duration:
        assert calendar.is_open(end - timedelta(microseconds=1))


@settings(max_examples=150, deadline=None)
@given(calendars(), _moments, _moments, _moments)
def test_measuring_is_additive_and_bounded(
    calendar: BusinessCalendar, a: datetime, b: datetime, c: datetime
) -> None:
    a, b, c = sorted((a, b, c))
    ab, bc = business_time_between(calendar, a, b), business_time_between(calendar, b, c)
    assert ab + bc == business_time_between(calendar, a, c)
    assert timedelta(0) <= ab <= b - a


@settings(max_examples=150, deadline=None)
@given(calendars(), _moments, _moments, _durations, _durations)
def test_adding_is_monotonic(
    calendar: BusinessCalendar, s: datetime, t: datetime, a: timedelta, b: timedelta
) -> None:
    s, t = sorted((s, t))
    a, b = sorted((a, b))
    assert add_business_time(calendar, s, a) <= add_business_time(calendar, t, a)
    assert add_business_time(calendar, s, a) <= add_business_time(calendar, s, b)
