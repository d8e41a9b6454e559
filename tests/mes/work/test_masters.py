"""Work masters over HTTP: draft validation with field paths, PROC-1 (critical parameters need a
unit, target and action limits; a version takes effect only after a signed QA approval), AC-2
(the author never approves), ES-4 (a wrong password signs and changes nothing), If-Match
(428/412), retirement of the previous version and immutability of approved versions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mes.models import AuditEntry, ESignature, WorkMaster
from tests.mes.work.conftest import Json, Shop, mini_master, problem_of, resin_master, sig

WM = "/work-masters"


def approve_path(code: str, version: int) -> str:
    return f"{WM}/{code}/versions/{version}/approve"


def with_op(body: Json, **changes: Any) -> Json:
    """The body with its first operation changed."""
    out = copy.deepcopy(body)
    out["operations"][0].update(changes)
    return out


def with_parameter(body: Json, **spec: Any) -> Json:
    out = copy.deepcopy(body)
    out["operations"][0]["parameters"] = [{"name": "devol_pressure", "uom": "mbar", **spec}]
    return out


# --- draft validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"product_code": "NO-SUCH-RESIN"}, "product_code", id="product"),
        pytest.param(
            {"op": {"work_center_code": "NO-SUCH-WC"}},
            "operations[0].work_center_code",
            id="work-center",
        ),
        pytest.param(
            {"op": {"work_center_code": "DV-101"}},
            "operations[0].work_center_code",
            id="unit-as-work-center",
        ),
        pytest.param(
            {"op": {"eligible_equipment": ["DV-101", "SW-401"]}},
            "operations[0].eligible_equipment[1]",
            id="unit-of-another-work-center",
        ),
        pytest.param(
            {"op": {"equipment_class": "NO_SUCH_CLASS"}},
            "operations[0].equipment_class",
            id="equipment-class",
        ),
        pytest.param(
            {"op": {"bom": [{"material_code": "LLA", "qty_per_unit": "1", "uom": "m"}]}},
            "operations[0].bom[0].uom",
            id="bom-unit",
        ),
        pytest.param({"uom": "m"}, "uom", id="batch-unit"),
        pytest.param(
            {
                "op": {
                    "bom": [
                        {"material_code": "LLA", "qty_per_unit": "1", "uom": "kg"},
                        {"material_code": "NO-SUCH-MAT", "qty_per_unit": "1", "uom": "kg"},
                    ]
                }
            },
            "operations[0].bom[1].material_code",
            id="bom-material",
        ),
    ],
)
async def test_draft_with_unknown_reference_is_422_naming_the_field(
    shop: Shop, change: Json, field: str
) -> None:
    """PROC-1 / API.md errors: every code a draft names must exist and fit; the problem names the
    offending field path and nothing is written."""
    body = {**mini_master(), **{k: v for k, v in change.items() if k != "op"}}
    if "op" in change:
        body = with_op(body, **change["op"])
    before = await shop.count(WorkMaster, AuditEntry)
    problem = await shop.problem(WM, "planner", body, status=422)
    assert problem["field"] == field
    assert await shop.count(WorkMaster, AuditEntry) == before


async def test_limits_out_of_order_are_422(shop: Shop) -> None:
    """PROC-1: action_low <= alert_low <= target <= alert_high <= action_high."""
    body = with_parameter(mini_master(), target="2", alert_high="6", action_high="5")
    problem = await shop.problem(WM, "planner", body, status=422)
    [error] = problem["errors"]
    assert error["field"] == "operations.0.parameters.0"
    assert "alert_high (6) must not exceed action_high (5)" in error["message"]


async def test_target_below_action_low_is_422(shop: Shop) -> None:
    """PROC-1: the target lies inside the validated limits."""
    body = with_parameter(mini_master(), target="1", action_low="2", action_high="5")
    problem = await shop.problem(WM, "planner", body, status=422)
    assert "action_low (2) must not exceed target (1)" in problem["errors"][0]["message"]


async def test_critical_parameter_without_action_limits_is_422(shop: Shop) -> None:
    """PROC-1: a critical parameter needs action limits."""
    body = with_parameter(mini_master(), target="2", alert_high="4", critical=True)
    problem = await shop.problem(WM, "planner", body, status=422)
    [error] = problem["errors"]
    assert error["field"] == "operations.0.parameters.0"
    assert "critical parameter 'devol_pressure' needs action_low/action_high" in error["message"]


async def test_critical_parameter_without_target_is_422(shop: Shop) -> None:
    """PROC-1: a critical parameter needs a target."""
    body = with_parameter(mini_master(), action_high="5", critical=True)
    problem = await shop.problem(WM, "planner", body, status=422)
    assert "needs target" in problem["errors"][0]["message"]


async def test_auto_captured_parameter_without_tag_is_422(shop: Shop) -> None:
    """PROC-1: an automatically captured parameter names its source tag."""
    body = with_parameter(mini_master(), target="2", action_high="5", capture="auto")
    problem = await shop.problem(WM, "planner", body, status=422)
    assert "give its tag" in problem["errors"][0]["message"]


async def test_draft_without_an_output_step_is_422(shop: Shop) -> None:
    """TR-1: one operation must report the produced output."""
    body = with_op(mini_master(), reports_output=False)
    problem = await shop.problem(WM, "planner", body, status=422)
    assert "reports_output" in problem["detail"] + str(problem["errors"])


async def test_duplicate_parameter_names_are_422(shop: Shop) -> None:
    """PROC-1: one spec per parameter in a step."""
    body = mini_master()
    params = body["operations"][0]["parameters"]
    params.append(dict(params[0]))
    problem = await shop.problem(WM, "planner", body, status=422)
    assert "parameter listed twice: devol_pressure" in problem["errors"][0]["message"]


async def test_operator_cannot_create_a_work_master(shop: Shop) -> None:
    """AC-2: permissions per action; operators do not write work masters."""
    await shop.problem(WM, "operator", mini_master(), status=403)


async def test_new_code_starts_at_version_1_and_the_next_draft_is_2(shop: Shop) -> None:
    """VAL-1: versions of a code count up; a draft is not effective (PROC-1)."""
    first = await shop.ok(WM, "planner", mini_master(), status=201)
    second = await shop.ok(WM, "planner", mini_master(), status=201)
    assert (first["version"], first["status"]) == (1, "draft")
    assert (second["version"], second["status"]) == (2, "draft")
    assert first["approval_signature"] is None


# --- approval ------------------------------------------------------------------------------


async def test_author_cannot_approve_own_draft(shop: Shop) -> None:
    """AC-2: QA who wrote the draft may not approve it."""
    draft = await shop.ok(WM, "qa", mini_master(), status=201)
    problem = await shop.problem(
        approve_path("WM-MINI", 1),
        "qa",
        {"signature": sig("approved")},
        version=draft["record_version"],
        status=403,
        rule="AC-2",
    )
    assert "author" in problem["detail"]
    assert (await shop.get(f"{WM}/WM-MINI"))["status"] == "draft"


async def test_qa_who_edited_the_draft_cannot_approve_it(shop: Shop) -> None:
    """AC-2: whoever wrote the content of a version (author or editor) does not approve it."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    edited = with_op(mini_master(), name="Devolatilize, edited by QA")
    response = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1",
        json={**edited, "reason": "QA changed the step"},
        headers=shop.h("qa", draft["record_version"]),
    )
    assert response.status_code == 200, response.text
    await shop.problem(
        approve_path("WM-MINI", 1),
        "qa",
        {"signature": sig("approved")},
        version=response.json()["record_version"],
        status=403,
        rule="AC-2",
    )


