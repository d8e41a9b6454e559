"""Request and response bodies of work masters, work orders, operations, deviations and
qualifications (API.md resource names and key fields)."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, StringConstraints, model_validator

from mes.clock import UtcDateTime
from mes.lot.schemas import Code, LotNumber, Quantity, Reason, Serial, SignedQuantity, Text, Uom
from mes.models import (
    DeviationStatus,
    OperationStatus,
    WorkMasterKind,
    WorkMasterStatus,
    WorkOrderStatus,
)
from mes.schemas import InputModel
from mes.signature.schemas import SignatureInput, SignaturePublic

Minutes = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=3)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,59}$")]
Percent = Annotated[Decimal, Field(ge=0, le=100, max_digits=6, decimal_places=3)]
Limit = Annotated[Decimal, Field(max_digits=20, decimal_places=6)]
OrderNumber = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_.-]{0,39}$")]
Capture = Literal["auto", "manual", "lab"]


class BomLine(InputModel):
    material_code: Code
    qty_per_unit: Quantity
    uom: Uom
    tolerance_pct: Percent = Decimal(0)
    allow_conditional: bool = False
    scan_required: bool = True


class ParameterSpec(InputModel):
    """A process parameter with its validated limits (PROC-1: a critical one needs a unit,
    a target, action limits and a source)."""

    name: Name
    uom: Uom
    target: Limit | None = None
    alert_low: Limit | None = None
    alert_high: Limit | None = None
    action_low: Limit | None = None
    action_high: Limit | None = None
    critical: bool = False
    capture: Capture = "manual"
    tag: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    # The unit's setpoint the target is downloaded to when the operation starts (recipe
    # download: written, read back and audited).
    setpoint_tag: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _limits(self) -> Self:
        order = [
            ("action_low", self.action_low),
            ("alert_low", self.alert_low),
            ("target", self.target),
            ("alert_high", self.alert_high),
            ("action_high", self.action_high),
        ]
        known = [(n, v) for n, v in order if v is not None]
        for (n1, v1), (n2, v2) in itertools.pairwise(known):
            if v1 > v2:
                raise ValueError(f"{n1} ({v1}) must not exceed {n2} ({v2})")
        if self.critical:
            missing = [n for n in ("target",) if getattr(self, n) is None]
            if self.action_low is None and self.action_high is None:
                missing.append("action_low/action_high")
            if missing:
                raise ValueError(f"critical parameter {self.name!r} needs {', '.join(missing)}")
        if self.capture == "auto" and self.tag is None:
            raise ValueError(f"parameter {self.name!r} is captured automatically: give its tag")
        if self.setpoint_tag is not None and self.target is None:
            raise ValueError(f"parameter {self.name!r} downloads a setpoint: give its target")
        return self


class CheckSpec(InputModel):
    name: Name
    description: Text


class OperationSpec(InputModel):
    seq: Annotated[int, Field(ge=1, le=9999)]
    name: Text
    work_center_code: Code
    eligible_equipment: list[Code] = Field(default_factory=list, max_length=100)
    equipment_class: Code | None = None
    setup_min: Minutes = Decimal(0)
    run_min_per_unit: Minutes = Decimal(0)
    # A unit that runs faster or slower than ``run_min_per_unit`` (unit code -> minutes).
    unit_run_min_per_unit: dict[Code, Minutes] = Field(default_factory=dict, max_length=100)
    fixed_min: Minutes = Decimal(0)
    changeover_family: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None
    cleaning_min: Minutes = Decimal(0)
    transfer_lag_min: Minutes = Decimal(0)
    # How much of this operation the next one may overlap (it starts once the rest is left,
    # and never ends before this one plus the transfer lag).
    overlap_pct: Annotated[Decimal, Field(ge=0, le=100)] = Decimal(0)
    bom: list[BomLine] = Field(default_factory=list, max_length=50)
    parameters: list[ParameterSpec] = Field(default_factory=list, max_length=100)
    checks: list[CheckSpec] = Field(default_factory=list, max_length=50)
    required_qualification: Code | None = None
    requires_verification: bool = False
    reports_output: bool = False

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for label, names in (
            ("parameter", [p.name for p in self.parameters]),
            ("check", [c.name for c in self.checks]),
            ("BOM material", [b.material_code for b in self.bom]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{label} listed twice: {', '.join(dupes)}")
        return self


class WorkMasterCreate(InputModel):
    """A new draft version of a routing or master recipe (version = last version + 1)."""

    code: Code
    name: Text
    kind: WorkMasterKind = WorkMasterKind.routing
    product_code: Code
    batch_size: Quantity
    uom: Uom
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    reconciliation_tolerance_pct: Percent = Field(
        default=Decimal(0),
        description="PR-2: allowed gap between started and good + scrap + samples",
    )
    operations: list[OperationSpec] = Field(min_length=1, max_length=100)
    reason: Reason = "draft created"

    @model_validator(mode="after")
    def _sequence(self) -> Self:
        seqs = [op.seq for op in self.operations]
        if len(set(seqs)) != len(seqs):
            raise ValueError("operation seq values must be unique")
        if not any(op.reports_output for op in self.operations):
            raise ValueError("one operation must report the output (reports_output: true)")
        return self


class WorkMasterUpdate(WorkMasterCreate):
    """Replaces a draft's content (If-Match, reason)."""

    reason: Reason


