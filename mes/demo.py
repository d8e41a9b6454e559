"""Demo history: a small, real production trail through the services (receipts, QA-signed
releases, production steps, a sterilization load, serials and a shipment), so the traces,
recall impact and UDI labels have something to show - and work masters with released work
orders for the shop floor. Idempotent: skipped when present."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from mes.context import AppContext
from mes.genealogy import service as genealogy
from mes.genealogy.schemas import InputLot, ProduceRequest
from mes.identity import service as identity
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.lot.schemas import LoadCreate, LotReceive, LotRef, TransactionRequest
from mes.models import LotStatus, SignatureMeaning, TransactionKind, WorkMaster
from mes.principal import Principal, PrincipalKind, system_principal
from mes.signature.schemas import SignatureInput
from mes.work import masters, orders, planning, qualifications
from mes.work.schemas import (
    QualificationGrant,
    WorkMasterApprove,
    WorkMasterCreate,
    WorkOrderCreate,
)

RECEIPTS = (
    ("GA", "GA-2611-01", "80", "kg", "Purasorb Monomers", "PM-88123"),
    ("SNOCT", "SN-2609-04", "250", "g", "Catalyst Chemicals", "CC-1190"),
    ("DDOH", "DD-2610-02", "500", "g", "Fine Alcohols", "FA-7781"),
    ("NDL-38RC-19", "NDL-2611-07", "500", "each", "Precision Needles", "PN-3321"),
)
STEPS = (
    (
        "RES-PGA",
        "RES-2611-01",
        "75",
        "kg",
        (("GA-2611-01", "78", "kg"), ("SN-2609-04", "20", "g"), ("DD-2610-02", "120", "g")),
    ),
    ("FIB-PGA-MF", "FIB-2611-01", "60", "kg", (("RES-2611-01", "62", "kg"),)),
    ("BRD-PGA-3-0", "BRD-2611-01", "20000", "m", (("FIB-2611-01", "40", "kg"),)),
    ("BRD-PGA-3-0-CTD", "BRDC-2611-01", "19500", "m", (("BRD-2611-01", "19800", "m"),)),
    (
        "SUT-PGA-3-0-75",
        "SUT-2611-01",
        "240",
        "each",
        (("BRDC-2611-01", "200", "m"), ("NDL-2611-07", "240", "each")),
    ),
)


async def person(session: AsyncSession, username: str) -> Principal:
    """A demo user acting in person (signatures need a person, not the system)."""
    user = await identity.get_user(session, username)
    return Principal(
        kind=PrincipalKind.user,
        username=user.username,
        full_name=user.full_name,
        roles=frozenset(await identity.roles_of(session, user.id)),
        user_id=user.id,
    )


async def seed_history(ctx: AppContext, password: str) -> bool:
    """Create the demo trail once; returns False when it was already there."""
    system = system_principal("demo")
    async with ctx.db.sessionmaker() as session, session.begin():
        if await lots.find_lots(session, "SUT-2611-01"):
            return False
        qa = await person(session, "qa")

        async def release(number: str) -> None:
            lot = await lots.get_lot(session, number, lock=True)
            await lots.change_status(
                ctx,
                session,
                qa,
                lot,
                LotStatus.released,
                "demo: results reviewed",
                SignatureInput(password=password, meaning=SignatureMeaning.released),
                None,
            )

        for material, number, qty, uom, supplier, supplier_lot in RECEIPTS:
            await lots.receive(
                ctx,
                session,
                system,
                LotReceive(
                    material_code=material,
                    lot_number=number,
                    quantity=Decimal(qty),
                    uom=uom,
                    supplier=supplier,
                    supplier_lot=supplier_lot,
                    coa_ref=f"CoA {supplier_lot}",
                ),
            )
            await release(number)
        for material, number, qty, uom, inputs in STEPS:
            await genealogy.produce(
                ctx,
                session,
                system,
                ProduceRequest(
                    material_code=material,
                    lot_number=number,
                    quantity=Decimal(qty),
                    uom=uom,
                    inputs=[
                        InputLot(lot_number=n, quantity=Decimal(q), uom=u) for n, q, u in inputs
                    ],
                ),
            )
            await release(number)
        suture = await lots.get_lot(session, "SUT-2611-01", lock=True)
        await containers.add_serials(
            ctx, session, system, suture, [f"SN{n:05d}" for n in range(1, 11)], "demo serials"
        )
        await containers.create_load(
            ctx,
            session,
            system,
            LoadCreate(
                load_no="EO-2611-014",
                sterilizer_code="S-1",
                lots=[LotRef(lot_number="SUT-2611-01")],
            ),
        )
        await ledger.post_request(
            ctx,
            session,
            system,
            suture,
            TransactionRequest(
                kind=TransactionKind.shipped,
                quantity=Decimal("120"),
                uom="each",
                reason="order 4711",
                consignee="City General Hospital",
            ),
        )
    return True


WORK_LOTS = (
    ("LLA", "LLA-2611-02", "500", "kg", "Purasorb Monomers", "PM-88140"),
    ("GA", "GA-2611-02", "100", "kg", "Purasorb Monomers", "PM-88141"),
    ("SNOCT", "SN-2611-02", "100", "g", "Catalyst Chemicals", "CC-1201"),
    ("BRD-PLGA9010-4-0-CTD", "BRDC-2611-09", "500", "m", "In-house braid", "BRD-2611-09"),
    ("PKG-FOIL-POUCH", "PCH-2611-01", "1000", "each", "Medical Packaging", "MP-5521"),
    ("LBL-POUCH", "LBL-2611-01", "1000", "each", "Label Works", "LW-0907"),
)
# (number, work master, quantity, uom, priority, due in days, pilot)
ORDERS = (
    ("WO-2611-101", "WM-RES-PLGA9010", "50", "kg", 3, 3, False),
    ("WO-2611-102", "WM-RES-PLGA9010", "50", "kg", 5, 6, False),
    ("WO-2611-201", "WM-SUT-PLGA-4-0-45", "100", "each", 4, 5, False),
    ("WO-2611-P01", "WM-RES-PLGA8515", "5", "kg", 5, 10, True),
)


def read_work_masters(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    masters: list[dict[str, Any]] = data.get("work_masters", [])
    return masters


async def seed_work(ctx: AppContext, password: str, path: Path) -> bool:
    """Work masters from ``path`` (approved by QA where marked), released raw lots, released
    work orders waiting at their work centers, a pilot batch, and the operators' swaging
    qualification. Returns False when already there."""
    async with ctx.db.sessionmaker() as session, session.begin():
        if (await session.execute(select(WorkMaster.id).limit(1))).first() is not None:
            return False
        planner = await person(session, "planner")
        qa = await person(session, "qa")
        supervisor = await person(session, "supervisor")
        for entry in read_work_masters(path):
            body = {k: v for k, v in entry.items() if k != "approve"}
            wm = await masters.create_draft(
                ctx, session, planner, WorkMasterCreate.model_validate(body)
            )
            if entry.get("approve"):
                await masters.approve(
                    ctx,
                    session,
                    qa,
                    wm.code,
                    wm.revision,
                    wm.version,
                    WorkMasterApprove(
                        signature=SignatureInput(
                            password=password, meaning=SignatureMeaning.approved
                        )
                    ),
                )
        for material, number, qty, uom, supplier, supplier_lot in WORK_LOTS:
            lot = await lots.receive(
                ctx,
                session,
                planner,
                LotReceive(
                    material_code=material,
                    lot_number=number,
                    quantity=Decimal(qty),
                    uom=uom,
                    supplier=supplier,
                    supplier_lot=supplier_lot,
                    coa_ref=f"CoA {supplier_lot}",
                ),
            )
            await lots.change_status(
                ctx,
                session,
                qa,
                lot,
                LotStatus.released,
                "demo: CoA reviewed, identity tested",
                SignatureInput(password=password, meaning=SignatureMeaning.released),
                None,
            )
        now = ctx.clock.now()
        for username in ("operator1", "operator2"):
            await qualifications.grant(
                ctx,
                session,
                supervisor,
                username,
                QualificationGrant(
                    code="SWAGING",
                    valid_until=now + timedelta(days=365),
                    reason="demo: swaging training passed",
                ),
            )
        for number, master, qty, uom, priority, due_days, pilot in ORDERS:
            order = await planning.create(
                ctx,
                session,
                planner,
                WorkOrderCreate(
                    number=number,
                    work_master_code=master,
                    quantity=Decimal(qty),
                    uom=uom,
                    priority=priority,
                    due_at=now + timedelta(days=due_days),
                    pilot=pilot,
                ),
            )
            await orders.release(ctx, session, planner, order.number, order.version, "demo")
    return True