async def test_only_qa_approves(shop: Shop) -> None:
    """PROC-1 / AC-2: approval is QA's action."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    await shop.problem(
        approve_path("WM-MINI", 1),
        "supervisor",
        {"signature": sig("approved")},
        version=draft["record_version"],
        status=403,
    )


async def test_approve_with_wrong_password_is_401_and_changes_nothing(shop: Shop) -> None:
    """ES-4: a wrong password signs nothing, changes nothing, and the attempt is audited."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    before = await shop.count(ESignature)
    problem = await shop.problem(
        approve_path("WM-MINI", 1),
        "qa",
        {"signature": sig("approved", password="not-my-password-1")},
        version=draft["record_version"],
        status=401,
        rule="ES-4",
    )
    assert problem["field"] == "signature.password"
    assert await shop.count(ESignature) == before
    current = await shop.get(f"{WM}/WM-MINI/versions/1")
    assert (current["status"], current["record_version"]) == ("draft", draft["record_version"])
    assert current["approval_signature"] is None
    failed = [e for e in await shop.audit("work_master", "WM-MINI/1") if e.action == "sign_failed"]
    assert [(e.username, e.entity_version) for e in failed] == [("qa", draft["record_version"])]


async def test_approve_with_a_meaning_other_than_approved_is_422(shop: Shop) -> None:
    """ES-1: the signature states what it means; approval takes only ``approved``."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    problem = await shop.problem(
        approve_path("WM-MINI", 1),
        "qa",
        {"signature": sig("performed")},
        version=draft["record_version"],
        status=422,
    )
    assert problem["field"] == "signature.meaning"


async def test_approve_without_if_match_is_428(shop: Shop) -> None:
    """API.md: updates require If-Match (428 when missing)."""
    await shop.ok(WM, "planner", mini_master(), status=201)
    problem = await shop.problem(
        approve_path("WM-MINI", 1), "qa", {"signature": sig("approved")}, status=428
    )
    assert problem["field"] == "header.If-Match"


async def test_approve_with_stale_if_match_is_412(shop: Shop) -> None:
    """API.md: a stale If-Match is 412 and nothing is signed."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    before = await shop.count(ESignature)
    await shop.problem(
        approve_path("WM-MINI", 1),
        "qa",
        {"signature": sig("approved")},
        version=draft["record_version"] + 1,
        status=412,
    )
    assert await shop.count(ESignature) == before
    assert (await shop.get(f"{WM}/WM-MINI"))["status"] == "draft"


