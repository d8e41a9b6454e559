"""The app starts on a migrated database and answers health."""

import httpx

from tests.conftest import Actors


async def test_health_reports_database_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["database"]["status"] == "ok"
    assert body["database"]["revision"] == body["database"]["expected_revision"]


async def test_actors_log_in(client: httpx.AsyncClient, actors: Actors) -> None:
    me = await client.get("/api/v1/auth/me", headers=actors["qa"])
    assert me.status_code == 200
    assert me.json()["roles"] == ["qa"]
    machine = await client.get("/api/v1/auth/me", headers=actors["machine"])
    assert machine.json()["kind"] == "machine"
