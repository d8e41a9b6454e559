"""Shop-floor fixtures: the demo plant loaded, a second operator (the verifier), and a client
wrapper for work masters, work orders and operation actions."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func
from sqlmodel import SQLModel, col, select

from mes.app import create_app
from mes.context import AppContext
from mes.demo import read_work_masters
from mes.identity import keys
from mes.identity.schemas import ApiKeyCreate
from mes.models import AuditEntry, Equipment, Operation, Role, WorkOrder
from mes.plant.loader import load_plant_file
from mes.principal import system_principal
from tests.conftest import (
    BACKEND,
    PASSWORD,
    ROLES,
    Actors,
    FakeClock,
    create_user,
    login,
    make_settings,
    pg_admin,
    pg_url,
)

API = "/api/v1"
CONFIG = Path(__file__).resolve().parents[3] / "config"
PLANT = CONFIG / "plant.yaml"
WORK_MASTERS = CONFIG / "work_masters.yaml"
Json = dict[str, Any]


def sig(meaning: str, password: str = PASSWORD, comment: str | None = None) -> Json:
    body: Json = {"password": password, "meaning": meaning}
    if comment is not None:
        body["comment"] = comment
    return body


def _master(code: str) -> Json:
    """A work master body from the demo plant's config/work_masters.yaml."""
    for entry in read_work_masters(WORK_MASTERS):
        if entry["code"] == code:
            return {k: v for k, v in copy.deepcopy(entry).items() if k != "approve"}
    raise KeyError(code)


def resin_master(code: str = "WM-RES-PLGA9010") -> Json:
    """A two-step master recipe for PLGA 90:10 resin on ROP train 1 (DOMAIN 5 limits)."""
    return {**_master("WM-RES-PLGA9010"), "code": code}


def suture_master(code: str = "WM-SUT-PLGA-4-0-45") -> Json:
    """Needle attachment then dry packaging of a PLGA 90:10 4-0 suture."""
    return {**_master("WM-SUT-PLGA-4-0-45"), "code": code}


def pilot_master(code: str = "WM-RES-PLGA8515") -> Json:
    """The PLGA 85:15 recipe the pilot center runs as a draft on RDC-ROP-PILOT."""
    return {**_master("WM-RES-PLGA8515"), "code": code}


@dataclass
class Floor:
    """API calls of the shop floor with the actors' headers."""

    client: httpx.AsyncClient
    actors: Actors

    def h(self, who: str, version: int | None = None) -> dict[str, str]:
        headers = dict(self.actors[who])
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        return headers

    async def post(
        self, path: str, who: str, body: Json | None = None, version: int | None = None
    ) -> httpx.Response:
        return await self.client.post(f"{API}{path}", json=body, headers=self.h(who, version))

    async def ok(
        self,
        path: str,
        who: str,
        body: Json | None = None,
        version: int | None = None,
        status: int = 200,
    ) -> Json:
        response = await self.post(path, who, body, version)
        assert response.status_code == status, response.text
        data: Json = response.json()
        return data

    async def get(self, path: str, who: str = "supervisor", **params: Any) -> Json:
        response = await self.client.get(f"{API}{path}", params=params, headers=self.h(who))
        assert response.status_code == 200, response.text
        data: Json = response.json()
        return data

    async def released_lot(self, material: str, lot: str, quantity: str, uom: str) -> None:
        await self.ok(
            "/lots/receive",
            "operator",
            {
                "material_code": material,
                "lot_number": lot,
                "quantity": quantity,
                "uom": uom,
                "supplier": "Acme Chemicals",
                "supplier_lot": f"S-{lot}",
                "coa_ref": f"CoA-{lot}",
            },
            status=201,
        )
        await self.ok(
            f"/lots/{lot}/status",
            "qa",
            {"status": "released", "reason": "CoA and tests pass", "signature": sig("released")},
        )

    async def approved_master(self, body: Json) -> Json:
        created = await self.ok("/work-masters", "planner", body, status=201)
        path = f"/work-masters/{created['code']}/versions/{created['version']}/approve"
        approved = await self.ok(
            path, "qa", {"signature": sig("approved")}, version=created["record_version"]
        )
        master: Json = approved["work_master"]
        return master

    async def order(self, number: str, master: str, quantity: str, uom: str, **extra: Any) -> Json:
        body = {"number": number, "work_master_code": master, "quantity": quantity, "uom": uom}
        return await self.ok("/work-orders", "planner", {**body, **extra}, status=201)

    async def released_order(
        self, number: str, master: str, quantity: str, uom: str, **extra: Any
    ) -> Json:
        created = await self.order(number, master, quantity, uom, **extra)
        return await self.ok(
            f"/work-orders/{number}/release", "planner", {}, version=created["version"]
        )

    async def op(self, number: str, seq: int) -> Json:
        order = await self.get(f"/work-orders/{number}")
        found: Json = next(o for o in order["operations"] if o["seq"] == seq)
        return found

    async def act(
        self,
        number: str,
        seq: int,
        action: str,
        who: str = "operator",
        body: Json | None = None,
        *,
        if_match: bool = False,
        status: int = 200,
    ) -> Json:
        """POST an operation action (with the current version as If-Match when asked)."""
        current = await self.op(number, seq)
        version = current["version"] if if_match else None
        return await self.ok(
            f"/operations/{current['id']}/{action}", who, body, version=version, status=status
        )

    async def start(self, number: str, seq: int, unit: str, who: str = "operator") -> Json:
        await self.act(
            number,
            seq,
            "line-clearance",
            who,
            {"equipment_code": unit, "items": ["previous product removed", "documents cleared"]},
        )
        return await self.act(number, seq, "start", who, {"equipment_code": unit}, if_match=True)


