"""Access tokens (S4): verified once, then known by their exact text until they expire."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mes.identity.tokens import LEEWAY, TokenClaims, TokenError, TokenService

SECRET = "s" * 40


def service() -> TokenService:
    return TokenService(SECRET, "mes", "mes-api", timedelta(minutes=15))


def test_a_verified_token_decodes_again_to_the_same_claims() -> None:
    tokens = service()
    user, session = uuid.uuid4(), uuid.uuid4()
    token, _ = tokens.issue(user, session, datetime.now(UTC))
    first = tokens.decode(token)
    assert (first.user_id, first.session_id) == (user, session)
    assert tokens.decode(token) == first


def test_a_token_altered_after_a_good_one_was_seen_is_refused() -> None:
    tokens = service()
    token, _ = tokens.issue(uuid.uuid4(), uuid.uuid4(), datetime.now(UTC))
    tokens.decode(token)
    head, payload, signature = token.split(".")
    forged = ".".join((head, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")))
    with pytest.raises(TokenError):
        tokens.decode(forged)
    other = TokenService("t" * 40, "mes", "mes-api", timedelta(minutes=15))
    with pytest.raises(TokenError):
        other.decode(token)


def test_an_expired_token_is_refused_even_when_it_was_known() -> None:
    tokens = service()
    issued = datetime.now(UTC) - tokens.ttl - LEEWAY - timedelta(seconds=5)
    token, _ = tokens.issue(uuid.uuid4(), uuid.uuid4(), issued)
    with pytest.raises(TokenError):
        tokens.decode(token)
    # As if it had been verified while valid: the known entry has run out, so the token is
    # verified again - and refused.
    tokens._verified[token] = TokenClaims(
        uuid.uuid4(), uuid.uuid4(), datetime.now(UTC) - LEEWAY - timedelta(seconds=1)
    )
    with pytest.raises(TokenError):
        tokens.decode(token)
    assert token not in tokens._verified
