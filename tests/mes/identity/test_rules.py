"""Pure identity rules (mes.identity.rules): password policy, lockout threshold (AC-5),
session liveness (AC-6), machine-key format (RELIABILITY 3.1) and usernames (AC-1)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest

from mes.identity import rules

MIN = 12
NOW = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
IDLE = timedelta(minutes=10)

SHORT = f"must be at least {MIN} characters"
LONG = "must be at most 256 characters"
HAS_USERNAME = "must not contain the username"
FEW_CHARS = "must use at least 5 different characters"


@pytest.mark.parametrize(
    ("password", "username", "expected"),
    [
        pytest.param("correct-horse-battery-7", "alice", [], id="good"),
        pytest.param("abcdefghijkl", "alice", [], id="exactly-min-length"),
        pytest.param("abcdefghijk", "alice", [SHORT], id="one-below-min-length"),
        pytest.param(("bcdef" * 52)[:256], "alice", [], id="exactly-256"),
        pytest.param(("bcdef" * 52)[:257], "alice", [LONG], id="257-characters"),
        pytest.param("my-alice-password-9", "alice", [HAS_USERNAME], id="contains-username"),
        pytest.param("my-ALICE-password-9", "alice", [HAS_USERNAME], id="username-any-case"),
        pytest.param("my-alice-password-9", "", [], id="no-username-to-compare"),
        pytest.param("abababababababab", "alice", [FEW_CHARS], id="two-distinct-characters"),
        pytest.param("abcdabcdabcdabcd", "alice", [FEW_CHARS], id="four-distinct-characters"),
        pytest.param("abcdeabcdeab", "alice", [], id="five-distinct-characters"),
        pytest.param("bobb", "bob", [SHORT, HAS_USERNAME, FEW_CHARS], id="every-problem"),
    ],
)
def test_password_problems(password: str, username: str, expected: list[str]) -> None:
    """S3 / AC-1: a new password is refused with every reason that applies, and only those."""
    assert rules.password_problems(password, username, MIN) == expected


@pytest.mark.parametrize(
    ("failed_attempts", "threshold", "locks"),
    [
        (0, 5, False),
        (4, 5, False),
        (5, 5, True),
        (6, 5, True),
        (1, 1, True),
        (2, 3, False),
    ],
)
def test_should_lock(failed_attempts: int, threshold: int, locks: bool) -> None:
    """AC-5: the account locks when consecutive failures reach the threshold, not before."""
    assert rules.should_lock(failed_attempts, threshold) is locks


@pytest.mark.parametrize(
    ("idle_for", "expires_in", "ended", "expected"),
    [
        pytest.param(timedelta(0), timedelta(hours=12), False, None, id="fresh"),
        pytest.param(
            IDLE - timedelta(seconds=1), timedelta(hours=1), False, None, id="just-under-idle"
        ),
        pytest.param(IDLE, timedelta(hours=1), False, "idle_timeout", id="exactly-idle"),
        pytest.param(timedelta(minutes=11), timedelta(hours=1), False, "idle_timeout", id="idle"),
        pytest.param(timedelta(0), timedelta(0), False, "absolute_timeout", id="at-expiry"),
        pytest.param(
            timedelta(0), -timedelta(seconds=1), False, "absolute_timeout", id="past-expiry"
        ),
        pytest.param(
            timedelta(minutes=11),
            -timedelta(minutes=1),
            False,
            "absolute_timeout",
            id="expired-and-idle",
        ),
        pytest.param(timedelta(0), timedelta(hours=1), True, "ended", id="logged-out"),
        pytest.param(timedelta(minutes=30), -timedelta(hours=1), True, "ended", id="ended-wins"),
    ],
)
def test_session_end_reason(
    idle_for: timedelta, expires_in: timedelta, ended: bool, expected: str | None
) -> None:
    """AC-6: a session is live until logout, its absolute end, or 10 minutes idle."""
    reason = rules.session_end_reason(
        now=NOW,
        last_activity_at=NOW - idle_for,
        expires_at=NOW + expires_in,
        ended_at=NOW - timedelta(minutes=1) if ended else None,
        idle_timeout=IDLE,
    )
    assert reason == expected


def test_new_api_key_format() -> None:
    """RELIABILITY 3.1: a machine key is 256-bit random, looked up by prefix, stored as
    SHA-256 only."""
    secret, prefix, digest = rules.new_api_key()
    assert secret.startswith(rules.API_KEY_PREFIX)
    body = secret[len(rules.API_KEY_PREFIX) :]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", body)
    assert len(body) * 6 >= 256  # url-safe base64: 6 bits per character
    assert prefix == secret[: len(rules.API_KEY_PREFIX) + 8]
    assert len(prefix) <= 16  # fits ApiKey.key_prefix
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in digest
    assert prefix != secret


def test_new_api_keys_are_distinct() -> None:
    """RELIABILITY 3.1: every issued key is fresh randomness."""
    keys = [rules.new_api_key() for _ in range(20)]
    assert len({secret for secret, _, _ in keys}) == 20
    assert len({digest for _, _, digest in keys}) == 20


def test_api_key_matches_only_its_own_secret() -> None:
    """RELIABILITY 3.1: a key authenticates only with its exact secret."""
    secret, _, digest = rules.new_api_key()
    other, _, other_digest = rules.new_api_key()
    assert rules.api_key_matches(secret, digest)
    assert not rules.api_key_matches(other, digest)
    assert not rules.api_key_matches(secret, other_digest)
    assert not rules.api_key_matches(secret + "x", digest)
    assert not rules.api_key_matches(secret[:-1], digest)
    assert not rules.api_key_matches("", digest)


@pytest.mark.parametrize(
    ("username", "valid"),
    [
        ("alice", True),
        ("ab", True),
        ("a1", True),
        ("alice.smith", True),
        ("alice_smith-2", True),
        ("a" * 64, True),
        ("a", False),
        ("a" * 65, False),
        ("", False),
        ("Alice", False),
        ("1alice", False),
        ("_alice", False),
        ("al ice", False),
        ("alice\n", False),
        ("alice@plant", False),
        ("élise", False),
    ],
)
def test_valid_username(username: str, valid: bool) -> None:
    """AC-1: usernames are short lowercase identifiers, one per person."""
    assert rules.valid_username(username) is valid
