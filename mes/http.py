"""HTTP plumbing shared by every router: the unit-of-work session, problem+json errors,
ETag / If-Match, cursor pagination, Idempotency-Key replay and the request body cap."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, delete, select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mes.audit.rules import canonical_json
from mes.context import AppContext
from mes.db import hold_objects
from mes.errors import BadRequest, Conflict, InvalidInput, MesError, PreconditionRequired
from mes.models import IdempotencyRecord
from mes.principal import Principal
from mes.routes import route_contexts

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


# --- context and unit of work --------------------------------------------------------------------


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.mes
    return ctx


async def _context(request: Request) -> AppContext:
    # Dependencies are async: FastAPI runs a plain ``def`` dependency in its thread pool.
    return get_context(request)


ContextDep = Annotated[AppContext, Depends(_context)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; commits before the response is sent (function scope)."""
    ctx = get_context(request)
    async with ctx.db.sessionmaker() as session:
        hold_objects(session)
        try:
            yield session
        except MesError as exc:
            if exc.persist:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


# --- errors --------------------------------------------------------------------------------------


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"} and len(parts) > 1:
        where, rest = parts[0], parts[1:]
        return f"{where}.{'.'.join(rest)}" if where != "body" else ".".join(rest)
    return ".".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route whose path matches (Starlette reports only one route's)."""
    matches = [
        route
        for route in route_contexts(request.app)
        if getattr(route, "path_regex", None) is not None
        and route.path_regex.match(request.url.path)
    ]
    # A literal path (/lots/receive) names its own resource even where a template
    # (/lots/{lot_number}) also matches it.
    literal = [r for r in matches if "{" not in (r.path or "")]
    methods: set[str] = set()
    for route in literal or matches:
        methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})


def install_error_handlers(app: FastAPI) -> None:
    """RFC 9457 problem+json for every error; never a traceback in a response."""

    @app.exception_handler(MesError)
    async def _mes_error(request: Request, exc: MesError) -> JSONResponse:
        return problem_response(
            exc.status_code, exc.to_problem(request.url.path), headers=exc.headers or None
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": _field_path(tuple(err.get("loc", ()))),
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        fields = ", ".join(sorted({e["field"] for e in errors})) or "request"
        return problem_response(
            422,
            {
                "type": "https://mes.example/problems/validation",
                "title": "Invalid request",
                "status": 422,
                "detail": f"invalid value for: {fields}",
                "instance": request.url.path,
                "errors": errors,
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(
            exc.status_code,
            {
                "type": "about:blank",
                "title": str(exc.detail) if exc.status_code != 500 else "Internal error",
                "status": exc.status_code,
                "detail": str(exc.detail),
                "instance": request.url.path,
            },
            headers=headers or None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Boundary handler: log the cause, answer without internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            {
                "type": "about:blank",
                "title": "Internal error",
                "status": 500,
                "detail": "The server could not complete the request; nothing was changed.",
                "instance": request.url.path,
            },
        )


# --- optimistic concurrency ----------------------------------------------------------------------


IF_MATCH_PATTERN = r'^(W/)?"?[0-9]{1,12}"?$'


def etag(version: int) -> str:
    return f'"{version}"'


async def required_version(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description="Required: the version the update is based on, as returned in ETag "
            '(`"3"`). Missing: 428; stale: 412.',
            pattern=IF_MATCH_PATTERN,
        ),
    ] = None,
) -> int:
    """Updates require If-Match (428 when missing)."""
    if if_match is None:
        raise PreconditionRequired(
            "updates require an If-Match header with the record's current ETag",
            field="header.If-Match",
        )
    return parse_if_match(if_match)


async def optional_version(
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", description="Optional version guard.", pattern=IF_MATCH_PATTERN),
    ] = None,
) -> int | None:
    return parse_if_match(if_match) if if_match is not None else None


def parse_if_match(value: str) -> int:
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    if not raw.isdigit() or len(raw) > 12:
        raise BadRequest(
            f'If-Match must be a version ETag such as "3", got {value!r}',
            field="header.If-Match",
        )
    return int(raw)


VersionDep = Annotated[int, Depends(required_version)]
OptionalVersionDep = Annotated[int | None, Depends(optional_version)]


# --- pagination ----------------------------------------------------------------------------------


LimitQuery = Annotated[int, Query(ge=1, le=500, description="Page size (1-500).")]
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=500, pattern=r"^[A-Za-z0-9_-]+$", description="Opaque cursor from `next_cursor`."
    ),
]


