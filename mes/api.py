"""The HTTP surface in one place: every domain router under ``/api/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from mes import health
from mes.audit import router as audit
from mes.equipment import router as equipment
from mes.identity import router as identity
from mes.lot import router as lot
from mes.material import router as material
from mes.signature import router as signature
from mes.udi import router as udi
from mes.work import router as work

API_PREFIX = "/api/v1"


def build_api_router() -> APIRouter:
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    api.include_router(identity.router)
    api.include_router(equipment.router)
    api.include_router(material.router)
    api.include_router(lot.router)
    api.include_router(udi.router)
    api.include_router(audit.router)
    api.include_router(signature.router)
    api.include_router(work.router)
    return api
