"""Creating a work order (DOMAIN 3.1): the master version it runs, the lot it will make, a
frozen copy of the version and one operation per step."""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.audit.rules import to_jsonable
from mes.context import AppContext
from mes.errors import Conflict, InvalidInput, NotFound
from mes.lot import service as lots
from mes.models import (
    Equipment,
    MaterialDefinition,
    Operation,
    OperationStatus,
    WorkMaster,
    WorkMasterStatus,
    WorkOrder,
    WorkOrderStatus,
)
from mes.principal import Principal
from mes.work import masters
from mes.work.orders import ORDER_FIELDS, check_master_usable, view
from mes.work.schemas import WorkOrderCreate

_ORDER_NUMBER_TAKEN = select(WorkOrder.id).where(col(WorkOrder.number) == bindparam("number"))
_LOT_NUMBER_PLANNED = select(WorkOrder.number).where(
    col(WorkOrder.product_id) == bindparam("material_id"),
    col(WorkOrder.lot_number) == bindparam("lot_number"),
    col(WorkOrder.status).not_in([WorkOrderStatus.cancelled, WorkOrderStatus.aborted]),
)
_UNIT_ID = select(Equipment.id).where(col(Equipment.code) == bindparam("code"))
_LATEST = (
    select(WorkMaster)
    .where(col(WorkMaster.code) == bindparam("code"), col(WorkMaster.status) == bindparam("status"))
    .order_by(col(WorkMaster.revision).desc())
    .limit(1)
)


async def create(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: WorkOrderCreate
) -> WorkOrder:
    """A draft order with a frozen copy of its work master version and one operation per step.
    Production orders need an approved version (PROC-1); a pilot batch runs a draft."""
    if (await session.execute(_ORDER_NUMBER_TAKEN, {"number": data.number})).first():
        raise Conflict(f"work order {data.number} already exists", field="number")
    wm = await _master_of(session, data)
    product = await session.get(MaterialDefinition, wm.product_id)
    assert product is not None  # foreign key
    quantity = lots.convert_quantity(data.quantity, data.uom, wm.uom, "uom")
    lot_number = data.lot_number or data.number
    await _check_lot_free(session, product, lot_number)
    if data.due_at is not None and data.release_at is not None and data.due_at < data.release_at:
        raise InvalidInput("due_at is before release_at", field="due_at")
    now = ctx.clock.now()
    order = WorkOrder(
        number=data.number,
        work_master_id=wm.id,
        master_code=wm.code,
        master_revision=wm.revision,
        snapshot=to_jsonable(await masters.view(session, wm)),
        product_id=product.id,
        quantity=quantity,
        uom=wm.uom,
        lot_number=lot_number,
        status=WorkOrderStatus.draft,
        priority=data.priority,
        release_at=data.release_at,
        due_at=data.due_at,
        is_pilot=data.pilot,
        created_by=principal.username,
        created_at=now,
        updated_at=now,
    )
    session.add(order)
    await session.flush()
    for spec in wm.operations:
        wc = await session.execute(_UNIT_ID, {"code": spec["work_center_code"]})
        session.add(
            Operation(
                work_order_id=order.id,
                seq=spec["seq"],
                name=spec["name"],
                work_center_id=wc.scalar_one(),
                status=OperationStatus.waiting,
                created_at=now,
                updated_at=now,
            )
        )
    await session.flush()
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="work_order",
        entity_id=order.number,
        entity_version=order.version,
        old=None,
        new=view(order),
        fields=ORDER_FIELDS,
        reason=data.reason,
    )
    return order


async def _master_of(session: AsyncSession, data: WorkOrderCreate) -> WorkMaster:
    """The version the order names, else the latest approved one (a pilot batch: the latest
    draft); usable for this kind of order (PROC-1)."""
    if data.work_master_version is not None:
        try:
            wm = await masters.get(session, data.work_master_code, data.work_master_version)
        except NotFound as exc:
            raise InvalidInput(exc.detail, field="work_master_version") from exc
    else:
        status = WorkMasterStatus.draft if data.pilot else WorkMasterStatus.approved
        wm = await _latest(session, data.work_master_code, status)
    check_master_usable(wm, data.pilot, "work_master_version")
    return wm


async def _latest(session: AsyncSession, code: str, status: WorkMasterStatus) -> WorkMaster:
    found = (await session.execute(_LATEST, {"code": code, "status": status})).scalars().first()
    if found is None:
        exists = (
            await session.execute(select(WorkMaster.id).where(WorkMaster.code == code))
        ).first()
        if exists is None:
            raise InvalidInput(f"work master {code!r} does not exist", field="work_master_code")
        raise Conflict(
            f"work master {code} has no {status} version",
            rule="PROC-1",
            field="work_master_code",
        )
    return found


async def _check_lot_free(
    session: AsyncSession, product: MaterialDefinition, lot_number: str
) -> None:
    """The order's lot number fits a lot, and no lot or live order has it already."""
    if len(lot_number) > 20:
        raise InvalidInput(
            "the order number is longer than a lot number may be (20); give lot_number",
            field="lot_number",
        )
    lot_key = {"material_id": product.id, "lot_number": lot_number}
    if (await session.execute(lots.LOT_ID, lot_key)).first() is not None:
        raise Conflict(f"lot {lot_number} of {product.code} already exists", field="lot_number")
    other = (await session.execute(_LOT_NUMBER_PLANNED, lot_key)).scalars().first()
    if other is not None:
        raise Conflict(
            f"lot {lot_number} of {product.code} is already planned by work order {other}",
            field="lot_number",
        )
