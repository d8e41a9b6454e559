"""Deviations (DOMAIN 3.4, PROC-2): opened by the system, listed and filtered, closed by QA
only with a signed disposition (ES-4 on a wrong password, meaning ``approved``), once."""

from __future__ import annotations

from mes.models import ESignature
from tests.mes.work.conftest import Json, Shop, mini_order, problem_of, sig

MINI = "WO-M-01"


async def open_deviation(shop: Shop, number: str = MINI, speed: str = "35") -> str:
    """A started mini order with strand_speed recorded beyond its action limits."""
    await mini_order(shop, number)
    await shop.start(number, 10, "DV-101")
    recorded = await shop.act(
        number,
        10,
        "record",
        body={"parameters": [{"name": "strand_speed", "value": speed, "uom": "m/min"}]},
    )
    deviation: str = recorded["parameters"][0]["deviation"]
    return deviation


def closing(password: str | None = None, meaning: str = "approved") -> Json:
    signature = sig(meaning) if password is None else sig(meaning, password=password)
    return {"disposition": "no product impact", "signature": signature}


async def test_deviation_is_opened_with_its_order_and_step(shop: Shop) -> None:
    """PROC-2: the deviation names its work order, step, who recorded the value and what."""
    number = await open_deviation(shop)
    dev = await shop.get(f"/deviations/{number}")
    assert (dev["status"], dev["work_order"], dev["operation_seq"], dev["opened_by"]) == (
        "open",
        MINI,
        10,
        "operator",
    )
    assert dev["description"] == (
        f"{MINI}/10 strand_speed = 35 m/min outside the action limits [10, 30]"
    )
    assert [e.action for e in await shop.audit("deviation", number)] == ["open"]


async def test_only_qa_closes_a_deviation(shop: Shop) -> None:
    """DOMAIN 3.4 / AC-2: QA closes deviations."""
    number = await open_deviation(shop)
    for who in ("operator", "supervisor", "planner"):
        await shop.problem(f"/deviations/{number}/close", who, closing(), status=403)
    assert (await shop.get(f"/deviations/{number}"))["status"] == "open"


async def test_close_with_a_wrong_password_is_401_and_stays_open(shop: Shop) -> None:
    """ES-4: the attempt is audited; nothing is signed; the deviation stays open."""
    number = await open_deviation(shop)
    before = await shop.count(ESignature)
    await shop.problem(
        f"/deviations/{number}/close",
        "qa",
        closing(password="wrong-password-9"),
        status=401,
        rule="ES-4",
    )
    assert await shop.count(ESignature) == before
    dev = await shop.get(f"/deviations/{number}")
    assert (dev["status"], dev["disposition"], dev["version"]) == ("open", None, 1)
    assert [e.action for e in await shop.audit("deviation", number)] == ["open", "sign_failed"]


async def test_close_needs_meaning_approved(shop: Shop) -> None:
    """ES-1: a disposition is signed as ``approved``."""
    number = await open_deviation(shop)
    problem = await shop.problem(
        f"/deviations/{number}/close", "qa", closing(meaning="verified"), status=422
    )
    assert problem["field"] == "signature.meaning"


async def test_close_once_with_a_signed_disposition(shop: Shop) -> None:
    """DOMAIN 3.4: open -> closed once, with the disposition and QA's signature; a stale
    If-Match is 412; closing again is 409."""
    number = await open_deviation(shop)
    await shop.problem(f"/deviations/{number}/close", "qa", closing(), version=7, status=412)
    closed = await shop.ok(f"/deviations/{number}/close", "qa", closing(), version=1)
    dev = closed["deviation"]
    assert (dev["status"], dev["disposition"], dev["closed_by"], dev["version"]) == (
        "closed",
        "no product impact",
        "qa",
        2,
    )
    assert closed["signature"]["record_id"] == number
    assert closed["signature"]["verification"] == "valid"
    problem = await shop.problem(f"/deviations/{number}/close", "qa2", closing(), status=409)
    assert problem["current_status"] == "closed"


async def test_list_filters_by_status_and_order(shop: Shop) -> None:
    """API.md: deviations are listed with status and work order filters."""
    first = await open_deviation(shop, "WO-M-01")
    await shop.ok(f"/deviations/{first}/close", "qa", closing())
    await shop.work_values("WO-M-01")  # finish the step so DV-101 is free again
    await shop.act("WO-M-01", 10, "report-output", body={"quantity": "10", "uom": "kg"})
    await shop.act("WO-M-01", 10, "complete", body={"signature": sig("performed")}, if_match=True)
    second = await open_deviation(shop, "WO-M-02", speed="5")
    listed = await shop.get("/deviations")
    assert sorted(d["number"] for d in listed["items"]) == sorted([first, second])
    assert [d["number"] for d in (await shop.get("/deviations", status="open"))["items"]] == [
        second
    ]
    by_order = await shop.get("/deviations", work_order="WO-M-01")
    assert [(d["number"], d["status"]) for d in by_order["items"]] == [(first, "closed")]
    response = await shop.client.get("/api/v1/deviations/DEV-NONE", headers=shop.h("qa"))
    problem_of(response, 404)
