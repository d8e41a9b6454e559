"""A named lease in the ``job_lease`` table: one holder at a time, renewed before it expires.

Several processes of a deployment may run the background runner (every ``mes serve`` worker,
the ``scheduler`` role, a demo); only the lease holder runs the jobs. Taking the lease is one
conditional UPDATE - it succeeds when the row is ours already or has expired - so two
processes racing for an expired lease cannot both win: on PostgreSQL the second UPDATE waits
for the first's row lock and then finds the row no longer expired; on SQLite writers are
serialised (``BEGIN IMMEDIATE``). The very first holder INSERTs the row, and a unique-key
violation there means another process inserted it first. No advisory locks, so the same code
runs on both databases.

Expiry is judged by each process's own clock: clocks a few seconds apart matter little against
a TTL of a minute renewed every third of it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, insert, or_, update
from sqlalchemy.exc import IntegrityError

from mes.clock import Clock
from mes.db import Database
from mes.models import JobLease

log = logging.getLogger(__name__)

LEASE: Any = JobLease.__table__  # type: ignore[attr-defined]


def default_holder() -> str:
    """``hostname:pid:random``: tells the processes of one host apart, and a restarted process
    (a pid reused) from its predecessor."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:200]


class Lease:
    """The lease ``name`` as seen by the process ``holder``."""

    def __init__(self, db: Database, name: str, holder: str, ttl: timedelta, clock: Clock) -> None:
        if ttl <= timedelta(0):
            raise ValueError("a lease needs a positive TTL (background_lease_ttl)")
        self.db = db
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        # Until when this process may act as the holder: set by a successful renewal and
        # never extended otherwise, so a process that cannot reach the database stops acting
        # when its lease runs out (by which time another may have taken it).
        self.held_until: datetime | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now (by its last successful renewal)."""
        return self.held_until is not None and self.clock.now() < self.held_until

    async def acquire_or_renew(self) -> bool:
        """Take the lease if it is free or expired, extend it if it is ours; whether this
        process holds it now. Each attempt is its own short transaction."""
        now = self.clock.now()
        expires = now + self.ttl
        at_now = bindparam("now", now, type_=LEASE.c.expires_at.type)
        take = (
            update(LEASE)
            .where(
                LEASE.c.name == self.name,
                or_(LEASE.c.holder == self.holder, LEASE.c.expires_at < at_now),
            )
            .values(
                holder=self.holder,
                expires_at=expires,
                # A renewal keeps the time the lease was taken; a takeover restarts it.
                acquired_at=case(
                    (LEASE.c.holder == self.holder, LEASE.c.acquired_at), else_=at_now
                ),
            )
        )
        try:
            async with self.db.engine.begin() as conn:
                taken = (await conn.execute(take)).rowcount == 1
            if not taken:
                taken = await self._insert(now, expires)
        except BaseException:
            # Whatever this process believed, it can no longer tell: stop acting now.
            self.held_until = None
            raise
        was_held = self.held
        self.held_until = expires if taken else None
        if taken and not was_held:
            log.info("background lease %r taken by %s", self.name, self.holder)
        elif was_held and not taken:
            log.warning("background lease %r lost by %s", self.name, self.holder)
        return taken

    async def _insert(self, now: datetime, expires: datetime) -> bool:
        """The first holder creates the row; a duplicate key means someone else holds it."""
        row = {"name": self.name, "holder": self.holder, "acquired_at": now, "expires_at": expires}
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(LEASE).values(**row))
        except IntegrityError:
            return False
        return True

    async def release(self) -> None:
        """Give the lease up (at shutdown) so another process takes it at its next renewal
        instead of waiting for the TTL. Only our own lease is removed."""
        self.held_until = None
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(LEASE).where(and_(LEASE.c.name == self.name, LEASE.c.holder == self.holder))
            )

    async def stored(self) -> JobLease | None:
        """The lease row as stored: who holds it, since when, until when (health, tests)."""
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(LEASE.select().where(LEASE.c.name == self.name))).first()
        return JobLease.model_validate(dict(row._mapping)) if row is not None else None
