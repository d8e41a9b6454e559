"""Material definitions (ISA-95 material definition)."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field

from mes.models.base import VersionedRecord


class MaterialKind(StrEnum):
    monomer = "monomer"
    catalyst = "catalyst"
    initiator = "initiator"
    resin = "resin"
    fibre = "fibre"
    braid = "braid"
    suture = "suture"
    needle = "needle"
    coating = "coating"
    packaging = "packaging"
    label = "label"
    desiccant = "desiccant"
    device = "device"
    solvent = "solvent"
    consumable = "consumable"


class MaterialDefinition(VersionedRecord, table=True):
    __tablename__ = "material_definition"

    code: str = Field(max_length=40, unique=True, index=True)
    name: str = Field(max_length=200)
    kind: MaterialKind = Field(max_length=20, sa_type=String(20))
    base_uom: str = Field(max_length=20)
    shelf_life_days: int | None = Field(default=None, ge=0)
    moisture_sensitive: bool = False
    max_exposure_min: int | None = Field(default=None, ge=0)
    implant_traceable: bool = False
    gtin: str | None = Field(default=None, max_length=14, unique=True)
    description: str | None = Field(default=None, max_length=2000)
    is_active: bool = True
