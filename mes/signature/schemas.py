"""Signature request and manifestation bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, StringConstraints

from mes.models import SignatureMeaning
from mes.schemas import InputModel


class SignatureInput(InputModel):
    """What a signer supplies: the password again (ES-4), the meaning, an optional comment.

    ``username``, when given, must be the signer's own (ES-5: users sign only as themselves).
    """

    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    meaning: SignatureMeaning
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    username: Annotated[str, StringConstraints(max_length=64)] | None = None


class SignaturePublic(BaseModel):
    """The signature manifestation (ES-2): printed name, UTC date/time and meaning."""

    id: uuid.UUID
    signer_username: str
    printed_name: str
    meaning: SignatureMeaning
    signed_at: datetime
    record_type: str
    record_id: str
    record_version: int
    record_hash: str
    comment: str | None
    manifestation: str
    verification: str | None = None


class SignatureList(BaseModel):
    items: list[SignaturePublic]
    next_cursor: str | None
