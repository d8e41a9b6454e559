"""Audit trail response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class FieldChange(BaseModel):
    field: str
    old: Any
    new: Any


class AuditEntryPublic(BaseModel):
    seq: int
    id: uuid.UUID
    at: datetime
    username: str
    session_id: uuid.UUID | None
    terminal: str | None
    action: str
    entity_type: str
    entity_id: str
    entity_version: int
    changes: list[FieldChange]
    reason: str
    app_version: str
    chain_seq: int
    content_hash: str | None  # None: chained before content hashes were stored
    prev_hash: str
    hash: str


class AuditList(BaseModel):
    items: list[AuditEntryPublic]
    next_cursor: str | None


class ChainReport(BaseModel):
    ok: bool
    checked: int
    head_seq: int | None
    head_hash: str
    broken_seq: int | None
    broken_id: str | None
    problem: str | None