def encode_cursor(value: Any) -> str:
    raw = json.dumps(jsonable_encoder(value), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "cursor is not a value returned by this API", field="query.cursor"
        ) from exc


def decode_str_cursor(cursor: str | None) -> str | None:
    value = decode_cursor(cursor)
    if value is not None and not isinstance(value, str):
        raise InvalidInput("cursor is not a value returned by this API", field="query.cursor")
    return value


def decode_int_cursor(cursor: str | None) -> int | None:
    value = decode_cursor(cursor)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidInput("cursor is not a value returned by this API", field="query.cursor")
    return value


# --- idempotency ---------------------------------------------------------------------------------


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Client-chosen key (1-200 visible ASCII characters); a retry with the "
        "same key and body replays the first response, a different body with the same key is "
        "refused (422).",
        pattern=r"^[!-~]{1,200}$",
    ),
]


def _fingerprint(method: str, path: str, body: BaseModel | None) -> str:
    payload = body.model_dump(mode="json") if body is not None else None
    return hashlib.sha256(f"{method} {path} {canonical_json(payload)}".encode()).hexdigest()


CreateResult = tuple[int, Any, dict[str, str]]


_IDEMPOTENCY_RECORD = select(IdempotencyRecord).where(
    col(IdempotencyRecord.principal) == bindparam("principal"),
    col(IdempotencyRecord.endpoint) == bindparam("endpoint"),
    col(IdempotencyRecord.key) == bindparam("key"),
)


async def idempotent(
    *,
    request: Request,
    session: AsyncSession,
    principal: Principal,
    key: str | None,
    body: BaseModel | None,
    create: Callable[[], Awaitable[CreateResult]],
) -> JSONResponse:
    """Run ``create`` once per (principal, path, key); replay its stored response after.

    The idempotency row is inserted before the effect, in the same transaction, so a
    concurrent retry blocks on the unique key and then replays the committed response.
    """
    if key is None:
        status, payload, headers = await create()
        return JSONResponse(jsonable_encoder(payload), status_code=status, headers=headers)
    if not key.strip():
        raise BadRequest("Idempotency-Key must not be blank", field="header.Idempotency-Key")
    ctx = get_context(request)
    ttl = ctx.settings.idempotency_ttl
    path = request.url.path
    fingerprint = _fingerprint(request.method, path, body)
    now = ctx.clock.now()

    async def _existing() -> IdempotencyRecord | None:
        result = await session.execute(
            _IDEMPOTENCY_RECORD, {"principal": principal.key, "endpoint": path, "key": key}
        )
        return result.scalar_one_or_none()

    def _replay(found: IdempotencyRecord) -> JSONResponse:
        if found.fingerprint != fingerprint:
            raise InvalidInput(
                "Idempotency-Key was already used with a different request body",
                field="header.Idempotency-Key",
            )
        if found.status_code == 0:
            raise Conflict("a request with this Idempotency-Key is still in progress; retry")
        return JSONResponse(
            found.response_body,
            status_code=found.status_code,
            headers={**(found.response_headers or {}), "Idempotent-Replayed": "true"},
        )

    found = await _existing()
    if found is not None and found.created_at > now - ttl:
        return _replay(found)
    if found is not None:
        await session.execute(
            delete(IdempotencyRecord).where(col(IdempotencyRecord.id) == found.id)
        )
    record = IdempotencyRecord(
        principal=principal.key,
        endpoint=path,
        key=key,
        fingerprint=fingerprint,
        status_code=0,
        created_at=now,
    )
    session.add(record)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        found = await _existing()
        if found is None:
            raise Conflict("a request with this Idempotency-Key is in progress; retry") from None
        return _replay(found)
    status, payload, headers = await create()
    record.status_code = status
    record.response_body = jsonable_encoder(payload)
    record.response_headers = dict(headers)
    await session.flush()
    return JSONResponse(record.response_body, status_code=status, headers=headers)


# --- request body cap ----------------------------------------------------------------------------


class RequestGuard:
    """Refuse request bodies above ``max_bytes`` with 413 (API4), before they are buffered,
    and paths or query strings carrying NUL characters with 422."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await _send_problem(
                send, 422, "Invalid request", "path and query must not contain NUL characters"
            )
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        received = 0
        responded = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not responded:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        await _send_problem(
            send, 413, "Payload too large", f"request body exceeds {self.max_bytes} bytes"
        )


async def _send_problem(send: Send, status: int, title: str, detail: str) -> None:
    body = json.dumps(
        {
            "type": f"https://mes.example/problems/{title.lower().replace(' ', '-')}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
