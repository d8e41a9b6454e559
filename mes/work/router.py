"""Work masters, work orders, operations (shop-floor actions), dispatch queues, deviations,
qualifications and the production record (API.md)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel

from mes.http import (
    ContextDep,
    CursorQuery,
    IdempotencyKeyHeader,
    LimitQuery,
    OptionalVersionDep,
    SessionDep,
    VersionDep,
    decode_cursor,
    decode_str_cursor,
    encode_cursor,
    etag,
    idempotent,
)
from mes.identity.deps import ANY_HUMAN, Allow
from mes.lot import service as lots
from mes.models import DeviationStatus, Role, WorkMasterStatus, WorkOrder, WorkOrderStatus
from mes.principal import Principal
from mes.routes import API_PREFIX
from mes.signature import service as signatures
from mes.signature.schemas import SignatureInput, SignaturePublic
from mes.work import (
    completion,
    deviations,
    dispatch,
    execution,
    masters,
    materials,
    orders,
    planning,
    qualifications,
    recording,
)
from mes.work import record as production_record
from mes.work.record_pdf import render_pdf
from mes.work.schemas import (
    ActionReason,
    ConsumeRequest,
    DeviationClose,
    DeviationList,
    DeviationPublic,
    LineClearance,
    OperationPublic,
    OutputRequest,
    OutputResult,
    PauseRequest,
    QualificationGrant,
    QualificationList,
    QualificationPublic,
    QueueList,
    RecordRequest,
    RecordResult,
    ReleaseAction,
    SignedAction,
    SignedOperation,
    StartRequest,
    WorkMasterApprove,
    WorkMasterCreate,
    WorkMasterList,
    WorkMasterPublic,
    WorkMasterUpdate,
    WorkOrderCreate,
    WorkOrderList,
    WorkOrderPublic,
)

router = APIRouter(prefix=API_PREFIX)
EXACT = Decimal("0.000001")

Reader = Annotated[Principal, Depends(Allow(*ANY_HUMAN))]
# A work master version number (a 32-bit column: larger ones name no version).
Revision = Annotated[int, Path(ge=1, le=2_147_483_647)]
Engineer = Annotated[Principal, Depends(Allow(Role.planner, Role.supervisor, Role.qa))]
Planner = Annotated[Principal, Depends(Allow(Role.planner, Role.supervisor))]
Supervisor = Annotated[Principal, Depends(Allow(Role.supervisor))]
HoldRole = Annotated[Principal, Depends(Allow(Role.supervisor, Role.qa))]
Qa = Annotated[Principal, Depends(Allow(Role.qa))]
Operator = Annotated[Principal, Depends(Allow(Role.operator, Role.supervisor))]
Recorder = Annotated[Principal, Depends(Allow(Role.operator, Role.supervisor, Role.machine))]
Verifier = Annotated[Principal, Depends(Allow(Role.operator, Role.supervisor, Role.qa))]


class WorkMasterApproval(BaseModel):
    work_master: WorkMasterPublic
    signature: SignaturePublic


class WorkOrderSigned(BaseModel):
    work_order: WorkOrderPublic
    signature: SignaturePublic


class DeviationClosed(BaseModel):
    deviation: DeviationPublic
    signature: SignaturePublic


class SignRequest(BaseModel):
    signature: SignatureInput


# --- work masters ----------------------------------------------------------------------------


@router.get("/work-masters", response_model=WorkMasterList, tags=["work masters"])
async def list_work_masters(
    session: SessionDep,
    _: Reader,
    code: str | None = None,
    status: WorkMasterStatus | None = None,
    product_code: str | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> WorkMasterList:
    """Every version of every work master, by code then version."""
    after = decode_cursor(cursor)
    rows, last = await masters.list_masters(
        session,
        code=code,
        status=status,
        product_code=product_code,
        after=(str(after[0]), int(after[1]))
        if isinstance(after, list) and len(after) == 2
        else None,
        limit=limit,
    )
    return WorkMasterList(
        items=[await masters.public(session, wm) for wm in rows],
        next_cursor=encode_cursor(list(last)) if last else None,
    )


@router.post(
    "/work-masters", status_code=201, response_model=WorkMasterPublic, tags=["work masters"]
)
async def create_work_master(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Engineer,
    body: WorkMasterCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A new draft version of a routing or master recipe (version = last + 1). Audited."""

    async def create() -> tuple[int, WorkMasterPublic, dict[str, str]]:
        wm = await masters.create_draft(ctx, session, principal, body)
        return (
            201,
            await masters.public(session, wm),
            {
                "ETag": etag(wm.version),
                "Location": f"/api/v1/work-masters/{wm.code}/versions/{wm.revision}",
            },
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/work-masters/{code}", response_model=WorkMasterPublic, tags=["work masters"])
async def get_work_master(
    code: str, session: SessionDep, _: Reader, response: Response
) -> WorkMasterPublic:
    """The approved (effective) version, or the latest draft when none is approved."""
    wm = await masters.get(session, code)
    response.headers["ETag"] = etag(wm.version)
    return await masters.public(session, wm)


@router.get(
    "/work-masters/{code}/versions/{version}",
    response_model=WorkMasterPublic,
    tags=["work masters"],
)
async def get_work_master_version(
    code: str, version: Revision, session: SessionDep, _: Reader, response: Response
) -> WorkMasterPublic:
    wm = await masters.get(session, code, version)
    response.headers["ETag"] = etag(wm.version)
    return await masters.public(session, wm)


@router.put(
    "/work-masters/{code}/versions/{version}",
    response_model=WorkMasterPublic,
    tags=["work masters"],
)
async def update_work_master_version(
    code: str,
    version: Revision,
    body: WorkMasterUpdate,
    principal: Engineer,
    record_version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkMasterPublic:
    """Replace a draft's content (If-Match, reason). Approved versions never change."""
    wm = await masters.update_draft(ctx, session, principal, code, version, record_version, body)
    response.headers["ETag"] = etag(wm.version)
    return await masters.public(session, wm)


@router.post(
    "/work-masters/{code}/versions/{version}/approve",
    response_model=WorkMasterApproval,
    tags=["work masters"],
)
async def approve_work_master(
    code: str,
    version: Revision,
    body: WorkMasterApprove,
    principal: Qa,
    record_version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkMasterApproval:
    """PROC-1: QA approves a draft with an e-signature (meaning ``approved``); the previously
    approved version is retired. A tech transfer names its supporting pilot batches."""
    wm, esig = await masters.approve(ctx, session, principal, code, version, record_version, body)
    response.headers["ETag"] = etag(wm.version)
    return WorkMasterApproval(
        work_master=await masters.public(session, wm),
        signature=await signatures.public(session, esig),
    )


@router.post(
    "/work-masters/{code}/versions/{version}/retire",
    response_model=WorkMasterPublic,
    tags=["work masters"],
)
async def retire_work_master(
    code: str,
    version: Revision,
    body: ActionReason,
    principal: Qa,
    record_version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkMasterPublic:
    wm = await masters.retire(ctx, session, principal, code, version, record_version, body.reason)
    response.headers["ETag"] = etag(wm.version)
    return await masters.public(session, wm)


# --- work orders -------------------------------------------------------------------------------


@router.get("/work-orders", response_model=WorkOrderList, tags=["work orders"])
async def list_work_orders(
    session: SessionDep,
    _: Reader,
    status: WorkOrderStatus | None = None,
    product_code: str | None = None,
    pilot: bool | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> WorkOrderList:
    rows, last = await orders.list_orders(
        session,
        status=status,
        product_code=product_code,
        pilot=pilot,
        after=decode_str_cursor(cursor),
        limit=limit,
    )
    return WorkOrderList(
        items=[await orders.public(session, o) for o in rows],
        next_cursor=encode_cursor(last) if last else None,
    )


@router.post("/work-orders", status_code=201, response_model=WorkOrderPublic, tags=["work orders"])
async def create_work_order(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    principal: Planner,
    body: WorkOrderCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A draft order from the approved work master version (frozen copy), or a pilot batch
    from a draft. Send ``Idempotency-Key`` so a retry never creates a second order."""

    async def create() -> tuple[int, WorkOrderPublic, dict[str, str]]:
        order = await planning.create(ctx, session, principal, body)
        return (
            201,
            await orders.public(session, order),
            {"ETag": etag(order.version), "Location": f"/api/v1/work-orders/{order.number}"},
        )

    return await idempotent(
        request=request,
        session=session,
        principal=principal,
        key=idempotency_key,
        body=body,
        create=create,
    )


@router.get("/work-orders/{number}", response_model=WorkOrderPublic, tags=["work orders"])
async def get_work_order(
    number: str, session: SessionDep, _: Reader, response: Response
) -> WorkOrderPublic:
    order = await orders.get(session, number)
    response.headers["ETag"] = etag(order.version)
    return await orders.public(session, order)


async def _order_answer(
    session: SessionDep, order: WorkOrder, response: Response
) -> WorkOrderPublic:
    response.headers["ETag"] = etag(order.version)
    return await orders.public(session, order)


@router.post("/work-orders/{number}/release", response_model=WorkOrderPublic, tags=["work orders"])
async def release_work_order(
    number: str,
    body: ReleaseAction,
    principal: Planner,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkOrderPublic:
    """draft -> released: the first operation becomes ready at its work center."""
    order = await orders.release(ctx, session, principal, number, version, body.reason)
    return await _order_answer(session, order, response)


@router.post("/work-orders/{number}/cancel", response_model=WorkOrderPublic, tags=["work orders"])
async def cancel_work_order(
    number: str,
    body: ActionReason,
    principal: Planner,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkOrderPublic:
    """draft/released -> cancelled while nothing has been executed."""
    order = await orders.cancel(ctx, session, principal, number, version, body.reason)
    return await _order_answer(session, order, response)


@router.post("/work-orders/{number}/hold", response_model=WorkOrderPublic, tags=["work orders"])
async def hold_work_order(
    number: str,
    body: ActionReason,
    principal: HoldRole,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkOrderPublic:
    """in_progress -> held: nothing starts or records until QA resumes it."""
    order = await orders.hold(ctx, session, principal, number, version, body.reason)
    return await _order_answer(session, order, response)


@router.post("/work-orders/{number}/resume", response_model=WorkOrderSigned, tags=["work orders"])
async def resume_work_order(
    number: str,
    body: SignedAction,
    principal: Qa,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkOrderSigned:
    """held -> in_progress with QA's e-signature, once every deviation is dispositioned."""
    order, esig = await orders.resume(ctx, session, principal, number, version, body)
    return WorkOrderSigned(
        work_order=await _order_answer(session, order, response),
        signature=await signatures.public(session, esig),
    )


@router.post("/work-orders/{number}/complete", response_model=WorkOrderPublic, tags=["work orders"])
async def complete_work_order(
    number: str,
    body: ActionReason,
    principal: Supervisor,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkOrderPublic:
    """in_progress -> completed when every operation is done (and verified where required)."""
    order = await orders.complete(ctx, session, principal, number, version, body.reason)
    return await _order_answer(session, order, response)


@router.post("/work-orders/{number}/close", response_model=WorkOrderSigned, tags=["work orders"])
async def close_work_order(
    number: str,
    body: SignedAction,
    principal: Qa,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> WorkOrderSigned:
    """completed -> closed: QA who took no part approves the record (PR-6), quantities
    reconciled (PR-2) and deviations dispositioned."""
    order, esig = await orders.close(ctx, session, principal, number, version, body)
    return WorkOrderSigned(
        work_order=await _order_answer(session, order, response),
        signature=await signatures.public(session, esig),
    )


@router.get(
    "/work-orders/{number}/record",
    response_model=production_record.ProductionRecord,
    tags=["production record"],
)
async def get_production_record(
    number: str, ctx: ContextDep, session: SessionDep, _: Reader
) -> production_record.ProductionRecord:
    """The production record (device history record) assembled from what was recorded."""
    return await production_record.assemble(session, number, ctx.clock.now())


@router.get(
    "/work-orders/{number}/record.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
    tags=["production record"],
)
async def get_production_record_pdf(
    number: str, ctx: ContextDep, session: SessionDep, _: Reader
) -> Response:
    """The same record as PDF, with each signature's printed name, UTC time and meaning."""
    rec = await production_record.assemble(session, number, ctx.clock.now())
    return Response(
        render_pdf(rec),
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{rec.work_order}-record.pdf"'},
    )


# --- operations ------------------------------------------------------------------------------


async def _op_answer(
    session: SessionDep, op: object, order: object, response: Response
) -> OperationPublic:
    answer: OperationPublic = await execution.public(session, op, order)  # type: ignore[arg-type]
    response.headers["ETag"] = etag(answer.version)
    return answer


@router.get("/operations/{ident}", response_model=OperationPublic, tags=["operations"])
async def get_operation(
    ident: str, session: SessionDep, _: Reader, response: Response
) -> OperationPublic:
    """An operation (job order) by id."""
    op, order = await execution.get(session, ident)
    return await _op_answer(session, op, order, response)


@router.post(
    "/operations/{ident}/line-clearance", response_model=OperationPublic, tags=["operations"]
)
async def clear_line(
    ident: str,
    body: LineClearance,
    principal: Operator,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> OperationPublic:
    """Confirm the line clearance of the unit the operation will run on (before start)."""
    op, order = await execution.line_clearance(ctx, session, principal, ident, version, body)
    return await _op_answer(session, op, order, response)


@router.post("/operations/{ident}/start", response_model=OperationPublic, tags=["operations"])
async def start_operation(
    ident: str,
    body: StartRequest,
    principal: Operator,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> OperationPublic:
    """ready -> running on a scanned unit: refused (409 PROC-3) if the unit is not eligible,
    not idle, unqualified or overdue for calibration, if the line clearance is missing; 403
    AC-7 if the operator lacks the qualification."""
    op, order = await execution.start(ctx, session, principal, ident, version, body)
    return await _op_answer(session, op, order, response)


@router.post("/operations/{ident}/pause", response_model=OperationPublic, tags=["operations"])
async def pause_operation(
    ident: str,
    body: PauseRequest,
    principal: Operator,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> OperationPublic:
    op, order = await execution.pause(ctx, session, principal, ident, version, body.reason)
    return await _op_answer(session, op, order, response)


@router.post("/operations/{ident}/resume", response_model=OperationPublic, tags=["operations"])
async def resume_operation(
    ident: str,
    principal: Operator,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> OperationPublic:
    op, order = await execution.resume(ctx, session, principal, ident, version)
    return await _op_answer(session, op, order, response)


class ConsumeResult(BaseModel):
    operation: OperationPublic
    lot_number: str
    material_code: str
    quantity: Decimal
    uom: str
    transaction_id: str


@router.post("/operations/{ident}/consume", response_model=ConsumeResult, tags=["operations"])
async def consume_material(
    ident: str,
    body: ConsumeRequest,
    principal: Operator,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> ConsumeResult:
    """Consume a lot by its scan (or typed, with a reason) against the operation's BOM:
    409 ID-1 for a wrong material or an unusable lot, 409 TR-1 beyond the BOM tolerance,
    409 TR-4 beyond what the lot holds."""
    op, order, tx, lot = await materials.consume(ctx, session, principal, ident, body)
    m_code = (await lots.material_of(session, lot)).code
    return ConsumeResult(
        operation=await _op_answer(session, op, order, response),
        lot_number=lot.lot_number,
        material_code=m_code,
        quantity=(-tx.quantity).quantize(EXACT),
        uom=tx.uom,
        transaction_id=str(tx.id),
    )


@router.post("/operations/{ident}/record", response_model=RecordResult, tags=["operations"])
async def record_values(
    ident: str,
    body: RecordRequest,
    principal: Recorder,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> RecordResult:
    """Parameter values and in-process checks, kept as measured; a value outside the action
    limits or a failed check opens a deviation (PROC-2)."""
    op, order, values, checks = await recording.record(ctx, session, principal, ident, body)
    numbers = await recording.deviation_numbers(
        session, [v.deviation_id for v in values] + [c.deviation_id for c in checks]
    )
    return RecordResult(
        operation=await _op_answer(session, op, order, response),
        parameters=[recording.value_public(v, numbers) for v in values],
        checks=[recording.check_public(c, numbers) for c in checks],
    )


@router.post("/operations/{ident}/report-output", response_model=OutputResult, tags=["operations"])
async def report_output(
    ident: str,
    body: OutputRequest,
    principal: Operator,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> OutputResult:
    """Report good output (the produced lot in quarantine, with serials), scrap and samples."""
    op, order, lot, serials = await materials.report_output(ctx, session, principal, ident, body)
    return OutputResult(
        operation=await _op_answer(session, op, order, response),
        lot_number=lot.lot_number,
        material_code=(await lots.material_of(session, lot)).code,
        quantity=lot.remaining_qty.quantize(EXACT),
        uom=lot.uom,
        serials=serials,
    )


@router.post("/operations/{ident}/complete", response_model=SignedOperation, tags=["operations"])
async def complete_operation(
    ident: str,
    body: SignRequest,
    principal: Operator,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> SignedOperation:
    """running -> completed with the performer's e-signature (meaning ``performed``)."""
    op, order, esig = await completion.complete(
        ctx, session, principal, ident, version, body.signature
    )
    return SignedOperation(
        operation=await _op_answer(session, op, order, response),
        signature=await signatures.public(session, esig),
    )


@router.post("/operations/{ident}/verify", response_model=SignedOperation, tags=["operations"])
async def verify_operation(
    ident: str,
    body: SignRequest,
    principal: Verifier,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> SignedOperation:
    """completed -> verified by a second person (meaning ``verified``; 403 AC-2 for the
    performer)."""
    op, order, esig = await completion.verify(
        ctx, session, principal, ident, version, body.signature
    )
    return SignedOperation(
        operation=await _op_answer(session, op, order, response),
        signature=await signatures.public(session, esig),
    )


@router.post(
    "/operations/{ident}/release-hold", response_model=SignedOperation, tags=["operations"]
)
async def release_operation_hold(
    ident: str,
    body: SignRequest,
    principal: Qa,
    version: VersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> SignedOperation:
    """held -> running with QA's e-signature (meaning ``approved``) once the operation's
    deviations are closed (409 PROC-2 otherwise)."""
    op, order, esig = await execution.release_hold(
        ctx, session, principal, ident, version, body.signature
    )
    return SignedOperation(
        operation=await _op_answer(session, op, order, response),
        signature=await signatures.public(session, esig),
    )


@router.get("/work-centers/{code}/queue", response_model=QueueList, tags=["operations"])
async def dispatch_queue(code: str, session: SessionDep, _: Reader) -> QueueList:
    """Ready operations of a work center in dispatch order: planned start, priority, due."""
    pairs = await dispatch.queue(session, code)
    return QueueList(work_center_code=code, items=await orders.operations_public(session, pairs))


# --- deviations ------------------------------------------------------------------------------


@router.get("/deviations", response_model=DeviationList, tags=["deviations"])
async def list_deviations(
    session: SessionDep,
    _: Reader,
    status: DeviationStatus | None = None,
    work_order: str | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> DeviationList:
    rows, last = await deviations.list_deviations(
        session, status=status, work_order=work_order, after=decode_str_cursor(cursor), limit=limit
    )
    return DeviationList(
        items=[await deviations.public(session, d) for d in rows],
        next_cursor=encode_cursor(last) if last else None,
    )


@router.get("/deviations/{number}", response_model=DeviationPublic, tags=["deviations"])
async def get_deviation(
    number: str, session: SessionDep, _: Reader, response: Response
) -> DeviationPublic:
    dev = await deviations.get(session, number)
    response.headers["ETag"] = etag(dev.version)
    return await deviations.public(session, dev)


@router.post("/deviations/{number}/close", response_model=DeviationClosed, tags=["deviations"])
async def close_deviation(
    number: str,
    body: DeviationClose,
    principal: Qa,
    version: OptionalVersionDep,
    ctx: ContextDep,
    session: SessionDep,
    response: Response,
) -> DeviationClosed:
    """QA dispositions and closes a deviation with an e-signature (meaning ``approved``)."""
    dev, esig = await deviations.close(ctx, session, principal, number, version, body)
    response.headers["ETag"] = etag(dev.version)
    return DeviationClosed(
        deviation=await deviations.public(session, dev),
        signature=await signatures.public(session, esig),
    )


# --- qualifications --------------------------------------------------------------------------


@router.get("/users/{username}/qualifications", response_model=QualificationList, tags=["identity"])
async def list_qualifications(
    username: str, ctx: ContextDep, session: SessionDep, _: Reader
) -> QualificationList:
    rows = await qualifications.list_for(session, username)
    now = ctx.clock.now()
    return QualificationList(items=[qualifications.public(q, now) for q in rows])


@router.post(
    "/users/{username}/qualifications", response_model=QualificationPublic, tags=["identity"]
)
async def grant_qualification(
    username: str,
    body: QualificationGrant,
    principal: HoldRole,
    ctx: ContextDep,
    session: SessionDep,
) -> QualificationPublic:
    """Grant or renew a person's qualification for a kind of work until a date. Audited."""
    q = await qualifications.grant(ctx, session, principal, username, body)
    return qualifications.public(q, ctx.clock.now())
