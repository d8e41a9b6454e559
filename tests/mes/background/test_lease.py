"""The lease: two runners on one database, exactly one runs the jobs; the other takes over when
the first stops (it releases the lease) or when its lease expires unrenewed (a crash)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from mes.background.jobs import JobSpec
from mes.background.lease import Lease
from mes.background.runner import BackgroundRunner
from mes.context import AppContext
from mes.settings import MesSettings
from tests.conftest import FakeClock, make_settings

# Long enough that no scheduled renewal fires during a test: the tests renew explicitly.
TTL = timedelta(minutes=30)
A = "host-a:101:aaaaaaaa"
B = "host-b:202:bbbbbbbb"


async def count_runs(ctx: AppContext) -> None:
    """A job that only counts (the runner records its runs)."""


COUNTING = (JobSpec("counting", timedelta(minutes=1), count_runs),)


@pytest.fixture
def lease_settings(database_url: str, tmp_path: Path) -> MesSettings:
    return make_settings(database_url, tmp_path, background_lease_ttl=TTL)


@pytest.fixture
async def two(
    lease_settings: MesSettings, clock: FakeClock
) -> AsyncIterator[tuple[BackgroundRunner, BackgroundRunner]]:
    """Two runners as two processes would run them: each its own engine, one database."""
    contexts = [AppContext.build(lease_settings, clock=clock) for _ in range(2)]
    runners = (
        BackgroundRunner(contexts[0], COUNTING, holder=A),
        BackgroundRunner(contexts[1], COUNTING, holder=B),
    )
    try:
        yield runners
    finally:
        for runner in runners:
            await runner.stop()
        for context in contexts:
            await context.close()


async def holder_of(runner: BackgroundRunner) -> str | None:
    found = await runner.lease.stored()
    return found.holder if found else None


async def test_only_the_lease_holder_runs_the_jobs(
    two: tuple[BackgroundRunner, BackgroundRunner],
) -> None:
    first, second = two
    await first.start()
    await second.start()
    assert (first.is_leader, second.is_leader) == (True, False)
    assert await holder_of(first) == A

    assert await first.run_scheduled("counting") is True
    assert await second.run_scheduled("counting") is False  # skipped silently
    assert first.health.jobs["counting"].runs == 1
    assert second.health.jobs["counting"].runs == 0
    assert second.health.status == "ok"
    assert second.health.detail == "standby: another process holds the lease"

    # Renewals keep it where it is.
    assert await second.renew() is False
    assert await first.renew() is True
    assert await second.renew() is False


async def test_the_standby_takes_over_when_the_holder_stops(
    two: tuple[BackgroundRunner, BackgroundRunner],
) -> None:
    first, second = two
    await first.start()
    await second.start()
    await first.stop()  # releases the lease: no wait for the TTL
    assert await holder_of(first) is None
    assert await second.renew() is True
    assert second.is_leader
    assert await holder_of(second) == B
    assert await second.run_scheduled("counting") is True


async def test_the_standby_takes_over_when_the_holder_stops_renewing(
    two: tuple[BackgroundRunner, BackgroundRunner], clock: FakeClock
) -> None:
    """A holder that crashed (or lost the database) never releases: its lease expires."""
    first, second = two
    assert await first.renew() is True
    assert await second.renew() is False
    clock.advance(TTL - timedelta(seconds=1))
    assert await second.renew() is False  # not yet expired
    assert first.is_leader

    clock.advance(timedelta(seconds=2))  # past the first's expiry, no renewal since
    assert not first.is_leader  # it stops acting on its own, before it learns of a takeover
    assert await first.run_scheduled("counting") is False
    assert await second.renew() is True
    assert await first.renew() is False  # the row names the second now
    assert await holder_of(first) == B
    assert await second.run_scheduled("counting") is True
    assert first.health.jobs["counting"].runs == 0


async def test_a_renewal_keeps_the_time_the_lease_was_taken(
    ctx: AppContext, clock: FakeClock
) -> None:
    lease = Lease(ctx.db, "x", A, TTL, clock)
    other = Lease(ctx.db, "x", B, TTL, clock)
    assert await lease.acquire_or_renew() is True
    first = await lease.stored()
    assert first is not None
    clock.advance(timedelta(minutes=10))
    assert await lease.acquire_or_renew() is True
    renewed = await lease.stored()
    assert renewed is not None
    assert renewed.acquired_at == first.acquired_at
    assert renewed.expires_at >= first.expires_at + timedelta(minutes=10)

    clock.advance(TTL * 2)
    assert await other.acquire_or_renew() is True  # a takeover restarts it
    taken = await other.stored()
    assert taken is not None
    assert (taken.holder, taken.acquired_at) == (B, taken.expires_at - TTL)
    await lease.release()  # not its lease any more: the other keeps it
    assert await other.stored() == taken


async def test_the_holder_string_names_host_and_process(ctx: AppContext) -> None:
    runner = BackgroundRunner(ctx)
    host, pid, token = runner.lease.holder.split(":")
    assert host
    assert pid == str(os.getpid())
    assert len(token) == 8
    assert BackgroundRunner(ctx).lease.holder != runner.lease.holder
