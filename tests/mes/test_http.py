"""API conventions: problem+json errors, body cap, cursors, Idempotency-Key, If-Match
(RELIABILITY 2.2, 2.3; API.md conventions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlmodel import func, select

from mes.app import create_app
from mes.context import AppContext
from mes.models import AuditEntry, EquipmentClass
from tests.conftest import Actors, make_settings


def _class(code: str, name: str = "Reactor") -> dict[str, str]:
    return {"code": code, "name": name}


async def test_not_found_is_problem_json(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await client.get("/api/v1/equipment-classes/NOPE", headers=actors["qa"])
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 404
    assert "NOPE" in body["detail"]
    assert body["instance"] == "/api/v1/equipment-classes/NOPE"


async def test_validation_error_names_the_field(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await client.post(
        "/api/v1/equipment-classes", json={"code": "bad code!"}, headers=actors["admin"]
    )
    assert response.status_code == 422
    body = response.json()
    fields = {e["field"] for e in body["errors"]}
    assert {"code", "name"} <= fields
    assert "code" in body["detail"]


async def test_malformed_json_is_422_not_500(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await client.post(
        "/api/v1/equipment-classes",
        content=b"{not json",
        headers={**actors["admin"], "content-type": "application/json"},
    )
    assert response.status_code == 422


async def test_oversized_body_is_413(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    """API4: bodies above the cap are refused before they are processed."""
    big = {"code": "BIG", "name": "x", "description": "y" * (ctx.settings.max_body_bytes + 10)}
    response = await client.post("/api/v1/equipment-classes", json=big, headers=actors["admin"])
    assert response.status_code == 413
    assert response.json()["status"] == 413


async def test_limit_bounds_and_bad_cursor(client: httpx.AsyncClient, actors: Actors) -> None:
    """API4: limit is capped at 500; a forged cursor is a 422, not a 500."""
    too_many = await client.get("/api/v1/materials", params={"limit": 100000}, headers=actors["qa"])
    assert too_many.status_code == 422
    malformed = await client.get(
        "/api/v1/materials", params={"cursor": "%%%"}, headers=actors["qa"]
    )
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["field"] == "query.cursor"
    forged = await client.get(
        "/api/v1/materials", params={"cursor": "bm90LWpzb24"}, headers=actors["qa"]
    )
    assert forged.status_code == 422
    assert forged.json()["field"] == "query.cursor"
    wrong_type = await client.get(
        "/api/v1/audit", params={"cursor": "ImFiYyI"}, headers=actors["qa"]
    )
    assert wrong_type.status_code == 422


async def test_cursor_pagination_walks_every_item_once(
    client: httpx.AsyncClient,
    actors: Actors,
) -> None:
    for i in range(7):
        created = await client.post(
            "/api/v1/equipment-classes", json=_class(f"C-{i}"), headers=actors["admin"]
        )
        assert created.status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (
            await client.get("/api/v1/equipment-classes", params=params, headers=actors["qa"])
        ).json()
        seen += [item["code"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"C-{i}" for i in range(7)]


async def _class_rows(ctx: AppContext, code: str) -> int:
    async with ctx.db.sessionmaker() as session:
        stmt = select(func.count()).select_from(EquipmentClass).where(EquipmentClass.code == code)
        return (await session.execute(stmt)).scalar_one()


async def test_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
) -> None:
    """I5: five retries with one key make one record and the same answer."""
    headers = {**actors["admin"], "Idempotency-Key": "create-ext-1"}
    first = await client.post("/api/v1/equipment-classes", json=_class("EXT"), headers=headers)
    assert first.status_code == 201
    for _ in range(4):
        again = await client.post("/api/v1/equipment-classes", json=_class("EXT"), headers=headers)
        assert again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
    assert await _class_rows(ctx, "EXT") == 1


async def test_same_key_other_body_is_422(
    client: httpx.AsyncClient, actors, ctx: AppContext
) -> None:
    headers = {**actors["admin"], "Idempotency-Key": "k-2"}
    assert (
        await client.post("/api/v1/equipment-classes", json=_class("K2"), headers=headers)
    ).status_code == 201
    other = await client.post(
        "/api/v1/equipment-classes", json=_class("K2", "Other"), headers=headers
    )
    assert other.status_code == 422
    assert other.json()["field"] == "header.Idempotency-Key"


async def test_keys_are_per_principal(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    """Same key from another user is an independent request (no cross-user replay)."""
    a = await client.post(
        "/api/v1/equipment-classes",
        json=_class("P1"),
        headers={**actors["admin"], "Idempotency-Key": "shared"},
    )
    b = await client.post(
        "/api/v1/equipment-classes",
        json=_class("P2"),
        headers={**actors["supervisor"], "Idempotency-Key": "shared"},
    )
    assert (a.status_code, b.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in b.headers


async def test_failed_first_attempt_is_not_stored(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
) -> None:
    """A create that fails stores nothing; a retry with the same key is processed fresh."""
    headers = {**actors["admin"], "Idempotency-Key": "retry-after-409"}
    await client.post("/api/v1/equipment-classes", json=_class("DUP"), headers=actors["admin"])
    clash = await client.post("/api/v1/equipment-classes", json=_class("DUP"), headers=headers)
    assert clash.status_code == 409
    fresh = await client.post("/api/v1/equipment-classes", json=_class("DUP"), headers=headers)
    assert fresh.status_code == 409
    assert "Idempotent-Replayed" not in fresh.headers


async def test_concurrent_retries_make_one_record(
    client: httpx.AsyncClient,
    actors: Actors,
    ctx: AppContext,
) -> None:
    """I5 concurrent: parallel requests with one key give one effect."""
    headers = {**actors["admin"], "Idempotency-Key": "parallel"}
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/equipment-classes", json=_class("PAR"), headers=headers)
            for _ in range(5)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) >= 1
    assert set(codes) <= {201, 409}
    assert await _class_rows(ctx, "PAR") == 1
    async with ctx.db.sessionmaker() as session:
        entries = (
            await session.execute(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.entity_id == "PAR")
            )
        ).scalar_one()
    assert entries == 1


async def test_blank_idempotency_key_is_refused(client: httpx.AsyncClient, actors: Actors) -> None:
    response = await client.post(
        "/api/v1/equipment-classes",
        json=_class("BLANK"),
        headers={**actors["admin"], "Idempotency-Key": "  "},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "header.Idempotency-Key"


async def test_wrong_method_lists_every_allowed_method(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    response = await client.delete("/api/v1/equipment/R-1", headers=actors["admin"])
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, PATCH"


async def test_if_match_rules(client: httpx.AsyncClient, actors: Actors) -> None:
    """I4: 428 without If-Match, 422 when malformed, 412 when stale, 200 and new ETag."""
    created = await client.post(
        "/api/v1/equipment-classes", json=_class("IFM"), headers=actors["admin"]
    )
    assert created.headers["ETag"] == '"1"'
    url = "/api/v1/equipment-classes/IFM"
    patch = {"name": "Renamed", "reason": "typo"}
    missing = await client.patch(url, json=patch, headers=actors["admin"])
    assert missing.status_code == 428
    malformed = await client.patch(
        url, json=patch, headers={**actors["admin"], "If-Match": "banana"}
    )
    assert malformed.status_code == 422
    assert "If-Match" in malformed.json()["detail"]
    ok = await client.patch(url, json=patch, headers={**actors["admin"], "If-Match": '"1"'})
    assert ok.status_code == 200
    assert ok.headers["ETag"] == '"2"'
    stale = await client.patch(
        url, json={"name": "Again", "reason": "x"}, headers={**actors["admin"], "If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.headers["ETag"] == '"2"'
    assert stale.json()["current_version"] == 2


async def test_lost_update_is_prevented(
    client: httpx.AsyncClient, actors: Actors, ctx: AppContext
) -> None:
    """I4: two clients on the same version: exactly one succeeds."""
    await client.post("/api/v1/equipment-classes", json=_class("RACE"), headers=actors["admin"])
    url = "/api/v1/equipment-classes/RACE"
    results = await asyncio.gather(
        *(
            client.patch(
                url,
                json={"name": f"writer {i}", "reason": "race"},
                headers={**actors["admin"], "If-Match": '"1"'},
            )
            for i in range(6)
        )
    )
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1
    assert codes.count(412) == 5
    final = await client.get(url, headers=actors["qa"])
    assert final.json()["version"] == 2


async def test_nul_characters_are_refused_everywhere(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    """PostgreSQL cannot store NUL: body, path, query and login form refuse it with 422."""
    body = await client.post(
        "/api/v1/equipment-classes", json=_class("NUL", "bad\u0000name"), headers=actors["admin"]
    )
    assert body.status_code == 422
    assert body.json()["errors"][0]["field"] == "name"
    path = await client.get("/api/v1/equipment/R%00-1", headers=actors["qa"])
    assert path.status_code == 422
    query = await client.get("/api/v1/audit", params={"entity_id": "a\x00b"}, headers=actors["qa"])
    assert query.status_code == 422
    login = await client.post("/api/v1/auth/token", data={"username": "qa\x00", "password": "x"})
    assert login.status_code == 422
    assert login.json()["field"] == "username"


async def _preflight(app: FastAPI, origin: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mes.test") as c:
        return await c.options(
            "/api/v1/work-orders",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Idempotency-Key",
            },
        )


async def test_a_browser_on_another_origin_is_refused_unless_configured(
    database_url: str, tmp_path: Path
) -> None:
    """Same-origin by default (no CORS headers at all); an origin in ``cors_origins`` may
    call the API from a browser, with the headers the API's conventions need."""
    planner = "https://planning.example"
    for origins in ((planner,), ()):
        context = AppContext.build(make_settings(database_url, tmp_path, cors_origins=origins))
        try:
            app = create_app(context=context, migrate=False)
            answer = await _preflight(app, planner)
            if not origins:
                # No CORS handling at all: the preflight is an OPTIONS the route does not allow.
                assert answer.status_code == 405
                assert "access-control-allow-origin" not in answer.headers
                continue
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == planner
            assert "Idempotency-Key" in answer.headers["access-control-allow-headers"]
            refused = await _preflight(app, "https://elsewhere.example")
            assert refused.status_code == 400
            assert "access-control-allow-origin" not in refused.headers
        finally:
            await context.close()


def test_cors_origins_are_origins(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, cors_origins=(" https://plan.example/ ",))
    assert settings.cors_origins == ("https://plan.example",)
    for wrong in ("plan.example", "https://plan.example/api", "ftp://plan.example"):
        with pytest.raises(ValidationError, match="is not an origin"):
            make_settings(database_url, tmp_path, cors_origins=(wrong,))
