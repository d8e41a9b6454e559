"""Request and response bodies of the lot API."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from mes.clock import UtcDateTime
from mes.models import LotOrigin, LotStatus, TransactionKind
from mes.schemas import InputModel
from mes.signature.schemas import SignatureInput, SignaturePublic
from mes.units import check_uom

# GS1 CSET 82 (UDI-2): what AI (10) and (21) may carry.
CSET82 = r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}$"
RESERVED_LOT_NUMBERS = frozenset({"receive", "produce", "merge"})


def _not_reserved(value: str) -> str:
    if value.lower() in RESERVED_LOT_NUMBERS:
        raise ValueError(f"{value!r} is reserved by the API and cannot be a lot number")
    return value


LotNumber = Annotated[str, StringConstraints(pattern=CSET82), AfterValidator(_not_reserved)]
Serial = Annotated[str, StringConstraints(pattern=CSET82)]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_.-]{0,39}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Uom = Annotated[str, StringConstraints(min_length=1, max_length=20), AfterValidator(check_uom)]
Quantity = Annotated[Decimal, Field(gt=0, max_digits=20, decimal_places=6)]
SignedQuantity = Annotated[Decimal, Field(max_digits=20, decimal_places=6)]


class LotReceive(InputModel):
    """A raw-material receipt with the supplier's certificate of analysis reference."""

    material_code: Code
    lot_number: LotNumber
    quantity: Quantity
    uom: Uom
    supplier: Text
    supplier_lot: Annotated[str, StringConstraints(min_length=1, max_length=60)]
    coa_ref: Text
    manufactured_at: UtcDateTime | None = None
    expires_at: UtcDateTime | None = None
    retest_at: UtcDateTime | None = None
    reason: Reason = "received"


class LotPublic(BaseModel):
    id: uuid.UUID
    lot_number: str
    material_code: str
    origin: LotOrigin
    status: LotStatus
    held_from_status: LotStatus | None
    quantity: Decimal = Field(description="Remaining quantity in the lot's unit")
    initial_quantity: Decimal
    uom: str
    supplier: str | None
    supplier_lot: str | None
    coa_ref: str | None
    manufactured_at: datetime | None
    expires_at: datetime | None
    retest_at: datetime | None
    execution_id: uuid.UUID | None
    version: int
    created_at: datetime
    updated_at: datetime


class LotList(BaseModel):
    items: list[LotPublic]
    next_cursor: str | None


class StatusChange(InputModel):
    """A disposition change; release, rejection and hold release need an e-signature."""

    status: LotStatus
    reason: Reason
    signature: SignatureInput | None = None


class StatusResult(BaseModel):
    lot: LotPublic
    signature: SignaturePublic | None


class TransactionRequest(InputModel):
    """A movement that is not part of production: sample, scrap, adjustment, transfer,
    shipment or return. ``quantity`` is signed only for adjustments."""

    kind: TransactionKind
    quantity: SignedQuantity
    uom: Uom
    reason: Reason
    sublot_code: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None
    location_from: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    location_to: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    consignee: Text | None = None


class Reversal(InputModel):
    reason: Reason


class TransactionPublic(BaseModel):
    id: uuid.UUID
    seq: int
    at: datetime
    kind: TransactionKind
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str
    entered_quantity: Decimal
    entered_uom: str
    execution_id: uuid.UUID | None
    reverses_id: uuid.UUID | None
    username: str
    reason: str
    location_from: str | None
    location_to: str | None
    consignee: str | None


class TransactionList(BaseModel):
    items: list[TransactionPublic]
    next_cursor: str | None


class SublotCreate(InputModel):
    code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,40}$")]
    quantity: Quantity
    uom: Uom
    location: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    reason: Reason = "container registered"


class SublotPublic(BaseModel):
    code: str
    lot_number: str
    quantity: Decimal
    uom: str
    location: str | None
    version: int


class SerialsCreate(InputModel):
    serials: list[Serial] = Field(min_length=1, max_length=10000)
    reason: Reason = "serials assigned"


class SerialPublic(BaseModel):
    gtin: str
    serial: str
    lot_number: str
    created_at: datetime


class SerialList(BaseModel):
    items: list[SerialPublic]
    next_cursor: str | None


class LotRef(InputModel):
    lot_number: LotNumber
    material_code: Code | None = None


class LoadCreate(InputModel):
    load_no: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,40}$")]
    sterilizer_code: Code
    lots: list[LotRef] = Field(min_length=1, max_length=500)
    reason: Reason = "sterilization load built"


class LoadPublic(BaseModel):
    load_no: str
    sterilizer_code: str
    result: str
    lots: list[str]
    version: int
    created_at: datetime
