"""Request and response bodies of the scheduling resources: the changeover matrix (SCH-2),
unit calendars and unavailable windows (SCH-3)."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache
from typing import Annotated
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from mes.clock import UtcDateTime
from mes.equipment.schemas import Code, Reason
from mes.models import WindowKind
from mes.schemas import InputModel

MAX_CHANGEOVER_MIN = 7 * 24 * 60  # a week: anything longer is a plant shutdown, not a changeover
MAX_SHIFTS = 50

# A product family as work masters name it (``changeover_family``): 1-40 characters, no
# surrounding blanks, so that the scheduler's exact match never misses on a stray space.
Family = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^\S(?:.{0,38}\S)?$")
]
# Strict: JSON ``false`` or ``"30"`` is not a number of minutes (pydantic's lax mode would
# read them as 0 and 30).
ChangeoverMinutes = Annotated[int, Field(strict=True, ge=0, le=MAX_CHANGEOVER_MIN)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")]
ShiftName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
Weekday = Annotated[int, Field(strict=True, ge=0, le=6, description="0 = Monday ... 6 = Sunday")]
WindowReason = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)
]


@cache
def _zones() -> frozenset[str]:
    # Read once: the IANA keys installed with this Python (tzdata or the system database).
    return frozenset(available_timezones())


def _timezone(value: str) -> str:
    """An IANA time zone key that zoneinfo can load (``Europe/Berlin``, ``UTC``)."""
    if value not in _zones():
        raise ValueError(f"{value!r} is not an IANA time zone such as 'Europe/Berlin' or 'UTC'")
    return value


TimeZone = Annotated[str, StringConstraints(max_length=60), AfterValidator(_timezone)]


def _distinct_days(days: list[int]) -> list[int]:
    repeated = sorted({d for d in days if days.count(d) > 1})
    if repeated:
        raise ValueError(f"days repeat {repeated}; list each weekday once")
    return sorted(days)


# --- changeover matrix (SCH-2) -------------------------------------------------------------------


class ChangeoverCreate(InputModel):
    """A changeover rule for every unit of a class, or for one unit (which then wins over its
    class's rule for the same pair). Give exactly one of ``equipment_class`` and
    ``equipment_code``."""

    equipment_class: Code | None = None
    equipment_code: Code | None = None
    from_family: Family
    to_family: Family
    minutes: ChangeoverMinutes
    reason: Reason = "changeover rule created"


class ChangeoverUpdate(InputModel):
    minutes: ChangeoverMinutes
    reason: Reason


class ChangeoverPublic(BaseModel):
    id: uuid.UUID
    equipment_class: str | None
    equipment_code: str | None
    from_family: str
    to_family: str
    minutes: int
    created_by: str
    version: int
    created_at: datetime
    updated_at: datetime


class ChangeoverList(BaseModel):
    items: list[ChangeoverPublic]
    next_cursor: str | None


# --- calendars and unavailable windows (SCH-3) ---------------------------------------------------


class Shift(InputModel):
    """A recurring shift in the calendar's local time. A shift whose ``end`` is not after its
    ``start`` runs past midnight into the next day (``22:00``-``06:00``); ``start == end`` is
    a 24-hour shift."""

    name: ShiftName
    days: Annotated[
        list[Weekday], Field(min_length=1, max_length=7), AfterValidator(_distinct_days)
    ]
    start: ClockTime
    end: ClockTime


class CalendarPut(InputModel):
    """The whole calendar of a unit; no shifts means the unit works round the clock."""

    timezone: TimeZone = "UTC"
    shifts: Annotated[list[Shift], Field(max_length=MAX_SHIFTS)] = Field(default_factory=list)
    reason: Reason


class UnavailableCreate(InputModel):
    start: UtcDateTime
    end: UtcDateTime
    kind: WindowKind
    reason: WindowReason


class CancelRequest(InputModel):
    reason: Reason


class ShiftPublic(BaseModel):
    name: str
    days: list[int]
    start: str
    end: str


class UnavailablePublic(BaseModel):
    id: uuid.UUID
    equipment_code: str
    start: datetime
    end: datetime
    kind: WindowKind
    reason: str
    created_by: str
    is_cancelled: bool
    version: int
    created_at: datetime
    updated_at: datetime


class UnavailableList(BaseModel):
    items: list[UnavailablePublic]
    next_cursor: str | None


class CalendarPublic(BaseModel):
    """A unit's working time. ``version`` 0 means no calendar was ever set (round the clock);
    send ``If-Match: "0"`` to set the first one."""

    equipment_code: str
    timezone: str
    shifts: list[ShiftPublic]
    is_round_the_clock: bool
    unavailable: list[UnavailablePublic]
    updated_by: str | None
    version: int
    updated_at: datetime | None
