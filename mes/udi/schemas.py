"""Request and response bodies of the identification API (``/scans``)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, field_validator

from mes.schemas import InputModel
from mes.udi.rules import ScanOutcome, escape_raw

RAW_ESCAPED_MAX = 1000
"""``scan_event.raw_escaped`` column size."""

Context = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class ScanRequest(InputModel):
    """One scan as the scanner (or a person typing the HRI) produced it."""

    raw: str = Field(
        min_length=1,
        max_length=500,
        description="Exactly what was read, including the AIM prefix (`]d2`) and GS (0x1D) "
        "or `|` separators; or the HRI typed as `(01)...(17)...(10)...`.",
    )
    context: Context | None = Field(
        default=None, description="Where the scan was taken, e.g. `consume:WO-1042/20`."
    )

    @field_validator("raw")
    @classmethod
    def _storable(cls, value: str) -> str:
        if len(escape_raw(value)) > RAW_ESCAPED_MAX:
            raise ValueError(
                "raw holds too many control characters to be stored "
                f"(at most {RAW_ESCAPED_MAX} characters once escaped)"
            )
        return value


class ScanResult(BaseModel):
    """What a scan meant. ``ok`` false means the data must not be used; ``errors`` say why.
    ``outcome`` is ``suspect`` when the data reads but may be wrong (``warnings``).
    ``duplicate`` is true when the same user sent the same data within 2 s: the earlier scan
    is returned and nothing new is stored."""

    id: uuid.UUID
    seq: int
    at: datetime
    username: str
    context: str | None
    raw: str = Field(description="The scan as stored: control characters escaped (`\\x1d`).")
    symbology_id: str | None
    outcome: ScanOutcome
    ok: bool
    duplicate: bool = False
    gtin: str | None
    lot: str | None
    serial: str | None
    production_date: date | None
    expiry_date: date | None
    element_string: str | None = Field(description="Normalised AIDC data, GS as 0x1D.")
    element_string_display: str | None = Field(description="The element string, GS as <GS>.")
    hri: str | None = Field(description="Bracketed HRI, dates as YYYY-MM-DD (UDI-3).")
    errors: list[str]
    warnings: list[str]


class ScanList(BaseModel):
    items: list[ScanResult]
    next_cursor: str | None