class WorkMasterApprove(InputModel):
    """PROC-1: a work master takes effect only after a signed approval. A tech transfer names
    the pilot batches that support it."""

    signature: SignatureInput
    supporting_pilot_orders: list[OrderNumber] = Field(default_factory=list, max_length=100)
    reason: Reason = "approved for production"


class ActionReason(InputModel):
    reason: Reason


class WorkMasterPublic(BaseModel):
    code: str
    version: int
    name: str
    kind: WorkMasterKind
    product_code: str
    batch_size: Decimal
    uom: str
    status: WorkMasterStatus
    description: str | None
    reconciliation_tolerance_pct: Decimal
    operations: list[OperationSpec]
    supporting_pilot_orders: list[str]
    pilot_orders: list[str] = Field(description="Pilot batches run on this version")
    created_by: str
    approved_at: datetime | None
    approval_signature: SignaturePublic | None
    record_version: int = Field(description="Optimistic-concurrency version (ETag)")
    created_at: datetime
    updated_at: datetime


class WorkMasterList(BaseModel):
    items: list[WorkMasterPublic]
    next_cursor: str | None


class WorkOrderCreate(InputModel):
    number: OrderNumber
    work_master_code: Code
    work_master_version: Annotated[int, Field(ge=1)] | None = None
    quantity: Quantity
    uom: Uom
    lot_number: LotNumber | None = None
    priority: Annotated[int, Field(ge=1, le=9)] = 5
    release_at: UtcDateTime | None = None
    due_at: UtcDateTime | None = None
    pilot: bool = False
    reason: Reason = "work order created"


class ReleaseAction(InputModel):
    reason: Reason = "released to the floor"


class SignedAction(InputModel):
    signature: SignatureInput
    reason: Reason


class OperationPublic(BaseModel):
    id: uuid.UUID
    work_order: str
    seq: int
    name: str
    status: OperationStatus
    work_center_code: str
    equipment_code: str | None
    planned_start: datetime | None
    planned_end: datetime | None
    planned_equipment_code: str | None
    needs_reschedule: bool
    reschedule_reason: str | None
    is_pilot: bool
    priority: int
    due_at: datetime | None
    requires_verification: bool
    line_clearance_by: str | None
    line_clearance_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    performer: str | None
    verifier: str | None
    version: int


class WorkOrderPublic(BaseModel):
    number: str
    product_code: str
    work_master_code: str
    work_master_version: int
    quantity: Decimal
    uom: str
    lot_number: str
    status: WorkOrderStatus
    priority: int
    release_at: datetime | None
    due_at: datetime | None
    pilot: bool
    good_quantity: Decimal
    scrap_quantity: Decimal
    sampled_quantity: Decimal
    started_at: datetime | None
    completed_at: datetime | None
    closed_at: datetime | None
    operations: list[OperationPublic]
    version: int
    created_at: datetime
    updated_at: datetime


