"""Material lots, sublots, serial units, material transactions, disposition history,
genealogy edges and their closure, sterilization loads and scan events.

``material_transaction``, ``lot_status_transition``, ``genealogy_edge``, ``lot_reach`` and
``scan_event`` are append-only (AT-4): corrections are new rows that reverse or supersede,
never edits.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, String, UniqueConstraint, text
from sqlmodel import Column, Field, SQLModel

from mes.clock import utc_now
from mes.ids import uuid7
from mes.models.base import ExactDecimal, VersionedRecord, id_field, seq_column, utc_field

QTY = ExactDecimal()


class LotStatus(StrEnum):
    """Disposition (ISO 13485 7.5.8; DOMAIN 3.3)."""

    quarantine = "quarantine"
    under_test = "under_test"
    released = "released"
    conditionally_released = "conditionally_released"
    on_hold = "on_hold"
    rejected = "rejected"
    expired = "expired"
    consumed = "consumed"
    scrapped = "scrapped"
    returned_to_supplier = "returned_to_supplier"
    in_rework = "in_rework"
    shipped = "shipped"
    returned = "returned"


class LotOrigin(StrEnum):
    received = "received"
    produced = "produced"


class TransactionKind(StrEnum):
    """Material use of a transaction (ISA-95 material actual)."""

    received = "received"
    consumed = "consumed"
    produced = "produced"
    sampled = "sampled"
    scrapped = "scrapped"
    adjusted = "adjusted"
    transferred = "transferred"
    shipped = "shipped"
    returned = "returned"


class EdgeKind(StrEnum):
    transform = "transform"
    lot_split = "split"
    blend = "merge"
    rework = "rework"


class Lot(VersionedRecord, table=True):
    """One lot of one material definition: lot number unique per definition."""

    __tablename__ = "lot"
    __table_args__ = (
        UniqueConstraint("material_id", "lot_number"),
        Index("ix_lot_id_material_id", "id", "material_id"),
    )

    lot_number: str = Field(max_length=20, index=True)
    material_id: uuid.UUID = Field(foreign_key="material_definition.id", index=True)
    origin: LotOrigin = Field(max_length=20, sa_type=String(20))
    status: LotStatus = Field(max_length=30, sa_type=String(30), index=True)
    held_from_status: LotStatus | None = Field(default=None, max_length=30, sa_type=String(30))
    uom: str = Field(max_length=20)
    initial_qty: Decimal = Field(sa_type=QTY)
    remaining_qty: Decimal = Field(sa_type=QTY)
    supplier: str | None = Field(default=None, max_length=200)
    supplier_lot: str | None = Field(default=None, max_length=60)
    coa_ref: str | None = Field(default=None, max_length=200)
    manufactured_at: datetime | None = utc_field(default=None)
    expires_at: datetime | None = utc_field(default=None)
    retest_at: datetime | None = utc_field(default=None)
    execution_id: uuid.UUID | None = Field(default=None, index=True)
    # Output of a pilot batch on a draft work master: never released for distribution.
    is_pilot: bool = False


class Sublot(VersionedRecord, table=True):
    """A container of a lot (drum, bobbin, tray) that shares the lot's disposition."""

    __tablename__ = "sublot"
    __table_args__ = (UniqueConstraint("lot_id", "code"),)

    lot_id: uuid.UUID = Field(foreign_key="lot.id", index=True)
    code: str = Field(max_length=40)
    quantity: Decimal = Field(sa_type=QTY)
    location: str | None = Field(default=None, max_length=100)


class SerialUnit(SQLModel, table=True):
    """One serialised unit of a lot: GTIN + serial unique (UDI-2)."""

    __tablename__ = "serial_unit"
    __table_args__ = (UniqueConstraint("gtin", "serial"),)

    id: uuid.UUID = id_field()
    lot_id: uuid.UUID = Field(foreign_key="lot.id", index=True)
    gtin: str = Field(max_length=14)
    serial: str = Field(max_length=20)
    created_at: datetime = utc_field(default_factory=utc_now)
    created_by: str = Field(max_length=64)


