"""Identification API over HTTP (/api/v1/scans): every scan attempt answered with 200 and
stored as a ScanEvent (ID-1), bad scans answered with ``ok: false`` and their errors, repeat
scans within 2 s not stored twice (DOMAIN 6), role checks (AC-2), 422 only for invalid bodies,
and the scan log with cursor pagination."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func
from sqlmodel import col, select

from mes.app import create_app
from mes.context import AppContext
from mes.models import ScanEvent
from tests.conftest import Actors, FakeClock

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
GTIN = "09506000134352"
GOOD = f"]d201{GTIN}1720122510ABC123\x1d21SN0001"

Json = dict[str, Any]


@pytest.fixture
async def app(ctx: AppContext) -> AsyncIterator[FastAPI]:
    """The application, with the identification routes among its own."""
    application = create_app(context=ctx, migrate=False)
    async with application.router.lifespan_context(application):
        yield application


async def scan(
    client: httpx.AsyncClient, headers: Mapping[str, str], raw: str, **extra: Any
) -> Json:
    response = await client.post(f"{API}/scans", json={"raw": raw, **extra}, headers=dict(headers))
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def stored(ctx: AppContext) -> list[ScanEvent]:
    async with ctx.db.sessionmaker() as session:
        rows = await session.execute(select(ScanEvent).order_by(col(ScanEvent.seq)))
        return list(rows.scalars())


async def count(ctx: AppContext) -> int:
    async with ctx.db.sessionmaker() as session:
        return int(
            (await session.execute(select(func.count()).select_from(ScanEvent))).scalar_one()
        )


def assert_problem(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: Json = response.json()
    assert body["status"] == status
    return body


# --- answers -------------------------------------------------------------------------------------


async def test_good_scan_is_answered_and_stored(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    body = await scan(client, actors["operator"], GOOD, context="consume:WO-1/20")
    assert body["ok"] is True
    assert body["outcome"] == "ok"
    assert body["duplicate"] is False
    assert body["errors"] == []
    assert body["warnings"] == []
    assert body["symbology_id"] == "]d2"
    assert body["gtin"] == GTIN
    assert body["lot"] == "ABC123"
    assert body["serial"] == "SN0001"
    assert body["expiry_date"] == "2020-12-25"
    assert body["production_date"] is None
    assert body["element_string"] == f"01{GTIN}1720122510ABC123\x1d21SN0001"
    assert body["element_string_display"] == f"01{GTIN}1720122510ABC123<GS>21SN0001"
    assert body["hri"] == f"(01){GTIN}(17)2020-12-25(10)ABC123(21)SN0001"
    assert body["raw"] == f"]d201{GTIN}1720122510ABC123\\x1d21SN0001"
    assert body["username"] == "operator"
    assert body["context"] == "consume:WO-1/20"
    assert body["at"].endswith("Z") or body["at"].endswith("+00:00")

    [event] = await stored(ctx)
    assert str(event.id) == body["id"]
    assert event.seq == body["seq"]
    assert event.raw_escaped == f"]d201{GTIN}1720122510ABC123\\x1d21SN0001"
    assert event.outcome == "ok"
    assert event.symbology_id == "]d2"
    assert event.errors == []
    assert event.parsed["lot"] == "ABC123"
    assert event.context == "consume:WO-1/20"


@pytest.mark.parametrize(
    ("raw", "outcome", "words"),
    [
        (f"]d101{GTIN}10ABC123", "rejected", "Plain DataMatrix (]d1)"),
        ("]d20109506000134353", "rejected", "check digit is 3, expected 2"),
        ("]d210ABC123", "rejected", "needs AI (01) GTIN"),
        (f"]d201{GTIN}10AB#C", "rejected", "CSET 82"),
        ("hello world", "rejected", "not GS1 data"),
        (f"]d201{GTIN}10LOT42A21SN0001", "suspect", "Separator suspected"),
    ],
)
async def test_bad_scan_is_an_answer_not_a_client_error(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, raw: str, outcome: str, words: str
) -> None:
    body = await scan(client, actors["operator"], raw)
    assert body["outcome"] == outcome
    assert body["ok"] is (outcome != "rejected")
    messages = body["errors"] if outcome == "rejected" else body["warnings"]
    assert any(words in m for m in messages), messages
    [event] = await stored(ctx)
    assert event.outcome == outcome
    assert event.errors == body["errors"]
    assert event.parsed["warnings"] == body["warnings"]


async def test_typed_hri_is_accepted(client: httpx.AsyncClient, actors: Actors) -> None:
    body = await scan(client, actors["qa"], f"(01){GTIN}(17)2020-12-25(10)ABC123")
    assert body["ok"] is True
    assert body["symbology_id"] is None
    assert body["element_string"] == f"01{GTIN}1720122510ABC123"


async def test_every_attempt_is_stored(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    raws = [GOOD, "]d1xyz", "]d20109506000134353", "(01)09506000134352(10)A B", "x", "]Q3"]
    for raw in raws:
        await scan(client, actors["operator"], raw)
    events = await stored(ctx)
    assert [e.raw_escaped for e in events] == [
        f"]d201{GTIN}1720122510ABC123\\x1d21SN0001",
        "]d1xyz",
        "]d20109506000134353",
        "(01)09506000134352(10)A B",
        "x",
        "]Q3",
    ]
    assert [e.outcome for e in events] == ["ok"] + ["rejected"] * 5
    assert all(e.username == "operator" for e in events)


# --- repeat scans --------------------------------------------------------------------------------


async def test_repeat_within_two_seconds_is_not_stored_twice(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, clock: FakeClock
) -> None:
    first = await scan(client, actors["operator"], GOOD)
    again = await scan(client, actors["operator"], GOOD)
    assert again["duplicate"] is True
    assert again["id"] == first["id"]
    assert again["seq"] == first["seq"]
    assert await count(ctx) == 1

    other_user = await scan(client, actors["supervisor"], GOOD)
    assert other_user["duplicate"] is False
    other_raw = await scan(client, actors["operator"], GOOD.replace("\x1d", "|"))
    assert other_raw["duplicate"] is False
    assert await count(ctx) == 3

    clock.advance(timedelta(seconds=3))
    later = await scan(client, actors["operator"], GOOD)
    assert later["duplicate"] is False
    assert later["id"] != first["id"]
    assert await count(ctx) == 4


async def test_repeat_of_a_bad_scan_is_not_stored_twice(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    first = await scan(client, actors["operator"], "]d1junk")
    again = await scan(client, actors["operator"], "]d1junk")
    assert again["duplicate"] is True
    assert again["ok"] is False
    assert again["errors"] == first["errors"]
    assert await count(ctx) == 1


# --- roles and validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("operator", 200),
        ("supervisor", 200),
        ("qa", 200),
        ("planner", 200),
        ("admin", 403),
        ("machine", 403),
        ("anonymous", 401),
    ],
)
async def test_who_may_scan(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, role: str, status: int
) -> None:
    response = await client.post(f"{API}/scans", json={"raw": GOOD}, headers=actors[role])
    assert response.status_code == status, response.text
    if status != 200:
        assert_problem(response, status)
        assert await count(ctx) == 0


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("supervisor", 200),
        ("qa", 200),
        ("admin", 200),
        ("operator", 403),
        ("planner", 403),
        ("machine", 403),
        ("anonymous", 401),
    ],
)
async def test_who_may_read_the_scan_log(
    client: httpx.AsyncClient, actors: Actors, role: str, status: int
) -> None:
    response = await client.get(f"{API}/scans", headers=actors[role])
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "raw"),
        ({"raw": ""}, "raw"),
        ({"raw": "0" * 501}, "raw"),
        ({"raw": "\x1d" * 300}, "raw"),
        ({"raw": "]d2\x0001"}, "raw"),
        ({"raw": GOOD, "context": "c" * 101}, "context"),
        ({"raw": GOOD, "lot": "ABC"}, "lot"),
        ({"raw": 12345}, "raw"),
    ],
)
async def test_invalid_bodies_are_422(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext, body: Json, field: str
) -> None:
    response = await client.post(f"{API}/scans", json=body, headers=actors["operator"])
    problem = assert_problem(response, 422)
    assert field in {e["field"] for e in problem["errors"]}
    assert await count(ctx) == 0


# --- the scan log --------------------------------------------------------------------------------


async def test_scan_log_pages_and_filters(client: httpx.AsyncClient, actors: Actors) -> None:
    await scan(client, actors["operator"], GOOD)
    await scan(client, actors["operator"], "]d1junk")
    await scan(client, actors["planner"], f"]d201{GTIN}10LOT42A21SN0001")
    await scan(client, actors["qa"], f"(01){GTIN}")

    page = (await client.get(f"{API}/scans", params={"limit": 3}, headers=actors["qa"])).json()
    assert [i["username"] for i in page["items"]] == ["operator", "operator", "planner"]
    assert [i["outcome"] for i in page["items"]] == ["ok", "rejected", "suspect"]
    assert page["items"][0]["element_string_display"] == f"01{GTIN}1720122510ABC123<GS>21SN0001"
    assert page["items"][0]["duplicate"] is False
    assert page["next_cursor"]
    rest = (
        await client.get(
            f"{API}/scans",
            params={"limit": 3, "cursor": page["next_cursor"]},
            headers=actors["qa"],
        )
    ).json()
    assert [i["username"] for i in rest["items"]] == ["qa"]
    assert rest["next_cursor"] is None

    mine = await client.get(
        f"{API}/scans", params={"username": "operator"}, headers=actors["supervisor"]
    )
    assert [i["outcome"] for i in mine.json()["items"]] == ["ok", "rejected"]
    refused = await client.get(
        f"{API}/scans", params={"outcome": "rejected"}, headers=actors["supervisor"]
    )
    [item] = refused.json()["items"]
    assert item["raw"] == "]d1junk"
    assert item["ok"] is False
    assert item["errors"]


async def test_scan_log_refuses_a_foreign_cursor(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await client.get(
        f"{API}/scans", params={"cursor": "bm90LWFuLWludA"}, headers=actors["qa"]
    )
    problem = assert_problem(response, 422)
    assert problem["field"] == "query.cursor"
