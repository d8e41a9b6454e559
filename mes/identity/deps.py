"""Route-level authorization. Every route declares the roles it allows with ``Allow(...)``
(or is listed in ``PUBLIC_ROUTES``); ``check_route_permissions`` refuses to start an app
with an undeclared route (RELIABILITY 3.1, S2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from mes.errors import Forbidden, NotAuthenticated
from mes.http import SessionDep, get_context
from mes.identity import keys, service
from mes.models import HUMAN_ROLES, Role
from mes.principal import Principal, PrincipalKind
from mes.routes import api_routes

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)

PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/api/v1/health"),
        ("POST", "/api/v1/auth/token"),
    }
)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def current_principal(
    request: Request,
    session: SessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The caller, from a bearer token or an ``X-API-Key``; 401 when neither checks out."""
    ctx = get_context(request)
    if token:
        return await service.principal_from_token(ctx, session, token)
    if api_key:
        return await keys.principal_from_api_key(ctx, session, api_key, client_ip(request))
    raise NotAuthenticated()


class Allow:
    """Dependency: authenticate, then require one of ``roles`` (403 otherwise)."""

    def __init__(self, *roles: Role) -> None:
        if not roles:
            raise ValueError("a route must allow at least one role")
        self.roles = frozenset(roles)

    def __repr__(self) -> str:
        return f"Allow({', '.join(sorted(self.roles))})"

    async def __call__(
        self, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        if not principal.has_any(self.roles):
            who = "machine keys" if principal.kind == PrincipalKind.machine else "your roles"
            raise Forbidden(
                f"{who} may not do this; allowed roles: {', '.join(sorted(self.roles))}",
                rule="AC-2",
            )
        return principal


ANY_HUMAN: tuple[Role, ...] = HUMAN_ROLES
ANYONE: tuple[Role, ...] = (*HUMAN_ROLES, Role.machine)


def route_roles(route: Any) -> frozenset[Role] | None:
    """The roles a route allows, read from its ``Allow`` dependency (an APIRoute or the
    route context ``mes.routes.api_routes`` yields)."""
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        if isinstance(dep.call, Allow):
            return dep.call.roles
        pending.extend(dep.dependencies)
    return None


def check_route_permissions(app: FastAPI) -> None:
    """Startup guard: every API route is either public or declares its roles."""
    missing = [
        f"{method} {path}"
        for method, path, route in api_routes(app)
        if (method, path) not in PUBLIC_ROUTES and route_roles(route) is None
    ]
    if missing:
        raise RuntimeError("routes without a role declaration: " + ", ".join(missing))
