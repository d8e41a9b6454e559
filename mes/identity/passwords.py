"""Argon2id password hashing (S3). Hashing is CPU- and memory-heavy, so it runs in worker
threads behind a semaphore: at most four hashes at a time.

Every e-signature re-checks the password (ES-4), so a busy floor verifies many passwords per
second: the default profile is OWASP's recommended Argon2id configuration (m=19 MiB, t=2,
p=1; about 25 ms of CPU), ``strong`` the RFC 9106 second recommendation (m=64 MiB, t=3, p=4;
about 185 ms). Stored hashes carry their parameters, so a hash made under the other profile
still verifies and is re-hashed at the next successful login."""

from __future__ import annotations

import asyncio
from typing import Literal

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

STANDARD = Argon2Hasher(time_cost=2, memory_cost=19456, parallelism=1)
STRONG = Argon2Hasher(time_cost=3, memory_cost=65536, parallelism=4)
# Only for the test suite; settings refuse it when env=production.
TEST_CHEAP = Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1)
PROFILES = {"standard": STANDARD, "strong": STRONG, "test-cheap": TEST_CHEAP}


class PasswordHasher:
    """Async facade over pwdlib's Argon2id hasher."""

    def __init__(self, profile: Literal["standard", "strong", "test-cheap"] = "standard") -> None:
        self._hash = PasswordHash((PROFILES[profile],))
        self._limit = asyncio.Semaphore(4)
        # Verified against when the username is unknown, so timing does not reveal accounts.
        self._dummy = self._hash.hash("not-a-real-password-for-timing")

    async def hash(self, password: str) -> str:
        async with self._limit:
            return await asyncio.to_thread(self._hash.hash, password)

    async def verify(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """Return (valid, new_hash); new_hash is set when the stored hash needs an upgrade."""
        async with self._limit:
            return await asyncio.to_thread(
                self._hash.verify_and_update, password, hashed or self._dummy
            )
