"""Lot API: receipt, disposition, ledger, containers, serials, sterilization loads,
production, split, merge and genealogy."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from mes.errors import Conflict, NotFound
from mes.genealogy import service as genealogy
from mes.genealogy.repository import Direction
from mes.genealogy.schemas import (
    ExecutionResult,
    MassBalance,
    MergeRequest,
    ProduceRequest,
    RecallImpact,
    SplitRequest,
    Trace,
)
from mes.http import (
    ContextDep,
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    OptionalVersionDep,
    SessionDep,
    decode_int_cursor,
    decode_str_cursor,
    encode_cursor,
    etag,
    idempotent,
)
from mes.identity.deps import ANY_HUMAN, Allow
from mes.lot import containers, ledger
from mes.lot import service as lots
from mes.lot.schemas import (
    LoadCreate,
    LoadPublic,
    LotList,
    LotPublic,
    LotReceive,
    Reversal,
    SerialList,
    SerialPublic,
    SerialsCreate,
    StatusChange,
    StatusResult,
    SublotCreate,
    SublotPublic,
    TransactionList,
    TransactionPublic,
    TransactionRequest,
)
from mes.models import Lot, LotStatus, Role
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.signature import service as signatures
from mes.udi.label import UdiLabel, build_label, render_datamatrix

router = APIRouter(prefix=API_PREFIX, tags=["lots and genealogy"])

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
Stores = Annotated[Principal, Depends(Allow(Role.operator, Role.supervisor))]
Disposition = Annotated[Principal, Depends(Allow(Role.qa, Role.supervisor))]
MaterialQuery = Annotated[
    str | None,
    Query(max_length=40, description="Material code, when the lot number is used by several."),
]


async def _lot(
    session: SessionDep, lot_number: str, material: str | None, lock: bool = False
) -> Lot:
    return await lots.get_lot(session, lot_number, material, lock=lock)


def _created(
    execution_id: uuid.UUID, inputs: list[Lot], output: Lot
) -> tuple[int, ExecutionResult, dict[str, str]]:
    """The 201 answer of an execution that made one new lot."""
    result = ExecutionResult(
        execution_id=execution_id,
        consumed=[x.lot_number for x in inputs],
        produced=[output.lot_number],
    )
    return 201, result, {"Location": f"/api/v1/lots/{output.id}"}


def _etag(response: Response, lot: Lot) -> None:
    response.headers["ETag"] = etag(lot.version)


@router.get("/lots", response_model=LotList)
async def list_lots(
    session: SessionDep,
    _: Reader,
    material_code: Annotated[str | None, Query(max_length=40)] = None,
    status: LotStatus | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> LotList:
    """Lots in creation order, filtered by material and status."""
    items, last = await lots.list_lots(
        session,
        material_code=material_code,
        status=status,
        after=decode_str_cursor(cursor),
        limit=limit,
    )
    return LotList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/lots/receive", status_code=201, response_model=LotPublic)
async def receive_lot(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Stores,
    body: LotReceive,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Receive a raw-material lot with its supplier CoA reference; it enters quarantine."""

    async def create() -> tuple[int, LotPublic, dict[str, str]]:
        lot = await lots.receive(ctx, session, principal, body)
        return (
            201,
            await lots.public(session, lot),
            {"ETag": etag(lot.version), "Location": f"/api/v1/lots/{lot.id}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.post("/lots/produce", status_code=201, response_model=ExecutionResult)
async def produce_lot(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Stores,
    body: ProduceRequest,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Record one execution: consume released input lots, produce a new lot in quarantine,
    and link them in the genealogy (TR-1, ID-1)."""

    async def create() -> tuple[int, ExecutionResult, dict[str, str]]:
        return _created(*await genealogy.produce(ctx, session, principal, body))

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.post("/lots/merge", status_code=201, response_model=ExecutionResult)
async def merge_lots(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Stores,
    body: MergeRequest,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Blend lots of one material into a new lot (released only if every input was)."""

    async def create() -> tuple[int, ExecutionResult, dict[str, str]]:
        return _created(*await genealogy.merge(ctx, session, principal, body))

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/lots/{lot_number}", response_model=LotPublic)
async def get_lot(
    lot_number: str,
    session: SessionDep,
    _: Reader,
    response: Response,
    material_code: MaterialQuery = None,
) -> LotPublic:
    """One lot with its remaining quantity and disposition (by lot number or id)."""
    lot = await _lot(session, lot_number, material_code)
    _etag(response, lot)
    return await lots.public(session, lot)


@router.post("/lots/{lot_number}/status", response_model=StatusResult)
async def change_lot_status(
    lot_number: str,
    body: StatusChange,
    principal: Disposition,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
    material_code: MaterialQuery = None,
) -> StatusResult:
    """A disposition decision (DOMAIN 3.3): release, conditional release, hold, lift a hold,
    reject, scrap... Release and rejection are e-signed by QA; a supervisor may place holds."""
    lot = await _lot(session, lot_number, material_code, lock=True)
    esig = await lots.change_status(
        ctx, session, principal, lot, body.status, body.reason, body.signature, version
    )
    _etag(response, lot)
    return StatusResult(
        lot=await lots.public(session, lot),
        signature=await signatures.public(session, esig) if esig else None,
    )


@router.get("/lots/{lot_number}/transactions", response_model=TransactionList)
async def list_lot_transactions(
    lot_number: str,
    session: SessionDep,
    _: Reader,
    material_code: MaterialQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> TransactionList:
    """The lot's ledger in order."""
    lot = await _lot(session, lot_number, material_code)
    items, last = await ledger.list_transactions(
        session, lot, after=decode_int_cursor(cursor), limit=limit
    )
    return TransactionList(
        items=items, next_cursor=encode_cursor(last) if last is not None else None
    )


@router.post("/lots/{lot_number}/transactions", status_code=201, response_model=TransactionPublic)
async def post_lot_transaction(
    lot_number: str,
    body: TransactionRequest,
    principal: Stores,
    ctx: ContextDep,
    session: SessionDep,
    material_code: MaterialQuery = None,
) -> TransactionPublic:
    """Sample, scrap, adjust (signed quantity), transfer, ship (with consignee) or return.
    Quantities never take a lot below zero (409, TR-4)."""
    lot = await _lot(session, lot_number, material_code, lock=True)
    tx = await ledger.post_request(ctx, session, principal, lot, body)
    return (await ledger.transactions_public(session, [tx]))[0]


@router.post(
    "/material-transactions/{transaction_id}/reverse",
    status_code=201,
    response_model=TransactionPublic,
)
async def reverse_transaction(
    transaction_id: uuid.UUID,
    body: Reversal,
    principal: Stores,
    ctx: ContextDep,
    session: SessionDep,
) -> TransactionPublic:
    """Correct a movement with a reversing entry and a reason; the original stays."""
    tx = await ledger.reverse(ctx, session, principal, transaction_id, body.reason)
    return (await ledger.transactions_public(session, [tx]))[0]


@router.get("/lots/{lot_number}/sublots", response_model=list[SublotPublic])
async def list_sublots(
    lot_number: str, session: SessionDep, _: Reader, material_code: MaterialQuery = None
) -> list[SublotPublic]:
    """Containers of a lot."""
    return await containers.list_sublots(session, await _lot(session, lot_number, material_code))


@router.post("/lots/{lot_number}/sublots", status_code=201, response_model=SublotPublic)
async def create_sublot(
    lot_number: str,
    body: SublotCreate,
    principal: Stores,
    ctx: ContextDep,
    session: SessionDep,
    material_code: MaterialQuery = None,
) -> SublotPublic:
    """Register a container (drum, bobbin, tray) of a lot."""
    lot = await _lot(session, lot_number, material_code, lock=True)
    sub = await containers.create_sublot(ctx, session, principal, lot, body)
    return SublotPublic(
        code=sub.code,
        lot_number=lot.lot_number,
        quantity=sub.quantity,
        uom=lot.uom,
        location=sub.location,
        version=sub.version,
    )


@router.get("/lots/{lot_number}/serials", response_model=SerialList)
async def list_serials(
    lot_number: str,
    session: SessionDep,
    _: Reader,
    material_code: MaterialQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> SerialList:
    """Serial units of a lot."""
    lot = await _lot(session, lot_number, material_code)
    items, last = await containers.list_serials(
        session, lot, after=decode_str_cursor(cursor), limit=limit
    )
    return SerialList(items=items, next_cursor=encode_cursor(last) if last else None)


@router.post("/lots/{lot_number}/serials", status_code=201, response_model=list[SerialPublic])
async def add_serials(
    lot_number: str,
    body: SerialsCreate,
    principal: Stores,
    ctx: ContextDep,
    session: SessionDep,
    material_code: MaterialQuery = None,
) -> list[SerialPublic]:
    """Assign serials to units of a lot; GTIN + serial is unique (409 on a duplicate, UDI-2)."""
    lot = await _lot(session, lot_number, material_code, lock=True)
    units = await containers.add_serials(ctx, session, principal, lot, body.serials, body.reason)
    return [
        SerialPublic(
            gtin=u.gtin, serial=u.serial, lot_number=lot.lot_number, created_at=u.created_at
        )
        for u in units
    ]


@router.post("/lots/{lot_number}/split", status_code=201, response_model=ExecutionResult)
async def split_lot(
    lot_number: str,
    body: SplitRequest,
    principal: Stores,
    ctx: ContextDep,
    session: SessionDep,
    material_code: MaterialQuery = None,
) -> ExecutionResult:
    """Split a lot into new lots that keep its disposition and dates (DOMAIN 7)."""
    lot = await _lot(session, lot_number, material_code, lock=True)
    execution_id, children = await genealogy.split(ctx, session, principal, lot, body)
    return ExecutionResult(
        execution_id=execution_id,
        consumed=[lot.lot_number],
        produced=[c.lot_number for c in children],
    )


@router.get("/lots/{lot_number}/genealogy", response_model=Trace)
async def lot_genealogy(
    lot_number: str,
    session: SessionDep,
    _: Reader,
    direction: Direction = Direction.backward,
    max_depth: Annotated[int, Query(ge=1, le=genealogy.MAX_DEPTH)] = 20,
    material_code: MaterialQuery = None,
) -> Trace:
    """Backward (where from, TR-2) or forward (where used, TR-3) trace with depth limit,
    quantities and the edges walked."""
    lot = await _lot(session, lot_number, material_code)
    return await genealogy.trace(session, lot, direction, max_depth)


@router.get("/lots/{lot_number}/recall-impact", response_model=RecallImpact)
async def lot_recall_impact(
    lot_number: str,
    session: SessionDep,
    _: Annotated[Principal, Depends(Allow(Role.qa, Role.supervisor, Role.planner))],
    material_code: MaterialQuery = None,
) -> RecallImpact:
    """All finished lots and serials made from a suspect lot, the loads they went through and
    where they were shipped, if known (TR-3)."""
    return await genealogy.recall_impact(session, await _lot(session, lot_number, material_code))


@router.get("/lots/{lot_number}/mass-balance", response_model=MassBalance)
async def lot_mass_balance(
    lot_number: str, session: SessionDep, _: Reader, material_code: MaterialQuery = None
) -> MassBalance:
    """The lot's ledger balance and its producing executions' inputs against outputs."""
    return await genealogy.mass_balance(session, await _lot(session, lot_number, material_code))


@router.post("/sterilization-loads", status_code=201, response_model=LoadPublic)
async def create_load(
    body: LoadCreate, principal: Stores, ctx: ContextDep, session: SessionDep
) -> LoadPublic:
    """Build a sterilization load from lots (lot -> load and load -> lot links, TR-5)."""
    load, members = await containers.create_load(ctx, session, principal, body)
    return LoadPublic(
        load_no=load.load_no,
        sterilizer_code=body.sterilizer_code,
        result=load.result,
        lots=[x.lot_number for x in members],
        version=load.version,
        created_at=load.created_at,
    )


@router.get("/sterilization-loads/{load_no}", response_model=LoadPublic)
async def get_load(load_no: str, session: SessionDep, _: Reader) -> LoadPublic:
    """A sterilization load and the lots in it (TR-5)."""
    load, sterilizer_code, members = await containers.get_load(session, load_no)
    return LoadPublic(
        load_no=load.load_no,
        sterilizer_code=sterilizer_code,
        result=load.result,
        lots=[x.lot_number for x in members],
        version=load.version,
        created_at=load.created_at,
    )


async def _label(
    session: SessionDep, lot_number: str, material: str | None, serial: str | None
) -> UdiLabel:
    lot = await _lot(session, lot_number, material)
    m = await lots.material_of(session, lot)
    if m.gtin is None:
        raise Conflict(
            f"material {m.code} has no GTIN (UDI-DI); its lots carry no UDI", rule="UDI-1"
        )
    if serial is not None:
        found = await containers.find_serial(session, lot, serial)
        if found is None:
            raise NotFound(f"serial {serial!r} is not a unit of lot {lot.lot_number}")
    try:
        return build_label(
            m.gtin,
            lot=lot.lot_number,
            serial=serial,
            production_date=lot.manufactured_at.date() if lot.manufactured_at else None,
            expiry_date=lot.expires_at.date() if lot.expires_at else None,
        )
    except ValueError as exc:
        raise Conflict(f"lot {lot.lot_number} cannot be labelled: {exc}", rule="UDI-2") from exc


SerialQuery = Annotated[str | None, Query(max_length=20, description="Serial (AI 21) of a unit.")]


@router.get("/lots/{lot_number}/udi-label", response_model=UdiLabel)
async def lot_udi_label(
    lot_number: str,
    session: SessionDep,
    _: Reader,
    material_code: MaterialQuery = None,
    serial: SerialQuery = None,
) -> UdiLabel:
    """UDI label content of a lot (or one serial): GS1 element string and human-readable
    lines, dates YYYY-MM-DD in text and YYMMDD in the symbol from one stored date (UDI-3)."""
    return await _label(session, lot_number, material_code, serial)


@router.get(
    "/lots/{lot_number}/udi-label.{fmt}",
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}},
    response_class=Response,
)
async def lot_udi_symbol(
    lot_number: str,
    fmt: Literal["png", "svg"],
    session: SessionDep,
    _: Reader,
    material_code: MaterialQuery = None,
    serial: SerialQuery = None,
) -> Response:
    """The GS1 DataMatrix of the label, verified by decoding it back before it is served
    (UDI-5: it must read as ]d2 with the intended elements)."""
    label = await _label(session, lot_number, material_code, serial)
    image = await asyncio.to_thread(render_datamatrix, label, fmt)
    return Response(image, media_type="image/png" if fmt == "png" else "image/svg+xml")