class WorkOrderList(BaseModel):
    items: list[WorkOrderPublic]
    next_cursor: str | None


class QueueList(BaseModel):
    work_center_code: str
    items: list[OperationPublic]


class LineClearance(InputModel):
    """The line is clear of the previous product, its materials, labels and documents."""

    equipment_code: Code
    items: list[Text] = Field(min_length=1, max_length=30)


class StartRequest(InputModel):
    equipment_code: Code
    room_code: Code | None = None


class PauseRequest(InputModel):
    reason: Reason


class ConsumeRequest(InputModel):
    """ID-1: the lot by its scan - a GS1 string (GTIN + lot) or the plant's internal lot label
    (Code 128 without FNC1, ``]C0<lot number>``) - or typed with a reason."""

    scan: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    lot_number: LotNumber | None = None
    material_code: Code | None = None
    quantity: Quantity
    uom: Uom
    reason: Reason | None = None

    @model_validator(mode="after")
    def _identified(self) -> Self:
        if (self.scan is None) == (self.lot_number is None):
            raise ValueError("give either scan or lot_number")
        if self.lot_number is not None and self.reason is None:
            raise ValueError("a typed lot number needs a reason (ID-1)")
        return self


class ParameterEntry(InputModel):
    name: Name
    value: SignedQuantity
    uom: Uom
    source: Literal["manual", "auto"] = "manual"
    instrument: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None
    reason: Reason | None = None


class CheckEntry(InputModel):
    name: Name
    passed: bool
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    instrument: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None


class RecordRequest(InputModel):
    parameters: list[ParameterEntry] = Field(default_factory=list, max_length=100)
    checks: list[CheckEntry] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.parameters and not self.checks:
            raise ValueError("record at least one parameter value or check")
        return self


class OutputRequest(InputModel):
    quantity: Quantity
    uom: Uom
    scrap_quantity: Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=6)] = Decimal(0)
    sampled_quantity: Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=6)] = Decimal(0)
    serials: list[Serial] = Field(default_factory=list, max_length=10000)
    reason: Reason = "output reported"


class ConsumptionPublic(BaseModel):
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str
    scanned: bool
    at: datetime
    username: str


class ParameterValuePublic(BaseModel):
    id: uuid.UUID
    name: str
    value: Decimal
    uom: str
    source: str
    instrument: str | None
    limit_state: str
    deviation: str | None
    at: datetime
    username: str


class CheckResultPublic(BaseModel):
    name: str
    passed: bool
    note: str | None
    instrument: str | None
    deviation: str | None
    at: datetime
    username: str


class RecordResult(BaseModel):
    operation: OperationPublic
    parameters: list[ParameterValuePublic]
    checks: list[CheckResultPublic]


class OutputResult(BaseModel):
    operation: OperationPublic
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str
    serials: int


class SignedOperation(BaseModel):
    operation: OperationPublic
    signature: SignaturePublic


class DeviationPublic(BaseModel):
    number: str
    kind: str
    status: DeviationStatus
    work_order: str | None
    operation_seq: int | None
    description: str
    opened_at: datetime
    opened_by: str
    disposition: str | None
    closed_at: datetime | None
    closed_by: str | None
    version: int


class DeviationList(BaseModel):
    items: list[DeviationPublic]
    next_cursor: str | None


class DeviationClose(InputModel):
    disposition: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)
    ]
    signature: SignatureInput


class QualificationGrant(InputModel):
    code: Code
    valid_until: UtcDateTime
    reason: Reason


class QualificationPublic(BaseModel):
    username: str
    code: str
    valid_until: datetime
    granted_by: str
    current: bool
    version: int


class QualificationList(BaseModel):
    items: list[QualificationPublic]
