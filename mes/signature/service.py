"""The signing service. Domains register how to read a signable record's canonical content;
``sign`` re-authenticates the signer and binds the signature to that content's SHA-256
(ES-3). A wrong password signs nothing, is audited, and counts toward lockout (AC-5)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from mes.audit import service as audit
from mes.audit.rules import canonical_json, sha256_hex
from mes.clock import iso_z
from mes.context import AppContext
from mes.errors import AccountLocked, Forbidden, InvalidInput, NotFound, SignatureRejected
from mes.identity import service as identity
from mes.models import AppUser, AuthEventKind, ESignature, SignatureMeaning, UserStatus
from mes.principal import Principal, PrincipalKind
from mes.records import fetch_page
from mes.signature.schemas import SignatureInput, SignaturePublic

RecordReader = Callable[[AsyncSession, str], Awaitable[tuple[int, Mapping[str, Any]] | None]]
_READERS: dict[str, RecordReader] = {}


def register_signable(record_type: str, reader: RecordReader) -> None:
    """Declare a signable record type and how to read (version, canonical content) by id."""
    _READERS[record_type] = reader


def content_hash(content: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(content))


async def sign(
    ctx: AppContext,
    session: AsyncSession,
    principal: Principal,
    *,
    record_type: str,
    record_id: str,
    record_version: int,
    content: Mapping[str, Any],
    signature: SignatureInput,
    allowed_meanings: frozenset[SignatureMeaning],
    current_version: int | None = None,
) -> ESignature:
    """Execute one e-signature on a record version; call before mutating anything else.

    ``record_version``/``content`` are what is signed (the version the signed action
    produces); ``current_version`` is the record's stored version, named in the audit entry
    of a failed attempt (defaults to ``record_version``)."""
    if principal.kind != PrincipalKind.user or principal.user_id is None:
        raise Forbidden("only a person can sign", rule="ES-5")
    if signature.meaning not in allowed_meanings:
        raise InvalidInput(
            f"meaning {signature.meaning!r} is not valid here; expected one of "
            + ", ".join(sorted(allowed_meanings)),
            field="signature.meaning",
        )
    if signature.username is not None and signature.username != principal.username:
        raise Forbidden("users sign only as themselves", rule="ES-5", field="signature.username")
    user = await session.get(AppUser, principal.user_id, with_for_update=True)
    if user is None or UserStatus(user.status) != UserStatus.active:
        raise AccountLocked("the signer's account is not active", rule="AC-5")
    ok, _ = await ctx.passwords.verify(signature.password, user.password_hash)
    if not ok:
        locked = await identity.register_failure(
            ctx, session, user, event=AuthEventKind.signature_failed, client_ip=None
        )
        await audit.record(
            session,
            principal,
            action="sign_failed",
            entity_type=record_type,
            entity_id=record_id,
            entity_version=current_version if current_version is not None else record_version,
            changes=[
                {
                    "field": "signature",
                    "old": None,
                    "new": {"meaning": signature.meaning, "outcome": "wrong password"},
                }
            ],
            reason="e-signature attempt with a wrong password; nothing signed",
        )
        detail = "password not accepted; nothing was signed"
        if locked:
            detail += "; the account is now locked (AC-5)"
        raise SignatureRejected(detail, rule="ES-4", field="signature.password", persist=True)
    now = ctx.clock.now()
    user.failed_attempts = 0
    session.add(user)
    esig = ESignature(
        signer_id=user.id,
        signer_username=user.username,
        printed_name=user.full_name,
        meaning=signature.meaning,
        signed_at=now,
        record_type=record_type,
        record_id=record_id,
        record_version=record_version,
        record_hash=content_hash(content),
        session_id=principal.session_id,
        comment=signature.comment,
    )
    session.add(esig)
    await audit.record(
        session,
        principal,
        action="sign",
        entity_type=record_type,
        entity_id=record_id,
        entity_version=record_version,
        changes=[
            {
                "field": "signature",
                "old": None,
                "new": {
                    "id": str(esig.id),
                    "meaning": esig.meaning,
                    "printed_name": esig.printed_name,
                    "signed_at": iso_z(now),
                    "record_hash": esig.record_hash,
                },
            }
        ],
        reason=signature.comment or f"signed: {signature.meaning}",
    )
    return esig


def manifestation(sig: ESignature) -> str:
    """ES-2: the text shown wherever the signature appears."""
    return (
        f"{sig.printed_name} ({sig.signer_username}) - {sig.meaning} - "
        f"{sig.signed_at.strftime('%Y-%m-%d %H:%M:%S')} UTC"
    )


async def verify(session: AsyncSession, sig: ESignature) -> str:
    """ES-3: ``valid`` when the record at the signed version still hashes to the stored value;
    ``superseded`` when the record has moved to a later version; ``invalid`` otherwise."""
    reader = _READERS.get(sig.record_type)
    if reader is None:
        return "unverifiable"
    current = await reader(session, sig.record_id)
    if current is None:
        return "invalid"
    version, content = current
    if version != sig.record_version:
        return "superseded" if version > sig.record_version else "invalid"
    return "valid" if content_hash(content) == sig.record_hash else "invalid"


async def public(session: AsyncSession, sig: ESignature, *, check: bool = True) -> SignaturePublic:
    return SignaturePublic(
        id=sig.id,
        signer_username=sig.signer_username,
        printed_name=sig.printed_name,
        meaning=SignatureMeaning(sig.meaning),
        signed_at=sig.signed_at,
        record_type=sig.record_type,
        record_id=sig.record_id,
        record_version=sig.record_version,
        record_hash=sig.record_hash,
        comment=sig.comment,
        manifestation=manifestation(sig),
        verification=await verify(session, sig) if check else None,
    )


async def list_signatures(
    session: AsyncSession,
    *,
    record_type: str | None,
    record_id: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[ESignature], str | None]:
    stmt = select(ESignature).order_by(col(ESignature.id))
    if record_type is not None:
        stmt = stmt.where(ESignature.record_type == record_type)
    if record_id is not None:
        stmt = stmt.where(ESignature.record_id == record_id)
    if after is not None:
        stmt = stmt.where(col(ESignature.id) > uuid.UUID(after))
    rows, more = await fetch_page(session, stmt, limit)
    return rows, (str(rows[-1].id) if more else None)


async def get_signature(session: AsyncSession, signature_id: uuid.UUID) -> ESignature:
    sig = await session.get(ESignature, signature_id)
    if sig is None:
        raise NotFound(f"signature {signature_id} does not exist")
    return sig
