"""Audit trail, electronic signatures and idempotency records.

``audit_entry``, ``e_signature`` and ``auth_event`` are append-only: database triggers refuse
UPDATE and DELETE (AT-4), and audit rows are SHA-256 hash-chained (AT-5).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, String, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from mes.clock import utc_now
from mes.ids import uuid7
from mes.models.base import id_field, seq_column, utc_field


class AuditEntry(SQLModel, table=True):
    """One regulated change: who, when (UTC), what entity/version, field-level old/new, why."""

    __tablename__ = "audit_entry"

    seq: int | None = Field(default=None, sa_column=seq_column())
    id: uuid.UUID = Field(default_factory=uuid7, unique=True)
    at: datetime = utc_field(default_factory=utc_now)
    user_id: uuid.UUID | None = Field(default=None)
    username: str = Field(max_length=64)
    session_id: uuid.UUID | None = Field(default=None)
    terminal: str | None = Field(default=None, max_length=100)
    action: str = Field(max_length=40)
    entity_type: str = Field(max_length=40, index=True)
    entity_id: str = Field(max_length=64, index=True)
    entity_version: int
    changes: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    reason: str = Field(max_length=1000)
    app_version: str = Field(max_length=40)
    # The chain (AT-5). ``content_hash`` is set when the entry is recorded; ``chain_seq``
    # (1, 2, 3... in commit order), ``prev_hash`` and ``hash`` when its transaction commits:
    # on PostgreSQL by the deferred trigger ``mes_audit_seal`` inside COMMIT, so they are
    # NULL only within the writing transaction; on SQLite before the commit (mes.audit).
    content_hash: str | None = Field(default=None, max_length=64)
    chain_seq: int | None = Field(default=None, sa_type=BigInteger, unique=True, index=True)
    prev_hash: str | None = Field(default=None, max_length=64)
    hash: str | None = Field(default=None, max_length=64, unique=True)


class SignatureMeaning(StrEnum):
    """Meanings of an electronic signature (21 CFR 11.50(a)(3))."""

    performed = "performed"
    reviewed = "reviewed"
    approved = "approved"
    released = "released"
    verified = "verified"
    rejected = "rejected"


class ESignature(SQLModel, table=True):
    """An executed e-signature bound to one record version by its content hash (ES-1, ES-3)."""

    __tablename__ = "e_signature"

    id: uuid.UUID = id_field()
    signer_id: uuid.UUID = Field(foreign_key="app_user.id", index=True)
    signer_username: str = Field(max_length=64)
    printed_name: str = Field(max_length=200)
    meaning: SignatureMeaning = Field(max_length=20, sa_type=String(20))
    signed_at: datetime = utc_field(default_factory=utc_now)
    record_type: str = Field(max_length=40, index=True)
    record_id: str = Field(max_length=64, index=True)
    record_version: int
    record_hash: str = Field(max_length=64)
    session_id: uuid.UUID | None = Field(default=None)
    comment: str | None = Field(default=None, max_length=1000)


class IdempotencyRecord(SQLModel, table=True):
    """First response to a create carrying ``Idempotency-Key``, replayed on retries."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("principal", "endpoint", "key"),)

    id: uuid.UUID = id_field()
    principal: str = Field(max_length=100)
    endpoint: str = Field(max_length=200)
    key: str = Field(max_length=200)
    fingerprint: str = Field(max_length=64)
    status_code: int
    response_body: Any = Field(default=None, sa_column=Column(JSON))
    response_headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = utc_field(default_factory=utc_now)