class MaterialTransaction(SQLModel, table=True):
    """Append-only material movement. ``quantity`` is signed in the lot's unit: receipts and
    production add, consumption, samples, scrap and shipments subtract."""

    __tablename__ = "material_transaction"
    # Recall impact looks up shipments of 100k+ lots: a small index of shipments only, which
    # on PostgreSQL carries what the recall lists (no visit to the table per shipment).
    __table_args__ = (
        Index(
            "ix_material_transaction_shipped_lot_id",
            "lot_id",
            postgresql_where=text("kind = 'shipped'"),
            postgresql_include=["at", "quantity", "uom", "consignee"],
            sqlite_where=text("kind = 'shipped'"),
        ),
    )

    seq: int | None = Field(default=None, sa_column=seq_column())
    id: uuid.UUID = Field(default_factory=uuid7, unique=True)
    at: datetime = utc_field(default_factory=utc_now)
    kind: TransactionKind = Field(max_length=20, sa_type=String(20))
    lot_id: uuid.UUID = Field(foreign_key="lot.id", index=True)
    sublot_id: uuid.UUID | None = Field(default=None, foreign_key="sublot.id")
    quantity: Decimal = Field(sa_type=QTY)
    uom: str = Field(max_length=20)
    entered_quantity: Decimal = Field(sa_type=QTY)
    entered_uom: str = Field(max_length=20)
    execution_id: uuid.UUID | None = Field(default=None, index=True)
    reverses_id: uuid.UUID | None = Field(default=None, unique=True)
    username: str = Field(max_length=64)
    reason: str = Field(max_length=1000)
    location_from: str | None = Field(default=None, max_length=100)
    location_to: str | None = Field(default=None, max_length=100)
    consignee: str | None = Field(default=None, max_length=200)


class LotStatusTransition(SQLModel, table=True):
    """Append-only disposition history of a lot."""

    __tablename__ = "lot_status_transition"

    seq: int | None = Field(default=None, sa_column=seq_column())
    lot_id: uuid.UUID = Field(foreign_key="lot.id", index=True)
    from_status: str | None = Field(default=None, max_length=30)
    to_status: str = Field(max_length=30)
    at: datetime = utc_field(default_factory=utc_now)
    username: str = Field(max_length=64)
    reason: str = Field(max_length=1000)
    source: str = Field(max_length=30)
    signature_id: uuid.UUID | None = Field(default=None, foreign_key="e_signature.id")


class GenealogyEdge(SQLModel, table=True):
    """Parent lot -> child lot, recorded when the work happens (never inferred later)."""

    __tablename__ = "genealogy_edge"
    # Both directions of a walk read only the index (no heap fetch per edge).
    __table_args__ = (
        Index("ix_genealogy_edge_parent_lot_id", "parent_lot_id", "child_lot_id"),
        Index("ix_genealogy_edge_child_lot_id", "child_lot_id", "parent_lot_id"),
    )

    id: uuid.UUID = id_field()
    parent_lot_id: uuid.UUID = Field(foreign_key="lot.id")
    child_lot_id: uuid.UUID = Field(foreign_key="lot.id")
    kind: EdgeKind = Field(max_length=20, sa_type=String(20))
    quantity: Decimal = Field(sa_type=QTY)
    uom: str = Field(max_length=20)
    execution_id: uuid.UUID = Field(index=True)
    at: datetime = utc_field(default_factory=utc_now)


class LotReach(SQLModel, table=True):
    """The transitive closure of ``genealogy_edge``: one row per (ancestor, descendant) pair
    of lots joined by a path of one or more edges, so everything made from a lot is one index
    range rather than a recursive walk. Derived from the edges, in the transaction of every
    edge insert; append-only like them. Its ends are lots, but it carries no foreign keys: it
    is rebuilt from edges whose ends are."""

    __tablename__ = "lot_reach"

    ancestor_lot_id: uuid.UUID = Field(primary_key=True)
    descendant_lot_id: uuid.UUID = Field(primary_key=True)


class SterilizationLoad(VersionedRecord, table=True):
    """One sterilization cycle and the lots in it: an event, not a transformation."""

    __tablename__ = "sterilization_load"

    load_no: str = Field(max_length=40, unique=True, index=True)
    sterilizer_id: uuid.UUID = Field(foreign_key="equipment.id")
    result: str = Field(default="pending", max_length=20)


class LoadItem(SQLModel, table=True):
    __tablename__ = "load_item"
    __table_args__ = (UniqueConstraint("load_id", "lot_id"),)

    id: uuid.UUID = id_field()
    load_id: uuid.UUID = Field(foreign_key="sterilization_load.id", index=True)
    lot_id: uuid.UUID = Field(foreign_key="lot.id", index=True)
    quantity: Decimal = Field(sa_type=QTY)
    uom: str = Field(max_length=20)


class ScanEvent(SQLModel, table=True):
    """Every scan attempt, good or bad, with what was read and what it meant."""

    __tablename__ = "scan_event"

    seq: int | None = Field(default=None, sa_column=seq_column())
    id: uuid.UUID = Field(default_factory=uuid7, unique=True)
    at: datetime = utc_field(default_factory=utc_now)
    username: str = Field(max_length=64)
    raw_escaped: str = Field(max_length=1000)
    symbology_id: str | None = Field(default=None, max_length=3)
    outcome: str = Field(max_length=20)
    parsed: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    errors: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    context: str | None = Field(default=None, max_length=100)
