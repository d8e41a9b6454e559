"""OpenAPI 3.1 document: every operation documents the problem+json errors it can answer,
so clients (and conformance tests) see exactly what the server does."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mes.http import PROBLEM_JSON, optional_version, required_version
from mes.identity.deps import PUBLIC_ROUTES
from mes.routes import api_routes

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "rule": {"type": "string", "description": "DOMAIN.md rule id, e.g. AC-5"},
        "field": {"type": "string", "description": "The offending field path"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status"],
    "additionalProperties": True,
}

DESCRIPTIONS = {
    "400": "Malformed header or request",
    "401": "Not authenticated, or credentials refused",
    "403": "Authenticated but not allowed",
    "404": "No such record",
    "409": "Conflicts with the record's current state",
    "412": "If-Match version is stale",
    "413": "Request body too large",
    "422": "Invalid input; names the field",
    "428": "If-Match header required",
}


def _uses(route: Any, dependency: object) -> bool:
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        if dep.call is dependency:
            return True
        pending.extend(dep.dependencies)
    return False


def _error_codes(method: str, path: str, route: Any) -> list[str]:
    codes = {"422"}
    if (method, path) not in PUBLIC_ROUTES:
        codes |= {"401", "403"}
    if "{" in path:
        codes.add("404")
    if method in {"POST", "PUT", "PATCH"}:
        codes |= {"400", "409", "413"}
    if (method, path) == ("POST", "/api/v1/auth/token"):
        codes |= {"401", "403"}
    if _uses(route, required_version):
        codes |= {"412", "428"}
    if _uses(route, optional_version):
        codes.add("412")
    return sorted(codes)


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        problem = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for method, path, route in api_routes(app):
            operation = schema["paths"].get(path, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for code in _error_codes(method, path, route):
                responses[code] = {"description": DESCRIPTIONS[code], **problem}
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
