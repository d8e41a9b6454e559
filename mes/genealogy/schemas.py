"""Bodies of the genealogy API: production, split, merge, traces, recall impact, mass balance."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from mes.genealogy.repository import Direction
from mes.lot.schemas import Code, LotNumber, Quantity, Reason, Uom
from mes.schemas import InputModel


class InputLot(InputModel):
    lot_number: LotNumber
    material_code: Code | None = None
    quantity: Quantity
    uom: Uom


class ProduceRequest(InputModel):
    """One execution: the listed input lots are consumed and one new lot is produced."""

    material_code: Code
    lot_number: LotNumber
    quantity: Quantity
    uom: Uom
    inputs: list[InputLot] = Field(min_length=1, max_length=200)
    execution_id: uuid.UUID | None = None
    reason: Reason = "produced"


class SplitPart(InputModel):
    lot_number: LotNumber
    quantity: Quantity
    uom: Uom


class SplitRequest(InputModel):
    parts: list[SplitPart] = Field(min_length=1, max_length=200)
    reason: Reason


class MergeInput(InputModel):
    lot_number: LotNumber
    material_code: Code | None = None


class MergeRequest(InputModel):
    """A blend of lots of one material into a new lot (all remaining quantity)."""

    lot_number: LotNumber
    inputs: list[MergeInput] = Field(min_length=2, max_length=200)
    reason: Reason


class ExecutionResult(BaseModel):
    execution_id: uuid.UUID
    consumed: list[str]
    produced: list[str]


class TraceNode(BaseModel):
    lot_number: str
    material_code: str
    material_kind: str
    status: str
    quantity: Decimal
    uom: str
    depth: int
    loads: list[str]


class TraceEdge(BaseModel):
    parent: str
    child: str
    kind: str
    quantity: Decimal
    uom: str
    execution_id: uuid.UUID


class Trace(BaseModel):
    """Genealogy of one lot: every lot reached, with its depth, and the edges walked."""

    lot_number: str
    material_code: str
    direction: Direction
    max_depth: int
    depth_limited: bool = Field(description="True when lots lie beyond max_depth")
    nodes: list[TraceNode]
    edges: list[TraceEdge]


# The rows of a recall are plain slotted dataclasses, not models: a recall lists 100k+ of them,
# and making each costs a fraction of a model's. Pydantic validates and serialises them as
# objects all the same (RecallImpact below, the OpenAPI schema, JSON).


@dataclass(slots=True)
class ImpactedLot:
    lot_number: str
    material_code: str
    gtin: str | None
    status: str
    quantity: Decimal
    uom: str
    serials: int


@dataclass(slots=True)
class Shipment:
    lot_number: str
    consignee: str | None
    quantity: Decimal
    uom: str
    at: datetime


class RecallImpact(BaseModel):
    """Everything a recall of a suspect lot must reach (TR-3): finished lots and serials,
    sterilization loads, and shipments with their consignees where known."""

    suspect_lot: str
    material_code: str
    finished_lots: list[ImpactedLot]
    finished_lot_count: int
    serial_count: int
    loads: list[str]
    shipments: list[Shipment]


class BalanceLine(BaseModel):
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str


class ExecutionBalance(BaseModel):
    execution_id: uuid.UUID
    inputs: list[BalanceLine]
    outputs: list[BalanceLine]
    input_totals: dict[str, Decimal]
    output_totals: dict[str, Decimal]


class MassBalance(BaseModel):
    """Lot ledger (in - consumed - sampled - scrapped +/- adjusted = remaining) and the
    executions that made the lot, inputs against outputs per unit."""

    lot_number: str
    material_code: str
    uom: str
    ledger: dict[str, Decimal]
    remaining: Decimal
    balanced: bool
    executions: list[ExecutionBalance]
