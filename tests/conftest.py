"""Test harness: a migrated database per test on the backend chosen by MES_TEST_DATABASE
(``sqlite`` or ``postgresql``), the ASGI app with its lifespan, and logged-in clients.

SQLite tests copy a migrated template file; PostgreSQL tests clone a migrated template
database (CREATE DATABASE ... TEMPLATE), so every test starts from the same schema and
nothing leaks between tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from mes.app import create_app
from mes.context import AppContext
from mes.db import create_engine
from mes.identity import keys
from mes.identity import service as identity
from mes.identity.schemas import ApiKeyCreate, UserCreate
from mes.migrate import upgrade
from mes.models import Role
from mes.principal import system_principal
from mes.settings import MesSettings

BACKEND = os.environ.get("MES_TEST_DATABASE", "sqlite")
PG_DSN = os.environ.get("MES_TEST_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
PASSWORD = "correct-horse-battery-7"
ROLES = ("operator", "supervisor", "planner", "qa", "admin")

if BACKEND not in {"sqlite", "postgresql"}:
    raise RuntimeError(f"MES_TEST_DATABASE must be sqlite or postgresql, not {BACKEND!r}")


def pg_url(database: str) -> str:
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def pg_admin(*statements: str) -> None:
    """Run ``statements`` on the admin connection (CREATE / DROP DATABASE)."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database that every test copies."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.db"
        asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
        yield str(path)
        return
    name = f"mes_tpl_{os.getpid()}"

    async def create() -> None:
        await pg_admin(
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
        )
        await _migrate(pg_url(name))

    async def drop() -> None:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    asyncio.run(create())
    yield name
    asyncio.run(drop())


@pytest.fixture
async def database_url(template_db: str, tmp_path: Path) -> AsyncIterator[str]:
    if BACKEND == "sqlite":
        target = tmp_path / "mes.db"
        shutil.copyfile(template_db, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    name = f"mes_t_{uuid.uuid4().hex[:16]}"
    await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield pg_url(name)
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, tmp_path: Path, **overrides: object) -> MesSettings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "var_dir": tmp_path / "var",
        "jwt_secret": "test-secret-" + "x" * 40,
        "password_hashing": "test-cheap",
        # No scheduler in a test's app unless the test asks (tests/mes/background).
        "background_enabled": False,
        # Scheduling runs are solved where a test says so (SolverRunner.run_next).
        "schedule_runner_enabled": False,
    }
    values.update(overrides)
    return MesSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> MesSettings:
    return make_settings(database_url, tmp_path)


class FakeClock:
    """A settable clock for session-timeout and due-date tests."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def ctx(settings: MesSettings, clock: FakeClock) -> AsyncIterator[AppContext]:
    context = AppContext.build(settings, clock=clock)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def app(ctx: AppContext) -> AsyncIterator[FastAPI]:
    application = create_app(context=ctx, migrate=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mes.test") as c:
        yield c


async def create_user(
    ctx: AppContext,
    username: str,
    roles: list[Role],
    password: str = PASSWORD,
    full_name: str | None = None,
) -> None:
    async with ctx.db.sessionmaker() as session, session.begin():
        await identity.create_user(
            ctx,
            session,
            system_principal("test"),
            UserCreate(
                username=username,
                full_name=full_name or username.title(),
                password=password,
                roles=roles,
                reason="test account",
            ),
        )


async def login(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token", data={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@dataclass
class Actors:
    """Logged-in headers per role, plus a machine key."""

    headers: dict[str, dict[str, str]]

    def __getitem__(self, role: str) -> dict[str, str]:
        return self.headers[role]


@pytest.fixture
async def actors(ctx: AppContext, client: httpx.AsyncClient) -> Actors:
    headers: dict[str, dict[str, str]] = {}
    for role in ROLES:
        await create_user(ctx, role, [Role(role)], full_name=f"{role.title()} Person")
        headers[role] = await login(client, role)
    async with ctx.db.sessionmaker() as session, session.begin():
        issued = await keys.create_api_key(
            ctx,
            session,
            system_principal("test"),
            ApiKeyCreate(name="line-gw-1", sources=["line-gw-1"], reason="test key"),
        )
    headers["machine"] = {"X-API-Key": issued.api_key}
    headers["anonymous"] = {}
    return Actors(headers)
