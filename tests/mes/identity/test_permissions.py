"""The route x role matrix (RELIABILITY 3.1, test S2): every API route declares the roles it
allows, and the running app answers exactly that: 403 for every other role, 401 without
credentials, never an unmapped route.

Routes come from ``mes.identity.deps.api_routes`` (what the startup guard checks), which is
itself cross-checked against the OpenAPI document so the matrix can never go vacuous.
"""

from __future__ import annotations

import re
import types
import typing
import uuid
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel

from mes.identity.deps import (
    PUBLIC_ROUTES,
    Allow,
    api_routes,
    check_route_permissions,
    route_roles,
)
from mes.models import HUMAN_ROLES, Role
from mes.principal import Principal
from mes.signature.schemas import SignatureInput
from tests.conftest import Actors

ACTORS: dict[str, Role] = {role.value: role for role in HUMAN_ROLES} | {"machine": Role.machine}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
QUALIFY = ("POST", "/api/v1/equipment/{code}/qualify")
# Routes that end the caller's own session run last, so they cannot mask later answers.
SESSION_ENDING = frozenset({("POST", "/api/v1/auth/logout")})

Route = tuple[str, str, Any]  # the route, or a route context wrapping it


def declared_routes(app: FastAPI) -> list[Route]:
    """Every ``/api/`` operation as (method, full path, route), session-ending ones last."""
    return sorted(api_routes(app), key=lambda r: ((r[0], r[1]) in SESSION_ENDING, r[1], r[0]))


def openapi_operations(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if path.startswith("/api/")
    }


def protected_routes(app: FastAPI) -> list[Route]:
    return [r for r in declared_routes(app) if (r[0], r[1]) not in PUBLIC_ROUTES]


def concrete_url(path: str, route: Any) -> str:
    """Fill path parameters with values that exist nowhere (a random UUID where typed so)."""
    kinds = {p.name: p.field_info.annotation for p in route.dependant.path_params}

    def fill(match: re.Match[str]) -> str:
        kind = kinds.get(match.group(1))
        if kind is uuid.UUID:
            return str(uuid.uuid4())
        if kind is int:
            return "0"
        return "NOPE"

    return re.sub(r"\{(\w+)(?::[^}]*)?\}", fill, path)


async def call(
    client: httpx.AsyncClient, method: str, path: str, route: Any, headers: dict[str, str]
) -> httpx.Response:
    """The request of the matrix: a dummy body for writes and no If-Match header; the live
    event stream is asked to end at once."""
    return await client.request(
        method,
        concrete_url(path, route),
        headers=headers,
        json={} if method in BODY_METHODS else None,
        params={"max_s": 0.01} if path == "/api/v1/live" else None,
    )


def _mentions(annotation: Any, target: type) -> bool:
    if annotation is target:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _mentions(typing.get_args(annotation)[0], target)
    if origin is not None or isinstance(annotation, types.UnionType):
        return any(_mentions(arg, target) for arg in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_mentions(f.annotation, target) for f in annotation.model_fields.values())
    return False


def takes_signature(route: Any) -> bool:
    """An e-signature route: its body carries a ``SignatureInput`` (ES-4)."""
    return any(
        _mentions(p.field_info.annotation, SignatureInput) for p in route.dependant.body_params
    )


# --- the declared matrix -------------------------------------------------------------------------


def test_api_routes_sees_every_route(app: FastAPI) -> None:
    """S2 / API9: ``api_routes`` (which feeds the startup guard and this matrix) lists every
    documented API operation once, including those of routers added with ``include_router``."""
    routes = declared_routes(app)
    listed = [(method, path) for method, path, _ in routes]
    assert len(listed) > 10, "api_routes(app) found (almost) no routes: nothing is checked"
    assert len(set(listed)) == len(listed)
    assert set(listed) == openapi_operations(app)
    assert QUALIFY in listed
    assert routes[-1][:2] in SESSION_ENDING


def test_every_route_is_public_or_declares_roles(app: FastAPI) -> None:
    """S2: no unmapped route; every protected route allows at least one role."""
    operations = {(m, p) for m, p, _ in declared_routes(app)}
    assert operations >= PUBLIC_ROUTES
    undeclared = [
        f"{method} {path}"
        for method, path, route in protected_routes(app)
        if not route_roles(route)
    ]
    assert undeclared == []
    for _, _, route in protected_routes(app):
        roles = route_roles(route)
        assert roles is not None
        assert roles <= set(Role)


