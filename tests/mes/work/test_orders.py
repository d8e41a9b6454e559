"""Work orders over HTTP (DOMAIN 3.1): creation with Idempotency-Key replay, PROC-1 (production
orders need an approved work master version), actions out of state order (409 naming the
current state), If-Match (428/412), cancel, hold and QA resume with an e-signature (ES-4,
PROC-2), close by a QA who took no part (PR-6) with reconciled quantities (PR-2)."""

from __future__ import annotations

import pytest

from mes.models import AuditEntry, Deviation, ESignature, Role, WorkOrder
from tests.conftest import create_user, login
from tests.mes.work.conftest import (
    Json,
    Shop,
    completed_mini_order,
    mini_master,
    mini_order,
    sig,
)

WO = "/work-orders"
BODY: Json = {"number": "WO-M-01", "work_master_code": "WM-MINI", "quantity": "10", "uom": "kg"}


async def order_action(
    shop: Shop,
    number: str,
    action: str,
    who: str,
    body: Json,
    *,
    status: int,
    rule: str | None = None,
) -> Json:
    """An order action with the current version as If-Match that must fail."""
    order = await shop.get(f"{WO}/{number}")
    return await shop.problem(
        f"{WO}/{number}/{action}",
        who,
        body,
        version=order["version"],
        status=status,
        rule=rule,
    )


async def running_mini_order(shop: Shop, number: str = "WO-M-01") -> None:
    """A released mini order with its step started on DV-101."""
    await mini_order(shop, number)
    await shop.start(number, 10, "DV-101")


# --- creation ----------------------------------------------------------------------------------


