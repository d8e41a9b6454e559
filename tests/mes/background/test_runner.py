"""The runner in the app and on the command line: started by the lifespan when
``background_enabled``, shown in health with every job, a failed job recorded there; ``mes
background`` runs until SIGTERM and gives the lease up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from mes.app import create_app
from mes.background.jobs import JobSpec
from mes.background.lease import LEASE
from mes.background.runner import LEASE_NAME, BackgroundRunner
from mes.context import AppContext
from mes.db import create_engine
from tests.conftest import FakeClock, make_settings

REPO = Path(__file__).resolve().parents[3]
MES = str(Path(sys.executable).parent / "mes")
REGISTERED = ["release-due-orders", "equipment-due-check", "telemetry-rollup", "late-operations"]


@pytest.fixture
async def background_ctx(
    database_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[AppContext]:
    """A context whose settings turn the background jobs on (the test default is off)."""
    context = AppContext.build(
        make_settings(database_url, tmp_path, background_enabled=True), clock=clock
    )
    try:
        yield context
    finally:
        await context.close()


async def health(app: Any) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mes.test") as client:
        response = await client.get("/api/v1/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def lease_holder(ctx: AppContext) -> str | None:
    async with ctx.db.engine.connect() as conn:
        row = (await conn.execute(LEASE.select().where(LEASE.c.name == LEASE_NAME))).first()
    return row.holder if row is not None else None


async def test_the_app_runs_the_jobs_and_health_shows_them(background_ctx: AppContext) -> None:
    app = create_app(context=background_ctx, migrate=False)
    async with app.router.lifespan_context(app):
        body = await health(app)
        component = body["components"]["background"]
        assert body["status"] == "ok"
        assert (component["status"], component["leader"]) == ("ok", True)
        assert component["detail"] == "running the jobs (lease holder)"
        assert await lease_holder(background_ctx) == component["instance"]
        jobs = {job["name"]: job for job in component["jobs"]}
        assert list(jobs) == REGISTERED  # periodic-schedule: schedule_every is not set
        assert jobs["equipment-due-check"]["every_s"] == 300
        assert (jobs["release-due-orders"]["runs"], jobs["release-due-orders"]["last_run_at"]) == (
            0,
            None,
        )
    assert await lease_holder(background_ctx) is None  # released at shutdown
    assert "background" not in background_ctx.components


async def test_the_test_apps_run_no_jobs(client: httpx.AsyncClient, ctx: AppContext) -> None:
    body = (await client.get("/api/v1/health")).json()
    assert "background" not in body["components"]
    assert await lease_holder(ctx) is None


async def boom(ctx: AppContext) -> None:
    raise RuntimeError("the ERP did not answer")


async def test_a_failed_job_is_logged_and_shown_in_health(
    ctx: AppContext, caplog: pytest.LogCaptureFixture
) -> None:
    runner = BackgroundRunner(ctx, (JobSpec("erp-sync", timedelta(minutes=5), boom),))
    await runner.start()
    try:
        assert await runner.run_scheduled("erp-sync") is True  # ran, failed, did not raise
        with pytest.raises(RuntimeError, match="ERP"):
            await runner.run_once("erp-sync")  # a direct run tells its caller
        app = create_app(context=ctx, migrate=False)  # background off: shows ctx's runner
        async with app.router.lifespan_context(app):
            body = await health(app)
    finally:
        await runner.stop()
    assert "background job erp-sync failed" in caplog.text
    component = body["components"]["background"]
    assert body["status"] == "degraded"
    assert (component["status"], component["detail"]) == (
        "degraded",
        "last run failed: erp-sync",
    )
    (job,) = component["jobs"]
    assert (job["name"], job["runs"], job["failures"], job["last_status"]) == (
        "erp-sync",
        2,
        2,
        "failed",
    )
    assert job["last_error"] == "RuntimeError: the ERP did not answer"
    assert job["last_error_at"] == job["last_run_at"]


async def test_an_unknown_job_is_named(ctx: AppContext) -> None:
    with pytest.raises(ValueError, match="no background job 'nope' here; jobs: release-due"):
        await BackgroundRunner(ctx).run_once("nope")


# --- mes background ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update(
        MES_DATABASE_URL=database_url,
        MES_VAR_DIR=str(tmp_path / "var"),
        MES_ENV="test",
        MES_PASSWORD_HASHING="test-cheap",
        MES_JWT_SECRET="cli-test-secret-" + "y" * 40,
        COLUMNS="200",
    )
    return env


def mes(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MES, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_mes_background_once(cli_env: dict[str, str]) -> None:
    done = mes(cli_env, "background", "--once", "release-due-orders")
    assert done.returncode == 0, done.stderr
    assert "release-due-orders: done {'advanced': []}" in done.stdout
    unknown = mes(cli_env, "background", "--once", "nope")
    assert unknown.returncode == 1
    assert "no background job 'nope'" in unknown.stderr
    listed = mes(cli_env, "background", "--list")
    assert listed.returncode == 0, listed.stderr
    assert "periodic-schedule" in listed.stdout


async def test_mes_background_holds_the_lease_until_sigterm(
    cli_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "background.log"
    with log_path.open("w") as log:
        process = await asyncio.create_subprocess_exec(
            MES, "background", env=cli_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    engine = create_engine(database_url)
    query = text("SELECT holder FROM job_lease WHERE name = :n")
    try:
        holder = None
        for _ in range(300):  # until the process has started (a minute at most)
            async with engine.connect() as conn:
                holder = (await conn.execute(query, {"n": LEASE_NAME})).scalar()
            if holder is not None or process.returncode is not None:
                break
            await asyncio.sleep(0.2)
        assert holder is not None, log_path.read_text()
        assert holder.split(":")[1] == str(process.pid)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, log_path.read_text()
        async with engine.connect() as conn:
            assert (await conn.execute(query, {"n": LEASE_NAME})).scalar() is None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await engine.dispose()