@pytest.fixture
async def floor(ctx: AppContext, client: httpx.AsyncClient, actors: Actors) -> Floor:
    await load_plant_file(ctx, system_principal("test"), PLANT)
    await create_user(ctx, "operator2", [Role.operator], full_name="Second Operator")
    actors.headers["operator2"] = await login(client, "operator2")
    await create_user(ctx, "qa2", [Role.qa], full_name="Second QA")
    actors.headers["qa2"] = await login(client, "qa2")
    return Floor(client, actors)


# --- a faster shop floor for the rule tests ----------------------------------------------------
#
# Loading config/plant.yaml takes about a second, so the rule tests copy a template that already
# holds the plant, the people and the line-gw-1 key (a file copy on SQLite, CREATE DATABASE ...
# TEMPLATE on PostgreSQL): every test still gets its own real database.

PEOPLE: list[tuple[str, list[Role]]] = [(role, [Role(role)]) for role in ROLES] + [
    ("operator2", [Role.operator]),
    ("qa2", [Role.qa]),
]


@dataclass(frozen=True)
class PlantTemplate:
    location: str  # SQLite file or PostgreSQL database name
    api_key: str  # the line-gw-1 key (shown once, when issued)


async def _prepare_plant(url: str, var_dir: Path) -> str:
    """Load the plant, create the people and issue the machine key; returns the key."""
    context = AppContext.build(make_settings(url, var_dir))
    try:
        await load_plant_file(context, system_principal("test"), PLANT)
        for username, roles in PEOPLE:
            await create_user(context, username, roles, full_name=f"{username} Person")
        async with context.db.sessionmaker() as session, session.begin():
            issued = await keys.create_api_key(
                context,
                session,
                system_principal("test"),
                ApiKeyCreate(name="line-gw-1", sources=["line-gw-1"], reason="test key"),
            )
        return issued.api_key
    finally:
        await context.close()


