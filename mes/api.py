"""The HTTP surface in one place: every domain router, each under ``/api/v1``
(:data:`mes.routes.API_PREFIX`)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from mes import health
from mes.audit import router as audit
from mes.equipment import router as equipment
from mes.identity import router as identity
from mes.lot import router as lot
from mes.material import router as material
from mes.routes import API_PREFIX
from mes.scheduling import resource_router as scheduling_resources
from mes.scheduling import router as scheduling
from mes.signature import router as signature
from mes.telemetry import router as telemetry
from mes.udi import router as udi
from mes.work import router as work

__all__ = ["API_PREFIX", "ROUTERS", "install_routes"]

# In the order a request is matched: the shop-floor and lot routes, the busiest, first.
ROUTERS: tuple[APIRouter, ...] = (
    work.router,
    lot.router,
    identity.router,
    equipment.router,
    material.router,
    scheduling_resources.router,
    scheduling.router,
    udi.router,
    signature.router,
    audit.router,
    telemetry.router,
    health.router,
)


def install_routes(app: FastAPI) -> None:
    """Add every API route to the application's own router, flat.

    ``include_router`` would keep each router nested, and every request would then be matched
    through each level (twice); the routers already carry the full path prefix, so their
    routes are added as they are. The route objects are shared by every application built in
    the process, so ``app.dependency_overrides`` does not reach them: tests run the real
    dependencies."""
    for router in ROUTERS:
        app.router.routes.extend(router.routes)
