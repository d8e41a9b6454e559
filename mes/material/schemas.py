"""Request and response bodies of the material-definition API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from mes.material.rules import gtin_problem
from mes.models import MaterialKind
from mes.schemas import InputModel
from mes.units import check_uom

Code = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_.-]{0,39}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


def _gtin(value: str) -> str:
    problem = gtin_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Gtin = Annotated[str, StringConstraints(max_length=14), AfterValidator(_gtin)]
Uom = Annotated[str, StringConstraints(min_length=1, max_length=20), AfterValidator(check_uom)]


class Body(InputModel):
    """Request body: unknown fields and NUL characters refused."""


class MaterialCreate(Body):
    code: Code
    name: Name
    kind: MaterialKind
    uom: Uom
    shelf_life_days: int | None = Field(default=None, ge=0, le=36500)
    moisture_sensitive: bool = False
    max_exposure_min: int | None = Field(default=None, ge=0, le=100000)
    implant_traceable: bool = False
    gtin: Gtin | None = None
    description: Text | None = None
    reason: Reason = "material definition created"


class MaterialUpdate(Body):
    name: Name | None = None
    kind: MaterialKind | None = None
    uom: Uom | None = None
    shelf_life_days: int | None = Field(default=None, ge=0, le=36500)
    moisture_sensitive: bool | None = None
    max_exposure_min: int | None = Field(default=None, ge=0, le=100000)
    implant_traceable: bool | None = None
    gtin: Gtin | None = None
    description: Text | None = None
    is_active: bool | None = None
    reason: Reason


class MaterialPublic(BaseModel):
    code: str
    name: str
    kind: MaterialKind
    uom: str
    shelf_life_days: int | None
    moisture_sensitive: bool
    max_exposure_min: int | None
    implant_traceable: bool
    gtin: str | None
    description: str | None
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class MaterialList(BaseModel):
    items: list[MaterialPublic]
    next_cursor: str | None