@pytest.fixture(scope="session")
def plant_template(
    template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlantTemplate]:
    """The migrated template database with the demo plant, people and machine key."""
    var_dir = tmp_path_factory.mktemp("plant")
    if BACKEND == "sqlite":
        path = var_dir / "plant.db"
        shutil.copyfile(template_db, path)
        key = asyncio.run(_prepare_plant(f"sqlite+aiosqlite:///{path}", var_dir))
        yield PlantTemplate(str(path), key)
        return
    name = f"mes_plant_{os.getpid()}"

    async def create() -> str:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        return await _prepare_plant(pg_url(name), var_dir)

    key = asyncio.run(create())
    yield PlantTemplate(name, key)
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def plant_database_url(plant_template: PlantTemplate, tmp_path: Path) -> AsyncIterator[str]:
    """This test's own copy of the plant template."""
    if BACKEND == "sqlite":
        target = tmp_path / "mes.db"
        shutil.copyfile(plant_template.location, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    name = f"mes_t_{uuid.uuid4().hex[:16]}"
    await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{plant_template.location}"')
    yield pg_url(name)
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Shop(Floor):
    """The floor plus its application context (direct database access) and settable clock."""

    ctx: AppContext
    clock: FakeClock

    async def problem(
        self,
        path: str,
        who: str,
        body: Json | None = None,
        version: int | None = None,
        *,
        status: int,
        rule: str | None = None,
    ) -> Json:
        """POST that must fail with an RFC 9457 problem of ``status`` (and ``rule``)."""
        response = await self.post(path, who, body, version)
        return problem_of(response, status, rule)

    async def act_problem(
        self,
        number: str,
        seq: int,
        action: str,
        who: str = "operator",
        body: Json | None = None,
        *,
        if_match: bool = False,
        status: int,
        rule: str | None = None,
    ) -> Json:
        """An operation action that must fail."""
        current = await self.op(number, seq)
        version = current["version"] if if_match else None
        response = await self.post(f"/operations/{current['id']}/{action}", who, body, version)
        return problem_of(response, status, rule)

    async def received_lot(self, material: str, lot: str, quantity: str, uom: str) -> Json:
        """A received lot left in quarantine."""
        body = {
            "material_code": material,
            "lot_number": lot,
            "quantity": quantity,
            "uom": uom,
            "supplier": "Acme Chemicals",
            "supplier_lot": f"S-{lot}",
            "coa_ref": f"CoA-{lot}",
        }
        return await self.ok("/lots/receive", "operator", body, status=201)

    async def count(self, *models: type[SQLModel]) -> dict[str, int]:
        """Row counts of the given tables."""
        out: dict[str, int] = {}
        async with self.ctx.db.sessionmaker() as session:
            for model in models:
                result = await session.execute(select(func.count()).select_from(model))
                out[str(model.__tablename__)] = int(result.scalar_one())
        return out

    async def audit(self, entity_type: str, entity_id: str | None = None) -> list[AuditEntry]:
        """Audit entries of an entity type (and id), in writing order."""
        stmt = select(AuditEntry).where(AuditEntry.entity_type == entity_type)
        if entity_id is not None:
            stmt = stmt.where(AuditEntry.entity_id == entity_id)
        async with self.ctx.db.sessionmaker() as session:
            rows = await session.execute(stmt.order_by(col(AuditEntry.seq)))
            return list(rows.scalars())

    async def set_operation(self, number: str, seq: int, **values: Any) -> None:
        """Write operation columns the API does not expose yet (planned start, planned unit)."""
        async with self.ctx.db.sessionmaker() as session, session.begin():
            order = (
                await session.execute(select(WorkOrder).where(WorkOrder.number == number))
            ).scalar_one()
            op = (
                await session.execute(
                    select(Operation).where(
                        Operation.work_order_id == order.id, Operation.seq == seq
                    )
                )
            ).scalar_one()
            for name, value in values.items():
                setattr(op, name, value)
            session.add(op)

    async def equipment_id(self, code: str) -> uuid.UUID:
        async with self.ctx.db.sessionmaker() as session:
            found = await session.execute(select(Equipment.id).where(Equipment.code == code))
            return found.scalar_one()

    async def work(self, number: str, seq: int, unit: str, who: str = "operator") -> None:
        """Start an operation and record its values (``work_values``); it stays running."""
        await self.start(number, seq, unit, who)
        await self.work_values(number, seq, who)

    async def work_values(self, number: str, seq: int = 10, who: str = "operator") -> None:
        """Record every parameter of a running operation at its target (automatic ones through
        the line-gw-1 key) and pass every check."""
        order = await self.get(f"/work-orders/{number}")
        master = await self.get(
            f"/work-masters/{order['work_master_code']}/versions/{order['work_master_version']}"
        )
        spec = next(o for o in master["operations"] if o["seq"] == seq)
        values = [
            {"name": p["name"], "value": p["target"], "uom": p["uom"]}
            for p in spec["parameters"]
            if p["capture"] == "manual"
        ]
        checks = [{"name": c["name"], "passed": True} for c in spec["checks"]]
        if values or checks:
            await self.act(number, seq, "record", who, {"parameters": values, "checks": checks})
        auto = [
            {"name": p["name"], "value": p["target"], "uom": p["uom"], "source": "auto"}
            for p in spec["parameters"]
            if p["capture"] == "auto"
        ]
        if auto:
            await self.act(number, seq, "record", "machine", {"parameters": auto})


def problem_of(response: httpx.Response, status: int, rule: str | None = None) -> Json:
    """The RFC 9457 body of a refused request, checked for status and rule id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: Json = response.json()
    assert body["status"] == status
    if rule is not None:
        assert body.get("rule") == rule, body
    return body


def mini_master(
    code: str = "WM-MINI",
    *,
    verification: bool = False,
    tolerance_pct: str = "2",
    bom: list[Json] | None = None,
) -> Json:
    """A one-step master recipe on DV-101: a critical pressure, a non-critical speed with alert
    and action limits, one check, the output reported in the same step."""
    return {
        "code": code,
        "name": "Devolatilize PLGA 90:10 melt",
        "kind": "master_recipe",
        "product_code": "RES-PLGA9010",
        "batch_size": "10",
        "uom": "kg",
        "reconciliation_tolerance_pct": tolerance_pct,
        "operations": [
            {
                "seq": 10,
                "name": "Devolatilize and pelletize",
                "work_center_code": "ROP-TRAIN-1",
                "eligible_equipment": ["DV-101"],
                "bom": bom or [],
                "parameters": [
                    {
                        "name": "devol_pressure",
                        "uom": "mbar",
                        "target": "2",
                        "action_high": "5",
                        "critical": True,
                    },
                    {
                        "name": "strand_speed",
                        "uom": "m/min",
                        "target": "20",
                        "alert_low": "15",
                        "alert_high": "25",
                        "action_low": "10",
                        "action_high": "30",
                    },
                ],
                "checks": [{"name": "strands_intact", "description": "No broken strands"}],
                "requires_verification": verification,
                "reports_output": True,
            }
        ],
    }


@pytest.fixture(scope="session")
def shop_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """One application object for the rule tests: building the routes and OpenAPI document
    takes longer than a test, and the app keeps no state besides ``state.mes`` (the context the
    lifespan would set), which ``shop`` sets to each test's own context."""
    settings = make_settings("sqlite+aiosqlite://", tmp_path_factory.mktemp("app"))
    return create_app(settings=settings, migrate=False)


@pytest.fixture
async def shop(
    shop_app: FastAPI,
    plant_template: PlantTemplate,
    plant_database_url: str,
    tmp_path: Path,
    clock: FakeClock,
) -> AsyncIterator[Shop]:
    """The demo plant, every role logged in (plus operator2 and qa2) and the line-gw-1 key."""
    context = AppContext.build(make_settings(plant_database_url, tmp_path), clock=clock)
    shop_app.state.mes = context
    try:
        transport = httpx.ASGITransport(app=shop_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mes.test") as c:
            headers = {username: await login(c, username) for username, _ in PEOPLE}
            headers["machine"] = {"X-API-Key": plant_template.api_key}
            yield Shop(c, Actors(headers), context, clock)
    finally:
        del shop_app.state.mes
        await context.close()


async def mini_order(
    shop: Shop,
    number: str = "WO-M-01",
    quantity: str = "10",
    *,
    verification: bool = False,
    **extra: Any,
) -> Json:
    """A released order of ``mini_master`` (approved by QA on first use in a test)."""
    if not (await shop.get("/work-masters", code="WM-MINI"))["items"]:
        await shop.approved_master(mini_master(verification=verification))
    return await shop.released_order(number, "WM-MINI", quantity, "kg", **extra)


async def completed_mini_order(
    shop: Shop,
    number: str,
    *,
    good: str = "10",
    scrap: str = "0",
    performer: str = "operator",
    verifier: str | None = None,
) -> Json:
    """A released ``mini_master`` order worked through on DV-101 and completed by the
    supervisor (verified by ``verifier`` when given)."""
    await shop.work(number, 10, "DV-101", performer)
    await shop.act(
        number,
        10,
        "report-output",
        performer,
        {"quantity": good, "uom": "kg", "scrap_quantity": scrap},
    )
    await shop.act(
        number, 10, "complete", performer, {"signature": sig("performed")}, if_match=True
    )
    if verifier is not None:
        await shop.act(
            number, 10, "verify", verifier, {"signature": sig("verified")}, if_match=True
        )
    order = await shop.get(f"/work-orders/{number}")
    return await shop.ok(
        f"/work-orders/{number}/complete",
        "supervisor",
        {"reason": "all steps done"},
        version=order["version"],
    )
