"""Short-lived JWT access tokens. Each names a server-side session (``sid``), so logout,
idle timeout and account disable take effect on the very next request (S4)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

ALGORITHM = "HS256"
LEEWAY = timedelta(seconds=30)
# Tokens already verified, by their exact text (signature included): an operator's tablet
# sends the same token with every request for its 15 minutes. Bounded; emptied when full.
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


class TokenError(Exception):
    """The token is malformed, expired, or not ours."""


class TokenService:
    def __init__(self, secret: str, issuer: str, audience: str, ttl: timedelta) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._verified: dict[str, TokenClaims] = {}

    def issue(self, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime) -> tuple[str, int]:
        expires = now + self.ttl
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), int(self.ttl.total_seconds())

    def decode(self, token: str) -> TokenClaims:
        known = self._verified.get(token)
        if known is not None:
            if datetime.now(UTC) < known.expires_at + LEEWAY:
                return known
            del self._verified[token]
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # pinned: alg=none and algorithm confusion fail here
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "sid"]},
            )
            return TokenClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            )
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise TokenError(str(exc)) from exc