def test_admin_never_allowed_to_sign(app: FastAPI) -> None:
    """AC-2 / ES-5: admin never signs GxP records; equipment qualification is QA-only."""
    signing = {
        (method, path): route_roles(route)
        for method, path, route in protected_routes(app)
        if takes_signature(route)
    }
    assert QUALIFY in signing
    assert signing[QUALIFY] == frozenset({Role.qa})
    assert {op: roles for op, roles in signing.items() if roles and Role.admin in roles} == {}
    assert {op: roles for op, roles in signing.items() if roles and Role.machine in roles} == {}


# --- the running app answers the matrix ----------------------------------------------------------


@pytest.mark.parametrize("actor", sorted(ACTORS))
async def test_role_matrix(
    app: FastAPI, client: httpx.AsyncClient, actors: Actors, actor: str
) -> None:
    """S2 / AC-2: a role not allowed gets exactly 403 (rule AC-2); an allowed role gets past
    authorization (neither 401 nor 403) and no server error."""
    role = ACTORS[actor]
    mismatches: list[str] = []
    routes = protected_routes(app)
    assert routes
    for method, path, route in routes:
        allowed = route_roles(route) or frozenset()
        response = await call(client, method, path, route, actors[actor])
        status = response.status_code
        if role in allowed:
            if status in (401, 403) or status >= 500:
                mismatches.append(f"{method} {path}: allowed, got {status} {response.text}")
        elif status != 403:
            mismatches.append(f"{method} {path}: not allowed, got {status} {response.text}")
        elif response.json().get("rule") != "AC-2":
            mismatches.append(f"{method} {path}: 403 without rule AC-2: {response.text}")
    assert mismatches == []


async def test_anonymous_gets_401_everywhere(app: FastAPI, client: httpx.AsyncClient) -> None:
    """S2 / S4: without credentials every protected route answers exactly 401."""
    routes = protected_routes(app)
    assert routes
    mismatches = []
    for method, path, route in routes:
        response = await call(client, method, path, route, {})
        if response.status_code != 401:
            mismatches.append(f"{method} {path}: got {response.status_code}")
        elif response.headers.get("www-authenticate") != "Bearer":
            mismatches.append(f"{method} {path}: 401 without WWW-Authenticate: Bearer")
    assert mismatches == []


async def test_public_routes_need_no_credentials(client: httpx.AsyncClient) -> None:
    """S2: the public routes answer without credentials (health; login checks the form)."""
    assert (await client.get("/api/v1/health")).status_code == 200
    response = await client.post("/api/v1/auth/token", data={})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"username", "password"}


# --- the startup guard ---------------------------------------------------------------------------


def _router(*, declared: bool) -> APIRouter:
    router = APIRouter()
    if declared:

        @router.get("/declared")
        async def declared_route(
            _: Annotated[Principal, Depends(Allow(Role.qa))],
        ) -> dict[str, str]:
            return {}

    else:

        @router.get("/undeclared")
        async def undeclared_route() -> dict[str, str]:
            return {}

    return router


def test_guard_refuses_undeclared_route_in_included_router() -> None:
    """S2 / RELIABILITY 3.1: startup fails on a route (from an included router) that
    declares no roles and is not public."""
    app = FastAPI()
    app.include_router(_router(declared=True), prefix="/api/v1")
    check_route_permissions(app)  # a declared route alone passes
    app.include_router(_router(declared=False), prefix="/api/v1")
    with pytest.raises(RuntimeError, match=r"GET /api/v1/undeclared"):
        check_route_permissions(app)


def test_guard_refuses_undeclared_route_on_app() -> None:
    """S2 / RELIABILITY 3.1: startup fails on an undeclared route added to the app itself."""
    app = FastAPI()

    @app.get("/api/v1/undeclared")
    async def undeclared_route() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match=r"GET /api/v1/undeclared"):
        check_route_permissions(app)


def test_guard_accepts_the_real_app(app: FastAPI) -> None:
    """S2: the shipped app passes its own guard (it would not start otherwise)."""
    check_route_permissions(app)
