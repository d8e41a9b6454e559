"""Time source. Domain code receives a clock instead of reading the system time (TM-1)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Protocol

from pydantic import AfterValidator, AwareDatetime


class Clock(Protocol):
    """Anything that tells the current UTC time."""

    def now(self) -> datetime: ...


class SystemClock:
    """The server's clock, always timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def utc_now() -> datetime:
    """Current server time in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_z(value: datetime) -> str:
    """Canonical text of a timestamp: UTC, microseconds, ``Z`` suffix."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


UtcDateTime = Annotated[AwareDatetime, AfterValidator(as_utc)]
"""A timezone-aware datetime taken in and handed back in UTC (TM-1)."""