async def test_approving_version_2_retires_version_1(shop: Shop) -> None:
    """PROC-1 / VAL-1: one effective version per code; the previous approved one is retired
    (audited) and the code now resolves to the new version."""
    v1 = await shop.approved_master(mini_master())
    assert (v1["version"], v1["status"]) == (1, "approved")
    assert v1["approval_signature"]["meaning"] == "approved"
    draft = await shop.ok(
        WM, "planner", with_op(mini_master(), name="Devolatilize, slower"), status=201
    )
    approved = await shop.ok(
        approve_path("WM-MINI", 2),
        "qa",
        {"signature": sig("approved")},
        version=draft["record_version"],
    )
    assert approved["work_master"]["status"] == "approved"
    assert approved["signature"]["verification"] == "valid"
    old = await shop.get(f"{WM}/WM-MINI/versions/1")
    assert old["status"] == "retired"
    assert old["approval_signature"]["verification"] == "superseded"
    effective = await shop.get(f"{WM}/WM-MINI")
    assert (effective["version"], effective["status"]) == (2, "approved")
    assert [e.action for e in await shop.audit("work_master", "WM-MINI/1")] == [
        "create",
        "sign",
        "approve",
        "retired",
    ]
    listed = await shop.get(WM, code="WM-MINI")
    assert [(m["version"], m["status"]) for m in listed["items"]] == [
        (1, "retired"),
        (2, "approved"),
    ]


async def test_approving_an_approved_version_again_is_409(shop: Shop) -> None:
    """PROC-1: only a draft is approved."""
    master = await shop.approved_master(mini_master())
    problem = await shop.problem(
        approve_path("WM-MINI", 1),
        "qa2",
        {"signature": sig("approved")},
        version=master["record_version"],
        status=409,
    )
    assert problem["current_status"] == "approved"


# --- edits -----------------------------------------------------------------------------------


async def test_approved_version_cannot_be_edited(shop: Shop) -> None:
    """VAL-1 / PROC-1: an approved version never changes (409); a new version is needed."""
    master = await shop.approved_master(mini_master())
    response = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1",
        json={**with_op(mini_master(), setup_min="5"), "reason": "faster setup"},
        headers=shop.h("planner", master["record_version"]),
    )
    problem = problem_of(response, 409)
    assert problem["current_status"] == "approved"
    current = await shop.get(f"{WM}/WM-MINI/versions/1")
    assert current["record_version"] == master["record_version"]
    assert current["operations"][0]["setup_min"] == "0"


async def test_draft_is_edited_with_if_match_and_a_reason(shop: Shop) -> None:
    """AT-3: a draft changes with If-Match and a reason; the change is audited."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    body = {**with_op(mini_master(), setup_min="15"), "reason": "setup measured"}
    response = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1", json=body, headers=shop.h("planner")
    )
    assert (problem_of(response, 428))["field"] == "header.If-Match"
    stale = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1",
        json=body,
        headers=shop.h("planner", draft["record_version"] + 5),
    )
    problem_of(stale, 412)
    without_reason = {k: v for k, v in body.items() if k != "reason"}
    refused = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1",
        json=without_reason,
        headers=shop.h("planner", draft["record_version"]),
    )
    problem_of(refused, 422)
    response = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1",
        json=body,
        headers=shop.h("supervisor", draft["record_version"]),
    )
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == f'"{draft["record_version"] + 1}"'
    edited = response.json()
    assert (edited["status"], edited["version"]) == ("draft", 1)
    assert edited["operations"][0]["setup_min"] == "15"
    update = [e for e in await shop.audit("work_master", "WM-MINI/1") if e.action == "update"]
    assert [(e.username, e.reason) for e in update] == [("supervisor", "setup measured")]


async def test_edit_cannot_change_the_code(shop: Shop) -> None:
    """VAL-1: a version belongs to its code."""
    draft = await shop.ok(WM, "planner", mini_master(), status=201)
    response = await shop.client.put(
        f"/api/v1{WM}/WM-MINI/versions/1",
        json={**mini_master("WM-OTHER"), "reason": "rename"},
        headers=shop.h("planner", draft["record_version"]),
    )
    assert (problem_of(response, 422))["field"] == "code"


async def test_unknown_version_is_404(shop: Shop) -> None:
    """API.md: a version that does not exist."""
    await shop.ok(WM, "planner", resin_master(), status=201)
    response = await shop.client.get(
        f"/api/v1{WM}/WM-RES-PLGA9010/versions/9", headers=shop.h("planner")
    )
    problem_of(response, 404)
