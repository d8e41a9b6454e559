"""Unit calendars as pure functions (SCH-3): shifts are local wall-clock times in the
calendar's IANA time zone, expanded day by day with zoneinfo so that a DST change shortens or
lengthens a shift exactly as the clock on the shop-floor wall does; a unit with no shifts works
round the clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Interval = tuple[datetime, datetime]

DAY_MIN = 24 * 60
WEEK_MIN = 7 * DAY_MIN
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint half-open intervals: overlapping and
    touching ones are joined, empty ones dropped."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def clip_intervals(intervals: Iterable[Interval], start: datetime, end: datetime) -> list[Interval]:
    """The parts of ``intervals`` inside [start, end) (those outside dropped)."""
    return [(max(s, start), min(e, end)) for s, e in intervals if s < end and e > start]


def as_utc_checked(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (TM-1), got {value.isoformat()}")
    return value.astimezone(UTC)


def _clock_time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _minute_of_day(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def on_shift(
    shifts: Sequence[Mapping[str, Any]], tz: str | ZoneInfo, start: datetime, end: datetime
) -> list[Interval]:
    """SCH-3: the UTC intervals within [start, end) covered by ``shifts``, merged and sorted.

    Each shift (``{"days": [0..6], "start": "HH:MM", "end": "HH:MM"}``, Monday = 0) is laid
    on every local calendar day of the window in ``tz``, starting one day early so that a
    shift begun the evening before ``start`` is seen. A shift whose end is not after its start
    ends on the next local day (``start == end`` is 24 hours). Local times become UTC through
    zoneinfo with ``fold=0``: across a DST change a shift keeps its wall-clock times and gains
    or loses the hour; a time inside the spring-forward gap is read with the offset before the
    change, a repeated time in autumn as its first occurrence. ``start`` and ``end`` must be
    timezone-aware (ValueError otherwise)."""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    start, end = as_utc_checked(start, "start"), as_utc_checked(end, "end")
    if start >= end or not shifts:
        return []
    parsed = [
        (frozenset(int(d) for d in s["days"]), _clock_time(s["start"]), _clock_time(s["end"]))
        for s in shifts
    ]
    spans: list[Interval] = []
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date()
    while day <= last:
        weekday = day.weekday()
        for days, begin, finish in parsed:
            if weekday not in days:
                continue
            end_day = day if finish > begin else day + timedelta(days=1)
            local_start = datetime.combine(day, begin, tzinfo=zone)
            local_end = datetime.combine(end_day, finish, tzinfo=zone)
            spans.append((local_start.astimezone(UTC), local_end.astimezone(UTC)))
        day += timedelta(days=1)
    return merge_intervals(clip_intervals(spans, start, end))


def off_shift(
    shifts: Sequence[Mapping[str, Any]], tz: str | ZoneInfo, start: datetime, end: datetime
) -> list[Interval]:
    """SCH-3: the UTC intervals within [start, end) when a unit with these shifts is off
    shift - the complement of :func:`on_shift`, sorted and disjoint. No shifts means round
    the clock: nothing is off shift. ``start`` and ``end`` must be timezone-aware."""
    start, end = as_utc_checked(start, "start"), as_utc_checked(end, "end")
    if start >= end or not shifts:
        return []
    gaps: list[Interval] = []
    cursor = start
    for s, e in on_shift(shifts, tz, start, end):
        if s > cursor:
            gaps.append((cursor, s))
        cursor = max(cursor, e)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def shift_overlap_problem(shifts: Sequence[Mapping[str, Any]]) -> str | None:
    """SCH-3: why ``shifts`` cannot be one calendar - two of them overlap - or None.

    Checked on the local wall-clock week (Monday 00:00 is minute 0): a shift past midnight
    runs into the next day, Sunday's into Monday, so a night shift overlapping the next
    morning's shift is found too. Shifts that only touch (one ends when the next starts) do
    not overlap."""
    spans: list[tuple[int, int, int]] = []  # (start minute, end minute, shift index)
    for index, shift in enumerate(shifts):
        begin = _minute_of_day(shift["start"])
        length = (_minute_of_day(shift["end"]) - begin) % DAY_MIN or DAY_MIN
        for day in shift["days"]:
            first = int(day) * DAY_MIN + begin
            spans.append((first, first + length, index))
            if first + length > WEEK_MIN:  # Sunday's shift continues on Monday
                spans.append((first - WEEK_MIN, first + length - WEEK_MIN, index))
    spans.sort()
    reach: tuple[int, int, int] | None = None
    for span in spans:
        if reach is not None and span[0] < reach[1]:
            at = span[0] % WEEK_MIN
            a, b = shifts[reach[2]], shifts[span[2]]
            return (
                f"shifts[{reach[2]}] ({a['name']}) and shifts[{span[2]}] ({b['name']}) "
                f"overlap on {WEEKDAYS[at // DAY_MIN]} at "
                f"{at % DAY_MIN // 60:02d}:{at % 60:02d}"
            )
        if reach is None or span[1] > reach[1]:
            reach = span
    return None
