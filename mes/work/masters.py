"""Work masters (routings and master recipes): versioned drafts, signed approval (PROC-1),
retirement, and the tech transfer of a pilot-proven draft to production."""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from mes.audit import service as audit
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import Forbidden, InvalidInput, InvalidTransition, NotFound
from mes.lot import service as lots
from mes.models import (
    AuditEntry,
    EquipmentLevel,
    ESignature,
    MaterialDefinition,
    SignatureMeaning,
    WorkMaster,
    WorkMasterStatus,
    WorkOrder,
)
from mes.principal import Principal
from mes.records import apply_update, bump_version, check_version, fetch_page
from mes.signature import service as signatures
from mes.work.schemas import (
    WorkMasterApprove,
    WorkMasterCreate,
    WorkMasterPublic,
    WorkMasterUpdate,
)

CONTENT_FIELDS = (
    "name",
    "kind",
    "product_code",
    "batch_size",
    "uom",
    "description",
    "reconciliation_tolerance_pct",
    "operations",
    "status",
    "supporting_pilot_orders",
)


def record_id(wm: WorkMaster) -> str:
    return f"{wm.code}/{wm.revision}"


async def _product_code(session: AsyncSession, wm: WorkMaster) -> str:
    m = await session.get(MaterialDefinition, wm.product_id)
    assert m is not None  # foreign key
    return m.code


async def view(session: AsyncSession, wm: WorkMaster) -> dict[str, Any]:
    """The canonical content of a version: what an approval signs (ES-3)."""
    return {
        "code": wm.code,
        "version": wm.revision,
        "name": wm.name,
        "kind": str(wm.kind),
        "product_code": await _product_code(session, wm),
        "batch_size": wm.batch_size,
        "uom": wm.uom,
        "description": wm.description,
        "reconciliation_tolerance_pct": wm.reconciliation_tolerance_pct,
        "operations": wm.operations,
        "status": str(wm.status),
        "supporting_pilot_orders": wm.supporting_pilot_orders,
    }


async def public(session: AsyncSession, wm: WorkMaster) -> WorkMasterPublic:
    pilots = await session.execute(
        select(WorkOrder.number)
        .where(WorkOrder.work_master_id == wm.id, col(WorkOrder.is_pilot).is_(True))
        .order_by(WorkOrder.number)
    )
    sig = (
        await session.get(ESignature, wm.approval_signature_id)
        if wm.approval_signature_id
        else None
    )
    content = await view(session, wm)
    return WorkMasterPublic.model_validate(
        {
            **content,
            "pilot_orders": list(pilots.scalars()),
            "created_by": wm.created_by,
            "approved_at": wm.approved_at,
            "approval_signature": await signatures.public(session, sig) if sig else None,
            "record_version": wm.version,
            "created_at": wm.created_at,
            "updated_at": wm.updated_at,
        }
    )


@cache
def _version_stmt(given: bool, lock: bool) -> SelectOfScalar[WorkMaster]:
    """A work master ``code``: version ``revision`` if ``given``, else the approved one, else
    the latest draft."""
    stmt = select(WorkMaster).where(col(WorkMaster.code) == bindparam("code"))
    if given:
        stmt = stmt.where(col(WorkMaster.revision) == bindparam("revision"))
    else:
        approved = col(WorkMaster.status) == WorkMasterStatus.approved
        stmt = stmt.order_by(approved.desc(), col(WorkMaster.revision).desc()).limit(1)
    return stmt.with_for_update() if lock else stmt


async def get(
    session: AsyncSession, code: str, revision: int | None = None, *, lock: bool = False
) -> WorkMaster:
    """A version, or (no version given) the approved one, else the latest draft."""
    stmt = _version_stmt(revision is not None, lock)
    params = {"code": code, "revision": revision}
    found = (await session.execute(stmt, params)).scalars().first()
    if found is None:
        suffix = f" version {revision}" if revision is not None else ""
        raise NotFound(f"work master {code!r}{suffix} does not exist")
    return found


async def list_masters(
    session: AsyncSession,
    *,
    code: str | None,
    status: WorkMasterStatus | None,
    product_code: str | None,
    after: tuple[str, int] | None,
    limit: int,
) -> tuple[list[WorkMaster], tuple[str, int] | None]:
    stmt = select(WorkMaster).order_by(col(WorkMaster.code), col(WorkMaster.revision))
    if code is not None:
        stmt = stmt.where(WorkMaster.code == code)
    if status is not None:
        stmt = stmt.where(WorkMaster.status == status)
    if product_code is not None:
        stmt = stmt.join(MaterialDefinition, col(MaterialDefinition.id) == WorkMaster.product_id)
        stmt = stmt.where(MaterialDefinition.code == product_code)
    if after is not None:
        a_code, a_rev = after
        stmt = stmt.where(
            (col(WorkMaster.code) > a_code)
            | ((col(WorkMaster.code) == a_code) & (col(WorkMaster.revision) > a_rev))
        )
    rows, more = await fetch_page(session, stmt, limit)
    return rows, ((rows[-1].code, rows[-1].revision) if more else None)


