"""Pure identity rules: password policy, lockout, session liveness, machine-key format."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

USERNAME_PATTERN = r"^[a-z][a-z0-9._-]{1,63}$"
API_KEY_PREFIX = "mes_"


def password_problems(password: str, username: str, min_length: int) -> list[str]:
    """Reasons a new password is refused (empty when acceptable)."""
    problems: list[str] = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters")
    if len(password) > 256:
        problems.append("must be at most 256 characters")
    if username and username.lower() in password.lower():
        problems.append("must not contain the username")
    if len(set(password)) < 5:
        problems.append("must use at least 5 different characters")
    return problems


def should_lock(failed_attempts: int, threshold: int) -> bool:
    """AC-5: the account locks when consecutive failures reach the threshold."""
    return failed_attempts >= threshold


def session_end_reason(
    *,
    now: datetime,
    last_activity_at: datetime,
    expires_at: datetime,
    ended_at: datetime | None,
    idle_timeout: timedelta,
) -> str | None:
    """Why a session is no longer usable, or None while it is live (AC-6)."""
    if ended_at is not None:
        return "ended"
    if now >= expires_at:
        return "absolute_timeout"
    if now - last_activity_at >= idle_timeout:
        return "idle_timeout"
    return None


def new_api_key() -> tuple[str, str, str]:
    """A fresh machine key: (secret shown once, lookup prefix, SHA-256 hex stored)."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    return secret, secret[: len(API_KEY_PREFIX) + 8], hash_api_key(secret)


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def api_key_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(secret), stored_hash)


def valid_username(username: str) -> bool:
    return re.fullmatch(USERNAME_PATTERN, username) is not None
