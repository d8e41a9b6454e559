"""Application factory and lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import mes
from mes.api import install_routes
from mes.background.runner import BackgroundRunner
from mes.context import AppContext
from mes.http import RequestGuard, install_error_handlers
from mes.identity.deps import check_route_permissions
from mes.migrate import upgrade
from mes.openapi import install_openapi
from mes.scheduling.runner import SolverRunner
from mes.settings import MesSettings, load_settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Manufacturing execution system for absorbable implantable medical devices.

* Authenticate with `POST /api/v1/auth/token` (OAuth2 password form); send
  `Authorization: Bearer <token>`. Machines send `X-API-Key`.
* Updates require `If-Match: "<version>"` (428 when missing, 412 when stale).
* Creates accept `Idempotency-Key`.
* Errors are RFC 9457 `application/problem+json`; business rules name their rule id.
"""


def create_app(
    settings: MesSettings | None = None,
    *,
    context: AppContext | None = None,
    migrate: bool = True,
) -> FastAPI:
    """Build the ASGI app. Settings are loaded here (or passed in), engines in the lifespan."""
    settings = settings or (context.settings if context else load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = context or AppContext.build(settings)
        if migrate:
            await upgrade(ctx.db.engine)
        app.state.mes = ctx
        # Every process may run the background runner; the lease lets one of them do the work
        # (mes/background). A deployment with a `mes background` role turns it off here.
        runner = BackgroundRunner(ctx) if ctx.settings.background_enabled else None
        if runner is not None:
            await runner.start()
        if ctx.settings.schedule_runner_enabled and ctx.solver is None:
            ctx.solver = SolverRunner(ctx)
            ctx.solver.start()
        log.info("MES %s ready on %s", mes.__version__, ctx.db.dialect)
        try:
            yield
        finally:
            if ctx.solver is not None:
                await ctx.solver.stop()
                ctx.solver = None
            if runner is not None:
                await runner.stop()
            if context is None:
                await ctx.close()

    app = FastAPI(
        title="MES API",
        version=mes.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        debug=False,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    install_routes(app)
    check_route_permissions(app)
    install_openapi(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Idempotency-Key"],
            expose_headers=["ETag", "Location", "Idempotent-Replayed"],
        )
    app.add_middleware(RequestGuard, max_bytes=settings.max_body_bytes)
    return app


def worker_app() -> FastAPI:
    """The app of one ``mes serve --workers N`` process: settings from the environment and
    config files; the schema was upgraded before the workers started."""
    return create_app(load_settings(), migrate=False)