async def test_create_with_idempotency_key_replays_the_first_answer(shop: Shop) -> None:
    """API.md: a retried create with the same Idempotency-Key returns the first response and
    creates one order (one audit entry)."""
    await shop.approved_master(mini_master())
    headers = {**shop.h("planner"), "Idempotency-Key": "erp-4711"}
    first = await shop.client.post(f"/api/v1{WO}", json=BODY, headers=headers)
    again = await shop.client.post(f"/api/v1{WO}", json=BODY, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json() == first.json()
    assert again.headers["ETag"] == first.headers["ETag"]
    assert (await shop.count(WorkOrder))["work_order"] == 1
    assert [e.action for e in await shop.audit("work_order", "WO-M-01")] == ["create"]
    other = await shop.client.post(
        f"/api/v1{WO}", json={**BODY, "number": "WO-M-02"}, headers=headers
    )
    assert other.status_code == 422, other.text
    assert (await shop.count(WorkOrder))["work_order"] == 1


async def test_created_order_freezes_the_master_and_waits(shop: Shop) -> None:
    """DOMAIN 3.1: a new order is a draft with its steps waiting, frozen from version 1."""
    await shop.approved_master(mini_master())
    order = await shop.order("WO-M-01", "WM-MINI", "10", "kg", priority=2)
    assert (order["status"], order["work_master_version"], order["lot_number"]) == (
        "draft",
        1,
        "WO-M-01",
    )
    assert [(o["seq"], o["status"]) for o in order["operations"]] == [(10, "waiting")]
    assert order["pilot"] is False


async def test_production_order_needs_an_approved_version(shop: Shop) -> None:
    """PROC-1: a production order from a master with only a draft is 409; naming the draft
    version explicitly is refused too."""
    await shop.ok("/work-masters", "planner", mini_master(), status=201)
    problem = await shop.problem(WO, "planner", BODY, status=409, rule="PROC-1")
    assert problem["field"] == "work_master_code"
    problem = await shop.problem(
        WO, "planner", {**BODY, "work_master_version": 1}, status=409, rule="PROC-1"
    )
    assert problem["field"] == "work_master_version"
    assert (await shop.count(WorkOrder))["work_order"] == 0


async def test_unknown_work_master_is_422(shop: Shop) -> None:
    """API.md: the code names an existing work master."""
    problem = await shop.problem(WO, "planner", BODY, status=422)
    assert problem["field"] == "work_master_code"


async def test_duplicate_order_number_is_409(shop: Shop) -> None:
    """API.md: order numbers are unique business keys."""
    await mini_order(shop, "WO-M-01")
    problem = await shop.problem(WO, "planner", BODY, status=409)
    assert problem["field"] == "number"
    assert (await shop.count(WorkOrder))["work_order"] == 1


async def test_lot_number_planned_by_another_order_is_409(shop: Shop) -> None:
    """UDI-2: a lot number is unique per material, including lots that orders will produce."""
    await mini_order(shop, "WO-M-01", lot_number="L-2611-A")
    await shop.problem(
        WO,
        "planner",
        {**BODY, "number": "WO-M-02", "lot_number": "L-2611-A"},
        status=409,
    )


async def test_due_before_release_is_422(shop: Shop) -> None:
    """API.md: due_at after release_at."""
    await shop.approved_master(mini_master())
    problem = await shop.problem(
        WO,
        "planner",
        {**BODY, "release_at": "2027-01-10T00:00:00Z", "due_at": "2027-01-09T00:00:00Z"},
        status=422,
    )
    assert problem["field"] == "due_at"


async def test_operator_cannot_create_or_release(shop: Shop) -> None:
    """AC-2: planners and supervisors create and release orders."""
    await shop.approved_master(mini_master())
    await shop.problem(WO, "operator", BODY, status=403)
    order = await shop.order("WO-M-01", "WM-MINI", "10", "kg")
    await shop.problem(
        f"{WO}/WO-M-01/release", "operator", {}, version=order["version"], status=403
    )


# --- state order -------------------------------------------------------------------------------


async def test_release_readies_the_first_step(shop: Shop) -> None:
    """DOMAIN 3.1/3.2: draft -> released; the first operation becomes ready."""
    order = await mini_order(shop)
    assert order["status"] == "released"
    assert [(o["seq"], o["status"]) for o in order["operations"]] == [(10, "ready")]
    actions = [e.action for e in await shop.audit("work_order", "WO-M-01")]
    assert actions == ["create", "release"]


async def test_complete_of_a_released_order_is_409_naming_its_state(shop: Shop) -> None:
    """DOMAIN 3.1: released -> completed is not a transition."""
    await mini_order(shop)
    problem = await order_action(
        shop, "WO-M-01", "complete", "supervisor", {"reason": "done"}, status=409
    )
    assert problem["current_status"] == "released"


async def test_close_of_an_in_progress_order_is_409_naming_its_state(shop: Shop) -> None:
    """DOMAIN 3.1: only a completed order closes."""
    await running_mini_order(shop)
    problem = await order_action(
        shop,
        "WO-M-01",
        "close",
        "qa",
        {"reason": "review", "signature": sig("approved")},
        status=409,
    )
    assert problem["current_status"] == "in_progress"


@pytest.mark.parametrize(
    ("action", "who", "body"),
    [
        ("release", "planner", {}),
        ("hold", "supervisor", {"reason": "check"}),
        ("resume", "qa", {"reason": "ok", "signature": sig("approved")}),
    ],
)
async def test_action_from_the_wrong_state_is_409(
    shop: Shop, action: str, who: str, body: Json
) -> None:
    """DOMAIN 3.1: release a released order, hold or resume one that has not started."""
    await mini_order(shop)
    before = await shop.count(ESignature, AuditEntry)
    problem = await order_action(shop, "WO-M-01", action, who, body, status=409)
    assert problem["current_status"] == "released"
    assert await shop.count(ESignature, AuditEntry) == before


async def test_complete_with_an_unfinished_step_is_409(shop: Shop) -> None:
    """DOMAIN 3.1: in_progress -> completed needs every operation done."""
    await running_mini_order(shop)
    problem = await order_action(
        shop, "WO-M-01", "complete", "supervisor", {"reason": "done"}, status=409
    )
    assert problem["current_status"] == "in_progress"
    assert "operation 10" in problem["detail"]


async def test_complete_before_required_verification_is_409(shop: Shop) -> None:
    """DOMAIN 3.1 / ES-5: a step that asks for verification counts only once verified."""
    await mini_order(shop, verification=True)
    await shop.work("WO-M-01", 10, "DV-101")
    await shop.act("WO-M-01", 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act("WO-M-01", 10, "complete", body={"signature": sig("performed")}, if_match=True)
    problem = await order_action(
        shop, "WO-M-01", "complete", "supervisor", {"reason": "done"}, status=409
    )
    assert "verified" in problem["detail"]


async def test_missing_if_match_is_428_and_stale_is_412(shop: Shop) -> None:
    """API.md: order actions require If-Match; a stale one changes nothing."""
    await shop.approved_master(mini_master())
    order = await shop.order("WO-M-01", "WM-MINI", "10", "kg")
    problem = await shop.problem(f"{WO}/WO-M-01/release", "planner", {}, status=428)
    assert problem["field"] == "header.If-Match"
    await shop.problem(
        f"{WO}/WO-M-01/release", "planner", {}, version=order["version"] + 1, status=412
    )
    await shop.problem(
        f"{WO}/WO-M-01/release", "planner", {}, version=order["version"] - 1, status=412
    )
    assert (await shop.get(f"{WO}/WO-M-01"))["status"] == "draft"


async def test_release_after_the_version_was_retired_is_409(shop: Shop) -> None:
    """PROC-1: a draft order whose master version was retired meanwhile is not released."""
    await shop.approved_master(mini_master())
    order = await shop.order("WO-M-01", "WM-MINI", "10", "kg")
    await shop.approved_master(mini_master())  # version 2 retires version 1
    await shop.problem(
        f"{WO}/WO-M-01/release",
        "planner",
        {},
        version=order["version"],
        status=409,
        rule="PROC-1",
    )


# --- cancel --------------------------------------------------------------------------------------


async def test_cancel_a_released_order(shop: Shop) -> None:
    """DOMAIN 3.1: released -> cancelled while nothing has run; its steps leave the queue."""
    order = await mini_order(shop)
    cancelled = await shop.ok(
        f"{WO}/WO-M-01/cancel", "planner", {"reason": "ERP order withdrawn"}, order["version"]
    )
    assert cancelled["status"] == "cancelled"
    assert [o["status"] for o in cancelled["operations"]] == ["aborted"]
    assert (await shop.get("/work-centers/ROP-TRAIN-1/queue"))["items"] == []
    [entry] = [e for e in await shop.audit("work_order", "WO-M-01") if e.action == "cancel"]
    assert (entry.username, entry.reason) == ("planner", "ERP order withdrawn")
    problem = await order_action(shop, "WO-M-01", "release", "planner", {}, status=409)
    assert problem["current_status"] == "cancelled"


async def test_cancel_audits_the_steps_it_aborts(shop: Shop) -> None:
    """AT-1 / DOMAIN 3: every status change is audited with a reason, the aborted operations
    of a cancelled order included."""
    order = await mini_order(shop)
    await shop.ok(f"{WO}/WO-M-01/cancel", "planner", {"reason": "withdrawn"}, order["version"])
    op = order["operations"][0]
    entries = await shop.audit("operation", op["id"])
    assert any("aborted" in str(e.changes) for e in entries), [e.action for e in entries]


async def test_cancel_after_the_start_is_409(shop: Shop) -> None:
    """DOMAIN 3.1: nothing executed is the guard of a cancel."""
    await running_mini_order(shop)
    problem = await order_action(
        shop, "WO-M-01", "cancel", "planner", {"reason": "too late"}, status=409
    )
    assert problem["current_status"] == "in_progress"


# --- hold and resume ---------------------------------------------------------------------------


async def test_hold_by_supervisor_and_resume_by_qa_with_signature(shop: Shop) -> None:
    """DOMAIN 3.1 / ES-4: a supervisor holds; nothing is recorded while held; QA resumes with
    an e-signature, and a wrong password leaves the order held with the attempt audited."""
    await running_mini_order(shop)
    order = await shop.get(f"{WO}/WO-M-01")
    await shop.problem(
        f"{WO}/WO-M-01/hold", "operator", {"reason": "x"}, version=order["version"], status=403
    )
    held = await shop.ok(
        f"{WO}/WO-M-01/hold", "supervisor", {"reason": "seal check"}, order["version"]
    )
    assert held["status"] == "held"
    problem = await shop.act_problem(
        "WO-M-01",
        10,
        "record",
        body={"parameters": [{"name": "devol_pressure", "value": "2", "uom": "mbar"}]},
        status=409,
    )
    assert problem["current_status"] == "held"
    resume = {"reason": "seal checked", "signature": sig("approved")}
    await shop.problem(
        f"{WO}/WO-M-01/resume", "supervisor", resume, version=held["version"], status=403
    )
    signatures = await shop.count(ESignature)
    wrong = {"reason": "seal checked", "signature": sig("approved", password="bad-password-1")}
    await shop.problem(
        f"{WO}/WO-M-01/resume", "qa", wrong, version=held["version"], status=401, rule="ES-4"
    )
    still = await shop.get(f"{WO}/WO-M-01")
    assert (still["status"], still["version"]) == ("held", held["version"])
    assert await shop.count(ESignature) == signatures
    failed = [e for e in await shop.audit("work_order", "WO-M-01") if e.action == "sign_failed"]
    assert [(e.username, e.entity_version) for e in failed] == [("qa", held["version"])]
    resumed = await shop.ok(f"{WO}/WO-M-01/resume", "qa", resume, held["version"])
    assert resumed["work_order"]["status"] == "in_progress"
    assert resumed["signature"]["meaning"] == "approved"
    assert resumed["signature"]["verification"] == "valid"
    assert resumed["signature"]["record_version"] == resumed["work_order"]["version"]


async def test_resume_with_an_open_deviation_is_409(shop: Shop) -> None:
    """PROC-2 / DOMAIN 3.1: held -> in_progress only once every deviation is dispositioned."""
    await running_mini_order(shop)
    recorded = await shop.act(
        "WO-M-01",
        10,
        "record",
        body={"parameters": [{"name": "strand_speed", "value": "35", "uom": "m/min"}]},
    )
    deviation = recorded["parameters"][0]["deviation"]
    assert deviation is not None
    order = await shop.get(f"{WO}/WO-M-01")
    held = await shop.ok(f"{WO}/WO-M-01/hold", "supervisor", {"reason": "speed"}, order["version"])
    before = await shop.count(ESignature)
    resume = {"reason": "speed back", "signature": sig("approved")}
    problem = await shop.problem(
        f"{WO}/WO-M-01/resume", "qa", resume, version=held["version"], status=409, rule="PROC-2"
    )
    assert deviation in problem["detail"]
    assert await shop.count(ESignature) == before
    await shop.ok(
        f"/deviations/{deviation}/close",
        "qa",
        {"disposition": "speed restored; no impact", "signature": sig("approved")},
    )
    resumed = await shop.ok(f"{WO}/WO-M-01/resume", "qa", resume, held["version"])
    assert resumed["work_order"]["status"] == "in_progress"


# --- close ---------------------------------------------------------------------------------------


async def test_close_by_qa_who_verified_is_403(shop: Shop) -> None:
    """PR-6: QA who verified a step took part and cannot approve the record; another QA can."""
    await mini_order(shop, verification=True)
    completed = await completed_mini_order(shop, "WO-M-01", verifier="qa")
    body = {"reason": "record reviewed", "signature": sig("approved")}
    before = await shop.count(ESignature)
    problem = await shop.problem(
        f"{WO}/WO-M-01/close", "qa", body, version=completed["version"], status=403, rule="PR-6"
    )
    assert "took part" in problem["detail"]
    assert await shop.count(ESignature) == before
    closed = await shop.ok(f"{WO}/WO-M-01/close", "qa2", body, completed["version"])
    assert closed["work_order"]["status"] == "closed"
    assert closed["signature"]["signer_username"] == "qa2"


async def test_close_by_a_person_who_recorded_values_is_403(shop: Shop) -> None:
    """PR-6: anyone who did work on the order (here recorded the parameters and checks) is not
    the independent approver of its record."""
    await create_user(shop.ctx, "lead", [Role.operator, Role.qa], full_name="Lead Operator")
    shop.actors.headers["lead"] = await login(shop.client, "lead")
    await running_mini_order(shop)
    await shop.act(
        "WO-M-01",
        10,
        "record",
        "lead",
        {
            "parameters": [
                {"name": "devol_pressure", "value": "2", "uom": "mbar"},
                {"name": "strand_speed", "value": "20", "uom": "m/min"},
            ],
            "checks": [{"name": "strands_intact", "passed": True}],
        },
    )
    await shop.act("WO-M-01", 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act("WO-M-01", 10, "complete", body={"signature": sig("performed")}, if_match=True)
    order = await shop.get(f"{WO}/WO-M-01")
    completed = await shop.ok(
        f"{WO}/WO-M-01/complete", "supervisor", {"reason": "done"}, order["version"]
    )
    await shop.problem(
        f"{WO}/WO-M-01/close",
        "lead",
        {"reason": "record reviewed", "signature": sig("approved")},
        version=completed["version"],
        status=403,
        rule="PR-6",
    )


async def test_close_with_unreconciled_quantities_opens_a_deviation(shop: Shop) -> None:
    """PR-2: started 10 kg but 8 + 0.5 scrap accounted (2 % tolerance): close is 409 and a
    reconciliation deviation is kept; once QA closes it the order can be closed."""
    await mini_order(shop)
    completed = await completed_mini_order(shop, "WO-M-01", good="8", scrap="0.5")
    body = {"reason": "record reviewed", "signature": sig("approved")}
    signatures = await shop.count(ESignature)
    problem = await shop.problem(
        f"{WO}/WO-M-01/close", "qa", body, version=completed["version"], status=409, rule="PR-2"
    )
    assert "a deviation was opened" in problem["detail"]
    assert await shop.count(ESignature) == signatures
    [dev] = (await shop.get("/deviations", work_order="WO-M-01"))["items"]
    assert (dev["kind"], dev["status"], dev["opened_by"]) == ("reconciliation", "open", "qa")
    assert "started 10.000000" in dev["description"]
    assert (await shop.count(Deviation))["deviation"] == 1
    # still open: PR-6 (deviations dispositioned), no second deviation
    await shop.problem(
        f"{WO}/WO-M-01/close", "qa", body, version=completed["version"], status=409, rule="PR-6"
    )
    assert (await shop.count(Deviation))["deviation"] == 1
    closed_dev = await shop.ok(
        f"/deviations/{dev['number']}/close",
        "qa2",
        {"disposition": "1.5 kg purge loss documented", "signature": sig("approved")},
    )
    assert closed_dev["deviation"]["status"] == "closed"
    closed = await shop.ok(f"{WO}/WO-M-01/close", "qa", body, completed["version"])
    assert closed["work_order"]["status"] == "closed"
    record = await shop.get(f"{WO}/WO-M-01/record")
    assert record["quantities"]["reconciled"] is False
    assert [d["status"] for d in record["deviations"]] == ["closed"]


async def test_complete_and_close_need_their_roles(shop: Shop) -> None:
    """AC-2 / DOMAIN 3.1: supervisors complete (not planners), QA closes (not supervisors)."""
    await mini_order(shop)
    await shop.work("WO-M-01", 10, "DV-101")
    await shop.act("WO-M-01", 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act("WO-M-01", 10, "complete", body={"signature": sig("performed")}, if_match=True)
    order = await shop.get(f"{WO}/WO-M-01")
    await shop.problem(
        f"{WO}/WO-M-01/complete",
        "planner",
        {"reason": "done"},
        version=order["version"],
        status=403,
    )
    completed = await shop.ok(
        f"{WO}/WO-M-01/complete", "supervisor", {"reason": "done"}, order["version"]
    )
    body = {"reason": "record reviewed", "signature": sig("approved")}
    await shop.problem(
        f"{WO}/WO-M-01/close", "supervisor", body, version=completed["version"], status=403
    )