async def _check_references(session: AsyncSession, data: WorkMasterCreate) -> MaterialDefinition:
    """Every code a version names exists and fits: the product and BOM materials with
    convertible units, work centers, eligible units under their work center, classes."""
    product = await lots.active_material(session, data.product_code, "product_code")
    lots.convert_quantity(Decimal(1), data.uom, product.base_uom, "uom")
    for i, op in enumerate(data.operations):
        where = f"operations[{i}]"
        wc = await equipment.find(session, op.work_center_code)
        if wc is None or EquipmentLevel(wc.level) != EquipmentLevel.work_center:
            raise InvalidInput(
                f"{op.work_center_code!r} is not a work center",
                field=f"{where}.work_center_code",
            )
        for j, unit_code in enumerate(op.eligible_equipment):
            unit = await equipment.find(session, unit_code)
            if unit is None or unit.parent_id != wc.id:
                raise InvalidInput(
                    f"{unit_code!r} is not a unit of work center {wc.code}",
                    field=f"{where}.eligible_equipment[{j}]",
                )
        for unit_code in op.unit_run_min_per_unit:
            unit = await equipment.find(session, unit_code)
            if unit is None or unit.parent_id != wc.id:
                raise InvalidInput(
                    f"{unit_code!r} is not a unit of work center {wc.code}",
                    field=f"{where}.unit_run_min_per_unit.{unit_code}",
                )
        if op.equipment_class is not None:
            if await equipment.find_class(session, op.equipment_class) is None:
                raise InvalidInput(
                    f"equipment class {op.equipment_class!r} does not exist",
                    field=f"{where}.equipment_class",
                )
        for j, line in enumerate(op.bom):
            m = await lots.active_material(
                session, line.material_code, f"{where}.bom[{j}].material_code"
            )
            lots.convert_quantity(Decimal(1), line.uom, m.base_uom, f"{where}.bom[{j}].uom")
    return product


def _content(data: WorkMasterCreate, product: MaterialDefinition) -> dict[str, Any]:
    ordered = sorted(data.operations, key=lambda op: op.seq)
    return {
        "name": data.name,
        "kind": data.kind,
        "product_id": product.id,
        "batch_size": data.batch_size,
        "uom": data.uom,
        "description": data.description,
        "reconciliation_tolerance_pct": data.reconciliation_tolerance_pct,
        "operations": [op.model_dump(mode="json") for op in ordered],
    }


async def create_draft(
    ctx: AppContext, session: AsyncSession, principal: Principal, data: WorkMasterCreate
) -> WorkMaster:
    """A new draft version: the last version of the code + 1."""
    product = await _check_references(session, data)
    last = await session.execute(
        select(func.max(WorkMaster.revision)).where(WorkMaster.code == data.code)
    )
    now = ctx.clock.now()
    wm = WorkMaster(
        code=data.code,
        revision=(last.scalar_one_or_none() or 0) + 1,
        status=WorkMasterStatus.draft,
        created_by=principal.username,
        created_at=now,
        updated_at=now,
        **_content(data, product),
    )
    session.add(wm)
    await session.flush()
    await audit.record_change(
        session,
        principal,
        action="create",
        entity_type="work_master",
        entity_id=record_id(wm),
        entity_version=wm.version,
        old=None,
        new=await view(session, wm),
        fields=CONTENT_FIELDS,
        reason=data.reason,
    )
    return wm


async def update_draft(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    revision: int,
    expected_version: int,
    data: WorkMasterUpdate,
) -> WorkMaster:
    wm = await get(session, code, revision, lock=True)
    check_version(wm, expected_version, f"work master {record_id(wm)}")
    if data.code != code:
        raise InvalidInput("the code of a version cannot change", field="code")
    if WorkMasterStatus(wm.status) != WorkMasterStatus.draft:
        raise InvalidTransition(
            f"work master {record_id(wm)} is {wm.status}; only drafts can be edited "
            "(create a new version)",
            current_status=str(wm.status),
        )
    product = await _check_references(session, data)
    before = await view(session, wm)
    apply_update(wm, _content(data, product), ctx.clock.now())
    session.add(wm)
    await audit.record_change(
        session,
        principal,
        action="update",
        entity_type="work_master",
        entity_id=record_id(wm),
        entity_version=wm.version,
        old=before,
        new=await view(session, wm),
        fields=CONTENT_FIELDS,
        reason=data.reason,
    )
    return wm


