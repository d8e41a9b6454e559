"""Error tree: one class per business fact, each with its HTTP status.

One handler (``mes.http.install_error_handlers``) renders them as RFC 9457 problem+json.
422 is reserved for payload validation; expected conflicts are never 500s.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MesError(Exception):
    """Base of every expected error. ``rule`` names the DOMAIN.md rule id when one applies."""

    status_code: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        rule: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        persist: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        # True when the unit of work must still commit what it wrote (a failed login or
        # signature attempt is itself a record: AC-5, ES-4) although the request fails.
        self.persist = persist
        self.rule = rule
        self.field = field
        self.headers = headers or {}
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://mes.example/problems/{self.slug}",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.rule:
            body["rule"] = self.rule
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


class BadRequest(MesError):
    status_code = 400


class NotAuthenticated(MesError):
    status_code = 401
    title = "Not authenticated"
    slug = "not-authenticated"

    def __init__(self, detail: str = "Authentication required", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class SignatureRejected(MesError):
    """A signing attempt whose credentials did not check out (ES-4)."""

    status_code = 401
    title = "Signature rejected"
    slug = "signature-rejected"


class Forbidden(MesError):
    status_code = 403
    title = "Forbidden"
    slug = "forbidden"


class AccountLocked(Forbidden):
    title = "Account locked"
    slug = "account-locked"


class NotFound(MesError):
    status_code = 404
    title = "Not found"
    slug = "not-found"


class Conflict(MesError):
    status_code = 409
    title = "Conflict"
    slug = "conflict"


class AlreadyExists(Conflict):
    title = "Already exists"
    slug = "already-exists"


class InvalidTransition(Conflict):
    title = "Invalid transition"
    slug = "invalid-transition"


class StaleVersion(MesError):
    status_code = 412
    title = "Stale version"
    slug = "stale-version"


class PayloadTooLarge(MesError):
    status_code = 413
    title = "Payload too large"
    slug = "payload-too-large"


class InvalidInput(MesError):
    """Payload content that passes the schema but breaks a field-level rule."""

    status_code = 422
    title = "Invalid input"
    slug = "invalid-input"


class PreconditionRequired(MesError):
    status_code = 428
    title = "Precondition required"
    slug = "precondition-required"


class SignatureRequired(PreconditionRequired):
    title = "Signature required"
    slug = "signature-required"
