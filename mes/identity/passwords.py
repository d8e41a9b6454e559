"""Argon2id password hashing (S3). Hashing is CPU- and memory-heavy, so it runs in worker
threads behind a semaphore: at most four hashes (4 x 64 MiB) at a time."""

from __future__ import annotations

import asyncio
from typing import Literal

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

# RFC 9106 "second recommended" profile: t=3, m=64 MiB, p=4; above OWASP's floor (m=19 MiB, t=2).
STANDARD = Argon2Hasher(time_cost=3, memory_cost=65536, parallelism=4)
# Only for the test suite; settings refuse it when env=production.
TEST_CHEAP = Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1)


class PasswordHasher:
    """Async facade over pwdlib's Argon2id hasher."""

    def __init__(self, profile: Literal["standard", "test-cheap"] = "standard") -> None:
        self._hash = PasswordHash((STANDARD if profile == "standard" else TEST_CHEAP,))
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