async def approve(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    revision: int,
    expected_version: int,
    data: WorkMasterApprove,
) -> tuple[WorkMaster, ESignature]:
    """PROC-1: QA approves a draft with an e-signature; it becomes the effective version and the
    previously approved one is retired. The approver is not the author (AC-2)."""
    wm = await get(session, code, revision, lock=True)
    check_version(wm, expected_version, f"work master {record_id(wm)}")
    if WorkMasterStatus(wm.status) != WorkMasterStatus.draft:
        raise InvalidTransition(
            f"work master {record_id(wm)} is {wm.status}; only a draft can be approved",
            current_status=str(wm.status),
        )
    if principal.username in await _authors(session, wm):
        raise Forbidden("the author or an editor of a work master cannot approve it", rule="AC-2")
    pilots = list(dict.fromkeys(data.supporting_pilot_orders))
    for i, number in enumerate(pilots):
        found = (
            await session.execute(
                select(WorkOrder).where(
                    WorkOrder.number == number, WorkOrder.master_code == wm.code
                )
            )
        ).scalar_one_or_none()
        if found is None or not found.is_pilot:
            raise InvalidInput(
                f"{number!r} is not a pilot batch of work master {wm.code}",
                field=f"supporting_pilot_orders[{i}]",
            )
    before = await view(session, wm)
    after = dict(before, status=str(WorkMasterStatus.approved), supporting_pilot_orders=pilots)
    esig = await signatures.sign(
        ctx,
        session,
        principal,
        record_type="work_master",
        record_id=record_id(wm),
        record_version=wm.version + 1,
        current_version=wm.version,
        content=after,
        signature=data.signature,
        allowed_meanings=frozenset({SignatureMeaning.approved}),
    )
    now = ctx.clock.now()
    previous = await session.execute(
        select(WorkMaster)
        .where(WorkMaster.code == wm.code, WorkMaster.status == WorkMasterStatus.approved)
        .with_for_update()
    )
    for old in previous.scalars():
        await _set_status(
            session,
            principal,
            old,
            WorkMasterStatus.retired,
            now,
            (f"superseded by version {wm.revision}"),
        )
    wm.status = WorkMasterStatus.approved
    wm.supporting_pilot_orders = pilots
    wm.approval_signature_id = esig.id
    wm.approved_at = now
    bump_version(wm, now)
    session.add(wm)
    await audit.record_change(
        session,
        principal,
        action="approve",
        entity_type="work_master",
        entity_id=record_id(wm),
        entity_version=wm.version,
        old=before,
        new=await view(session, wm),
        fields=("status", "supporting_pilot_orders"),
        reason=data.reason,
    )
    return wm, esig


async def _authors(session: AsyncSession, wm: WorkMaster) -> set[str]:
    """Who wrote this version: its creator and everyone who edited the draft."""
    edits = await session.execute(
        select(AuditEntry.username)
        .where(
            AuditEntry.entity_type == "work_master",
            AuditEntry.entity_id == record_id(wm),
            col(AuditEntry.action).in_(["create", "update"]),
        )
        .distinct()
    )
    return {wm.created_by, *edits.scalars()}


async def _set_status(
    session: AsyncSession,
    principal: Principal,
    wm: WorkMaster,
    target: WorkMasterStatus,
    now: Any,
    reason: str,
) -> None:
    before = await view(session, wm)
    wm.status = target
    bump_version(wm, now)
    session.add(wm)
    await audit.record_change(
        session,
        principal,
        action=str(target),
        entity_type="work_master",
        entity_id=record_id(wm),
        entity_version=wm.version,
        old=before,
        new=await view(session, wm),
        fields=("status",),
        reason=reason,
    )


async def retire(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    code: str,
    revision: int,
    expected_version: int,
    reason: str,
) -> WorkMaster:
    wm = await get(session, code, revision, lock=True)
    check_version(wm, expected_version, f"work master {record_id(wm)}")
    if WorkMasterStatus(wm.status) == WorkMasterStatus.retired:
        raise InvalidTransition(
            f"work master {record_id(wm)} is already retired", current_status=str(wm.status)
        )
    await _set_status(session, principal, wm, WorkMasterStatus.retired, ctx.clock.now(), reason)
    return wm


async def _signable(session: AsyncSession, ident: str) -> tuple[int, dict[str, Any]] | None:
    code, _, rev = ident.rpartition("/")
    if not rev.isdigit():
        return None
    try:
        wm = await get(session, code, int(rev))
    except NotFound:
        return None
    return wm.version, await view(session, wm)


signatures.register_signable("work_master", _signable)
