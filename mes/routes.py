"""The application's API routes as (method, full path, route) triples.

FastAPI keeps included routers nested; ``iter_route_contexts`` resolves each route with its
effective prefix, which is what the permission check, the OpenAPI patch and the 405
``Allow`` header need.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

API_PREFIX = "/api/v1"


def route_contexts(app: FastAPI | Any) -> Iterator[Any]:
    """Every route of ``app`` (a FastAPI app or Starlette router owner) with its full path."""
    routes: list[BaseRoute] = list(app.routes)
    yield from iter_route_contexts(routes)


_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def api_routes(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """(method, path, route) for every FastAPI route under ``/api/``; a path parameter with a
    converter is named as OpenAPI names it (``{tag:path}`` is ``{tag}``)."""
    for context in route_contexts(app):
        if not isinstance(context.original_route, APIRoute):
            continue
        path = _CONVERTER.sub(r"{\1}", context.path or "")
        if not path.startswith("/api/"):
            continue
        for method in sorted(context.methods or ()):
            yield method, path, context
