"""Work masters, work orders, operations and their executions, recorded parameter values and
in-process checks, deviations and operator qualifications.

A work master version is a document: its operation specs (BOM lines, parameter specs, checks)
are validated as a whole and frozen when approved, so they are stored as one JSON document per
version; a work order freezes a copy of it (``snapshot``). ``parameter_value`` and
``check_result`` are append-only (AT-4): a correction is a new row that supersedes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, String, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from mes.clock import utc_now
from mes.ids import uuid7
from mes.models.base import ExactDecimal, VersionedRecord, id_field, seq_column, utc_field

QTY = ExactDecimal()


class WorkMasterKind(StrEnum):
    master_recipe = "master_recipe"
    routing = "routing"
    rework = "rework"
    sterilization_cycle = "sterilization_cycle"


class WorkMasterStatus(StrEnum):
    draft = "draft"
    approved = "approved"
    retired = "retired"


class WorkOrderStatus(StrEnum):
    """DOMAIN 3.1."""

    draft = "draft"
    released = "released"
    in_progress = "in_progress"
    held = "held"
    completed = "completed"
    closed = "closed"
    cancelled = "cancelled"
    aborted = "aborted"


class OperationStatus(StrEnum):
    """DOMAIN 3.2."""

    waiting = "waiting"
    ready = "ready"
    running = "running"
    paused = "paused"
    held = "held"
    completed = "completed"
    verified = "verified"
    skipped = "skipped"
    aborted = "aborted"


class DeviationStatus(StrEnum):
    open = "open"
    closed = "closed"


class WorkMaster(VersionedRecord, table=True):
    """One version (``revision``) of a routing or master recipe."""

    __tablename__ = "work_master"
    __table_args__ = (UniqueConstraint("code", "revision"),)

    code: str = Field(max_length=40, index=True)
    revision: int = Field(ge=1)
    name: str = Field(max_length=200)
    kind: WorkMasterKind = Field(max_length=30, sa_type=String(30))
    product_id: uuid.UUID = Field(foreign_key="material_definition.id", index=True)
    batch_size: Decimal = Field(sa_type=QTY)
    uom: str = Field(max_length=20)
    status: WorkMasterStatus = Field(max_length=20, sa_type=String(20), index=True)
    operations: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    description: str | None = Field(default=None, max_length=2000)
    reconciliation_tolerance_pct: Decimal = Field(default=Decimal(0), sa_type=QTY)
    supporting_pilot_orders: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_by: str = Field(max_length=64)
    approval_signature_id: uuid.UUID | None = Field(default=None, foreign_key="e_signature.id")
    approved_at: datetime | None = utc_field(default=None)


class WorkOrder(VersionedRecord, table=True):
    __tablename__ = "work_order"

    number: str = Field(max_length=40, unique=True, index=True)
    work_master_id: uuid.UUID = Field(foreign_key="work_master.id", index=True)
    master_code: str = Field(max_length=40)
    master_revision: int
    snapshot: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    product_id: uuid.UUID = Field(foreign_key="material_definition.id", index=True)
    quantity: Decimal = Field(sa_type=QTY)
    uom: str = Field(max_length=20)
    lot_number: str = Field(max_length=20)
    status: WorkOrderStatus = Field(max_length=20, sa_type=String(20), index=True)
    priority: int = Field(default=5, ge=1, le=9)
    release_at: datetime | None = utc_field(default=None)
    due_at: datetime | None = utc_field(default=None)
    is_pilot: bool = False
    good_qty: Decimal = Field(default=Decimal(0), sa_type=QTY)
    scrap_qty: Decimal = Field(default=Decimal(0), sa_type=QTY)
    sampled_qty: Decimal = Field(default=Decimal(0), sa_type=QTY)
    output_lot_id: uuid.UUID | None = Field(default=None, foreign_key="lot.id")
    started_at: datetime | None = utc_field(default=None)
    completed_at: datetime | None = utc_field(default=None)
    closed_at: datetime | None = utc_field(default=None)
    created_by: str = Field(max_length=64)
    close_signature_id: uuid.UUID | None = Field(default=None, foreign_key="e_signature.id")


class Operation(VersionedRecord, table=True):
    """One step of one work order at one work center (ISA-95 job order)."""

    __tablename__ = "operation"
    __table_args__ = (
        UniqueConstraint("work_order_id", "seq"),
        Index("ix_operation_work_center_id_status", "work_center_id", "status"),
    )

    work_order_id: uuid.UUID = Field(foreign_key="work_order.id", index=True)
    seq: int
    name: str = Field(max_length=200)
    work_center_id: uuid.UUID = Field(foreign_key="equipment.id")
    status: OperationStatus = Field(max_length=20, sa_type=String(20))
    equipment_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id", index=True)
    planned_start: datetime | None = utc_field(default=None)
    planned_end: datetime | None = utc_field(default=None)
    # The unit and the run of the published schedule (no foreign keys: added to a table that
    # others reference, which SQLite could only do by rebuilding it).
    planned_equipment_id: uuid.UUID | None = Field(default=None)
    schedule_run_id: uuid.UUID | None = Field(default=None)
    needs_reschedule: bool = False
    reschedule_reason: str | None = Field(default=None, max_length=1000)
    clearance_equipment_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id")
    clearance_by: str | None = Field(default=None, max_length=64)
    clearance_at: datetime | None = utc_field(default=None)
    clearance_items: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    # The current execution (no foreign key: operation_execution already references operation).
    execution_id: uuid.UUID | None = Field(default=None)


class OperationExecution(SQLModel, table=True):
    """The actual run of an operation: who, where, when; consumed and produced transactions,
    parameter values and checks carry its id."""

    __tablename__ = "operation_execution"

    id: uuid.UUID = id_field()
    operation_id: uuid.UUID = Field(foreign_key="operation.id", index=True, unique=True)
    work_order_id: uuid.UUID = Field(foreign_key="work_order.id", index=True)
    equipment_id: uuid.UUID = Field(foreign_key="equipment.id")
    room_id: uuid.UUID | None = Field(default=None, foreign_key="equipment.id")
    terminal: str | None = Field(default=None, max_length=100)
    started_at: datetime = utc_field(default_factory=utc_now)
    started_by: str = Field(max_length=64)
    ended_at: datetime | None = utc_field(default=None)
    paused_min: Decimal = Field(default=Decimal(0), sa_type=QTY)
    paused_at: datetime | None = utc_field(default=None)
    performer: str | None = Field(default=None, max_length=64)
    completion_signature_id: uuid.UUID | None = Field(default=None, foreign_key="e_signature.id")
    verifier: str | None = Field(default=None, max_length=64)
    verification_signature_id: uuid.UUID | None = Field(default=None, foreign_key="e_signature.id")


class ParameterValue(SQLModel, table=True):
    """A recorded process-parameter value, kept as measured (PROC-2)."""

    __tablename__ = "parameter_value"

    seq: int | None = Field(default=None, sa_column=seq_column())
    id: uuid.UUID = Field(default_factory=uuid7, unique=True)
    execution_id: uuid.UUID = Field(foreign_key="operation_execution.id", index=True)
    work_order_id: uuid.UUID = Field(foreign_key="work_order.id", index=True)
    name: str = Field(max_length=60)
    value: Decimal = Field(sa_type=QTY)
    uom: str = Field(max_length=20)
    entered_value: Decimal = Field(sa_type=QTY)
    entered_uom: str = Field(max_length=20)
    source: str = Field(max_length=10)
    instrument: str | None = Field(default=None, max_length=60)
    limit_state: str = Field(max_length=10)
    deviation_id: uuid.UUID | None = Field(default=None, foreign_key="deviation.id")
    supersedes_id: uuid.UUID | None = Field(default=None, unique=True)
    at: datetime = utc_field(default_factory=utc_now)
    username: str = Field(max_length=64)
    reason: str | None = Field(default=None, max_length=1000)


class CheckResult(SQLModel, table=True):
    """An in-process check (pass/fail) with who did it and with which instrument (PR-3)."""

    __tablename__ = "check_result"

    seq: int | None = Field(default=None, sa_column=seq_column())
    id: uuid.UUID = Field(default_factory=uuid7, unique=True)
    execution_id: uuid.UUID = Field(foreign_key="operation_execution.id", index=True)
    work_order_id: uuid.UUID = Field(foreign_key="work_order.id", index=True)
    name: str = Field(max_length=60)
    passed: bool
    note: str | None = Field(default=None, max_length=1000)
    instrument: str | None = Field(default=None, max_length=60)
    deviation_id: uuid.UUID | None = Field(default=None, foreign_key="deviation.id")
    at: datetime = utc_field(default_factory=utc_now)
    username: str = Field(max_length=64)


class Deviation(VersionedRecord, table=True):
    """A departure from the instruction or a limit, linked to its work order (PROC-2)."""

    __tablename__ = "deviation"

    number: str = Field(max_length=40, unique=True, index=True)
    kind: str = Field(max_length=30)
    status: DeviationStatus = Field(max_length=20, sa_type=String(20), index=True)
    work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_order.id", index=True)
    operation_id: uuid.UUID | None = Field(default=None, foreign_key="operation.id")
    description: str = Field(max_length=2000)
    opened_at: datetime = utc_field(default_factory=utc_now)
    opened_by: str = Field(max_length=64)
    disposition: str | None = Field(default=None, max_length=2000)
    closed_at: datetime | None = utc_field(default=None)
    closed_by: str | None = Field(default=None, max_length=64)
    close_signature_id: uuid.UUID | None = Field(default=None, foreign_key="e_signature.id")


class Qualification(VersionedRecord, table=True):
    """A person's current qualification (training) for a kind of work, until a date."""

    __tablename__ = "qualification"
    __table_args__ = (UniqueConstraint("username", "code"),)

    username: str = Field(max_length=64, index=True)
    code: str = Field(max_length=40)
    valid_until: datetime = utc_field()
    granted_by: str = Field(max_length=64)
