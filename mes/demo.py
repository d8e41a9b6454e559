"""Demo history: a small, real production trail through the services (receipts, QA-signed
releases, production steps, a sterilization load, serials and a shipment), so the traces,
recall impact and UDI labels have something to show. Idempotent: skipped when present."""

from __future__ import annotations

from decimal import Decimal

from mes.context import AppContext
from mes.genealogy import service as genealogy
from mes.genealogy.schemas import InputLot, ProduceRequest
from mes.identity import service as identity
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.lot.schemas import LoadCreate, LotReceive, LotRef, TransactionRequest
from mes.models import LotStatus, SignatureMeaning, TransactionKind
from mes.principal import Principal, PrincipalKind, system_principal
from mes.signature.schemas import SignatureInput

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


async def seed_history(ctx: AppContext, password: str) -> bool:
    """Create the demo trail once; returns False when it was already there."""
    system = system_principal("demo")
    async with ctx.db.sessionmaker() as session, session.begin():
        if await lots.find_lots(session, "SUT-2611-01"):
            return False
        qa_user = await identity.get_user(session, "qa")
        qa = Principal(
            kind=PrincipalKind.user,
            username=qa_user.username,
            full_name=qa_user.full_name,
            roles=frozenset(await identity.roles_of(session, qa_user.id)),
            user_id=qa_user.id,
        )

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
