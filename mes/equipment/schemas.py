"""Request and response bodies of the plant-model API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, StringConstraints

from mes.clock import UtcDateTime
from mes.models import EquipmentKind, EquipmentLevel, EquipmentStatus
from mes.schemas import InputModel
from mes.signature.schemas import SignatureInput, SignaturePublic

Code = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_.-]{0,39}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
AssetNo = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]


def _cleanroom(value: str | None) -> str | None:
    if value is not None and value not in {f"ISO {n}" for n in range(1, 10)}:
        raise ValueError("cleanroom_class must be 'ISO 1' .. 'ISO 9' (ISO 14644-1)")
    return value


CleanroomClass = Annotated[str | None, AfterValidator(_cleanroom)]


class Body(InputModel):
    """Request body: unknown fields and NUL characters refused."""


class EquipmentClassCreate(Body):
    code: Code
    name: Name
    description: Text | None = None
    reason: Reason = "equipment class created"


class EquipmentClassUpdate(Body):
    name: Name | None = None
    description: Text | None = None
    reason: Reason


class EquipmentClassPublic(BaseModel):
    code: str
    name: str
    description: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class EquipmentClassList(BaseModel):
    items: list[EquipmentClassPublic]
    next_cursor: str | None


class EquipmentCreate(Body):
    code: Code
    name: Name
    level: EquipmentLevel
    kind: EquipmentKind | None = None
    parent_code: Code | None = None
    equipment_class: Code | None = None
    room_code: Code | None = None
    asset_no: AssetNo | None = None
    status: EquipmentStatus | None = None
    calibration_due_at: UtcDateTime | None = None
    maintenance_due_at: UtcDateTime | None = None
    cleanroom_class: CleanroomClass = None
    is_dry_room: bool = False
    description: Text | None = None
    reason: Reason = "equipment created"


class EquipmentUpdate(Body):
    """Editable attributes. Level and parent are fixed; status and qualification change
    through their own actions."""

    name: Name | None = None
    kind: EquipmentKind | None = None
    equipment_class: Code | None = None
    room_code: Code | None = None
    asset_no: AssetNo | None = None
    calibration_due_at: UtcDateTime | None = None
    maintenance_due_at: UtcDateTime | None = None
    cleanroom_class: CleanroomClass = None
    is_dry_room: bool | None = None
    description: Text | None = None
    is_active: bool | None = None
    reason: Reason


class EquipmentPublic(BaseModel):
    code: str
    name: str
    level: EquipmentLevel
    kind: EquipmentKind | None
    parent_code: str | None
    site_code: str | None
    equipment_class: str | None
    room_code: str | None
    asset_no: str | None
    status: EquipmentStatus | None
    calibration_due_at: datetime | None
    maintenance_due_at: datetime | None
    qualified_until: datetime | None
    cleanroom_class: str | None
    is_dry_room: bool
    description: str | None
    is_active: bool
    is_usable: bool
    blocking_reasons: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


class EquipmentList(BaseModel):
    items: list[EquipmentPublic]
    next_cursor: str | None


class StatusChange(Body):
    status: EquipmentStatus
    reason: Reason


class QualificationApproval(Body):
    """QA approval of an equipment qualification (IQ/OQ/PQ) with an e-signature."""

    qualified_until: UtcDateTime
    reason: Reason = "qualification approved"
    signature: SignatureInput


class QualificationResult(BaseModel):
    equipment: EquipmentPublic
    signature: SignaturePublic
