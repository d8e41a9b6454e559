"""Plant model tables (ISA-95 equipment hierarchy and equipment classes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field

from mes.models.base import VersionedRecord, utc_field


class EquipmentLevel(StrEnum):
    enterprise = "enterprise"
    site = "site"
    area = "area"
    work_center = "work_center"
    unit = "unit"
    room = "room"


class EquipmentKind(StrEnum):
    process_cell = "process_cell"
    production_line = "production_line"
    work_cell = "work_cell"
    storage_zone = "storage_zone"
    unit = "unit"
    storage_unit = "storage_unit"
    equipment_module = "equipment_module"
    control_module = "control_module"


class EquipmentStatus(StrEnum):
    idle = "idle"
    running = "running"
    down = "down"
    cleaning = "cleaning"
    maintenance = "maintenance"


class EquipmentClass(VersionedRecord, table=True):
    __tablename__ = "equipment_class"

    code: str = Field(max_length=40, unique=True, index=True)
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class Equipment(VersionedRecord, table=True):
    """One node of the hierarchy: enterprise, site, area, work center, unit or room."""

    __tablename__ = "equipment"

    code: str = Field(max_length=40, unique=True, index=True)
    name: str = Field(max_length=200)
    level: EquipmentLevel = Field(max_length=20, sa_type=String(20), index=True)
    kind: EquipmentKind | None = Field(default=None, max_length=30, sa_type=String(30))
    parent_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id", index=True)
    site_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id", index=True)
    equipment_class_id: uuid.UUID | None = Field(default=None, foreign_key="equipment_class.id")
    room_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id")
    asset_no: str | None = Field(default=None, max_length=60)
    status: EquipmentStatus | None = Field(default=None, max_length=20, sa_type=String(20))
    calibration_due_at: datetime | None = utc_field(default=None)
    maintenance_due_at: datetime | None = utc_field(default=None)
    qualified_until: datetime | None = utc_field(default=None)
    cleanroom_class: str | None = Field(default=None, max_length=10)
    is_dry_room: bool = False
    description: str | None = Field(default=None, max_length=2000)
    is_active: bool = True
