"""The telemetry spool: while the database is unreachable samples and gaps wait in the local
spool, and afterwards every one of them is stored exactly once, in the order it was emitted.

The outage is real: the ingest reaches the test's PostgreSQL database through a TCP proxy on a
free loopback port (``tests.support.tcp_proxy``), and the test cuts the proxy (listening socket
closed, open connections reset). The shared server is never touched. A SQLite file database
cannot become unreachable, so the outage tests run on PostgreSQL only; the spool itself and the
drain at start are checked on both databases.

"In order" is checked twice: against what the store committed, call by call (a ``SampleStore``
subclass that notes each committed write), and against the database itself, which numbers
what it inserted (the inserting transaction id ``xmin`` on PostgreSQL, ``rowid`` on SQLite).
"""

from __future__ import annotations

import asyncio
import itertools
import stat
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from connectors.base import Gap, Observation, Quality
from mes.context import AppContext
from mes.db import Database
from mes.models import TagKind
from mes.telemetry.config import TagSpec, register_tags
from mes.telemetry.ingest import Ingest, database_unavailable
from mes.telemetry.spool import Spool
from mes.telemetry.store import COLUMNS, GAP, LATEST, SAMPLE, TAG, SampleRow, SampleStore
from tests.conftest import BACKEND
from tests.support.tcp_proxy import TcpProxy

OUTAGE_S = 20.0  # the issue: "PostgreSQL unreachable for 20 s during a stream"
STEP_S = 0.1  # one batch per step while streaming
EMIT_TIMEOUT_S = 15.0  # a batch must be durable (database or spool) well within this
DRAIN_TIMEOUT_S = 60.0
SOURCE = "plc-spool"
TAGS = [
    TagSpec(tag="SP/R-101/melt_temp", uom="degC"),
    TagSpec(tag="SP/R-101/agitator_on", kind=TagKind.boolean),
    TagSpec(tag="SP/R-101/state", kind=TagKind.text),
]

needs_postgresql = pytest.mark.skipif(
    BACKEND != "postgresql",
    reason="a SQLite file database cannot become unreachable: the outage runs on PostgreSQL "
    "behind a TCP proxy (MES_TEST_DATABASE=postgresql)",
)


class RecordingStore(SampleStore):
    """The real store, noting what each committed write held, in commit order."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.commits: list[int | str] = []  # sample seqs and gap reasons
        self.failed_writes = 0

    async def write(self, rows: Sequence[SampleRow]) -> None:
        try:
            await super().write(rows)
        except Exception:
            self.failed_writes += 1
            raise
        self.commits.extend(row.seq for row in rows if row.seq is not None)

    async def write_gaps(self, gaps: Sequence[dict[str, Any]]) -> None:
        await super().write_gaps(gaps)
        self.commits.extend(gap["reason"] for gap in gaps)

    def first_commits(self) -> list[int | str]:
        """Each sample and gap once, where the database first committed it (a replay of a
        batch the database had committed before the connection broke changes nothing)."""
        return list(dict.fromkeys(self.commits))


class Stream:
    """Batches of one value per tag, numbered by ``seq`` in emission order; gaps by reason."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.sent: list[Observation] = []
        self.events: list[int | str] = []  # what was emitted or reported, in that order
        self.batches = 0

    def batch(self) -> list[Observation]:
        i = self.batches
        self.batches += 1
        at = self.start + timedelta(milliseconds=10 * i)
        values: list[float | bool | str] = [150.0 + i / 8, i % 2 == 0, f"step-{i}"]
        batch = [
            Observation(
                source=SOURCE,
                tag=spec.tag,
                value=value,
                quality=Quality.good,
                source_ts=at,
                received_ts=at + timedelta(milliseconds=3),
                seq=len(self.sent) + n,
            )
            for n, (spec, value) in enumerate(zip(TAGS, values, strict=True))
        ]
        self.sent += batch
        self.events += [o.seq for o in batch if o.seq is not None]
        return batch

    def gap(self, reason: str) -> Gap:
        self.events.append(reason)
        at = self.start + timedelta(milliseconds=10 * self.batches)
        return Gap(SOURCE, at - timedelta(seconds=2), at, reason)


def to_row(o: Observation, tags: dict[str, int]) -> SampleRow:
    """``o`` as the ingest stores it (and spools it)."""
    number, text_value = stored_value(o)
    return SampleRow(
        tags[o.tag],
        o.source_ts,
        o.source,
        number,
        text_value,
        str(o.quality),
        o.status_code,
        o.seq,
        None,
        o.received_ts,
    )


def gap_record(gap: Gap) -> dict[str, Any]:
    """``gap`` as the ingest stores it (and spools it)."""
    return {
        "id": uuid.uuid4(),
        "source": gap.source,
        "tag": gap.tag,
        "start": gap.start,
        "end": gap.end,
        "reason": gap.reason,
        "first_seq": gap.first_seq,
        "last_seq": gap.last_seq,
        "recorded_at": gap.end,
    }


async def emit(ingest: Ingest, batch: Sequence[Observation]) -> None:
    """Emit and wait (bounded) until the batch is durable. The future is shared by everything
    queued with it, so a timeout must not cancel it."""
    await asyncio.wait_for(asyncio.shield(ingest.emit(batch)), EMIT_TIMEOUT_S)


async def stream_for(ingest: Ingest, stream: Stream, seconds: float) -> int:
    """Emit a batch every ``STEP_S`` for ``seconds``; the number of batches."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    count = 0
    while loop.time() < end:
        await emit(ingest, stream.batch())
        count += 1
        await asyncio.sleep(STEP_S)
    return count


async def stream_until_drained(ingest: Ingest, stream: Stream) -> int:
    """Keep emitting a batch every ``STEP_S`` until the spool is empty (bounded); the number
    of batches."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT_S
    count = 0
    while ingest.spool.pending:
        if loop.time() > deadline:
            pytest.fail(f"spool still holds {ingest.spool.pending} entries")
        await emit(ingest, stream.batch())
        count += 1
        await asyncio.sleep(STEP_S)
    return count


async def until_drained(ingest: Ingest) -> None:
    """Wait (bounded) until the spool is empty."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT_S
    while True:
        if not ingest.spool.pending:
            return
        if loop.time() > deadline:
            pytest.fail(f"spool still holds {ingest.spool.pending} entries")
        await asyncio.sleep(0.05)


async def spool_entries(path: Path) -> int:
    """What the spool file holds, read by a second handle (as a restarted process would)."""
    spool = Spool(path)
    await spool.open()
    try:
        return spool.pending
    finally:
        await spool.close()


def stored_value(o: Observation) -> tuple[float | None, str | None]:
    """``o``'s value as stored: (number, text)."""
    if o.value is None:
        return None, None
    if isinstance(o.value, str):
        return None, o.value
    return float(o.value), None


def as_stored(o: Observation) -> tuple[object, ...]:
    return (o.tag, o.source_ts, o.source, *stored_value(o), str(o.quality))


async def stored_samples(ctx: AppContext) -> list[tuple[object, ...]]:
    """Every stored sample of the test's source as (seq, tag, source time, source, number,
    text, quality)."""
    async with ctx.db.engine.connect() as conn:
        rows = await conn.execute(
            select(
                SAMPLE.c.seq,
                TAG.c.tag,
                SAMPLE.c.source_ts,
                SAMPLE.c.source,
                SAMPLE.c.value_num,
                SAMPLE.c.value_text,
                SAMPLE.c.quality,
            )
            .join(TAG, TAG.c.id == SAMPLE.c.tag_id)
            .where(SAMPLE.c.source == SOURCE)
        )
        return [tuple(row) for row in rows]


async def assert_stored_exactly_once(ctx: AppContext, stream: Stream) -> None:
    rows = await stored_samples(ctx)
    assert len(rows) == len(stream.sent)
    assert {row[0]: row[1:] for row in rows} == {o.seq: as_stored(o) for o in stream.sent}
    async with ctx.db.engine.connect() as conn:
        reasons = list(await conn.scalars(select(GAP.c.reason)))
    assert sorted(reasons) == sorted(e for e in stream.events if isinstance(e, str))


async def assert_latest_is_last_emitted(ctx: AppContext, stream: Stream) -> None:
    async with ctx.db.engine.connect() as conn:
        rows = await conn.execute(
            select(TAG.c.tag, LATEST.c.source_ts, LATEST.c.value_num, LATEST.c.value_text).join(
                TAG, TAG.c.id == LATEST.c.tag_id
            )
        )
        latest = {tag: (ts, num, txt) for tag, ts, num, txt in rows}
    last = {o.tag: as_stored(o) for o in stream.sent}
    assert latest == {tag: (row[1], row[3], row[4]) for tag, row in last.items()}


async def assert_inserted_in_emission_order(ctx: AppContext, events: Sequence[int | str]) -> None:
    """The database's own numbering of what it inserted grows with the emission order: the
    inserting transaction id on PostgreSQL (writes are sequential, so ids follow commits;
    gaps included), the rowid of ``telemetry_sample`` on SQLite (samples only)."""
    pg = ctx.db.dialect == "postgresql"
    mark = "xmin::text::bigint" if pg else "rowid"
    async with ctx.db.engine.connect() as conn:
        samples = await conn.execute(
            text(f"SELECT seq, {mark} FROM telemetry_sample WHERE source = :s"), {"s": SOURCE}
        )
        marks: dict[int | str, int] = {int(seq): int(number) for seq, number in samples}
        if pg:
            gaps = await conn.execute(text("SELECT reason, xmin::text::bigint FROM telemetry_gap"))
            marks.update((str(reason), int(number)) for reason, number in gaps)
    checked = [(event, marks[event]) for event in events if pg or isinstance(event, int)]
    for (before, mark_before), (after, mark_after) in itertools.pairwise(checked):
        assert mark_before <= mark_after, (
            f"{after!r} was stored before {before!r} (emitted earlier): {mark_after} < "
            f"{mark_before}"
        )


@pytest.fixture
async def tags(ctx: AppContext) -> dict[str, int]:
    return await register_tags(ctx.db, TAGS)


@pytest.fixture
def stream(ctx: AppContext) -> Stream:
    return Stream(ctx.clock.now().replace(microsecond=0) - timedelta(hours=1))


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test's PostgreSQL server (the shared one: never stopped)."""
    url = make_url(database_url)
    tcp = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await tcp.start()
    try:
        yield tcp
    finally:
        await tcp.close()


def proxied_url(database_url: str, proxy: TcpProxy) -> str:
    """The test's database, reached through ``proxy``."""
    url = make_url(database_url).set(host=proxy.host, port=proxy.port)
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def proxied_db(database_url: str, proxy: TcpProxy) -> AsyncIterator[Database]:
    db = Database.from_url(proxied_url(database_url, proxy))
    try:
        yield db
    finally:
        await db.dispose()


# -- the spool on its own (both databases) -------------------------------------------------


def sample_row(tag_id: int, at: datetime, **changes: Any) -> SampleRow:
    row = SampleRow(
        tag_id=tag_id,
        source_ts=at,
        source=SOURCE,
        value_num=151.25,
        value_text=None,
        quality="good",
        status_code=None,
        seq=2**40 + 1,
        flags=None,
        received_ts=at + timedelta(milliseconds=7),
    )
    return row._replace(**changes)


async def test_the_spool_is_a_durable_fifo(
    ctx: AppContext, tags: dict[str, int], tmp_path: Path
) -> None:
    t0 = ctx.clock.now().replace(microsecond=0) - timedelta(hours=1)
    temp, on, state = (tags[spec.tag] for spec in TAGS)
    first = [
        sample_row(temp, t0),
        sample_row(on, t0, value_num=1.0, seq=None, status_code=0x40920000, flags="replayed"),
        sample_row(state, t0, value_num=None, value_text="HOLD ünïcode", quality="uncertain"),
    ]
    second = [
        # A source clock in another zone: the same instant comes back.
        sample_row(temp, t0.astimezone(timezone(timedelta(hours=1))) + timedelta(seconds=1)),
        sample_row(temp, t0 + timedelta(seconds=2), value_num=None, quality="bad", seq=7),
    ]
    gap = {
        "id": uuid.uuid4(),
        "source": SOURCE,
        "tag": None,
        "start": t0 - timedelta(seconds=30),
        "end": t0,
        "reason": "broker lost the session",
        "first_seq": 10,
        "last_seq": 41,
        "recorded_at": t0 + timedelta(seconds=3),
    }

    path = tmp_path / "var" / "spool" / "telemetry.db"
    spool = Spool(path)
    await spool.open()
    try:
        assert spool.pending == 0
        await spool.append_samples(first)
        await spool.append_gap(gap)
        await spool.append_samples(second)
        assert spool.pending == 3
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # Durable once appended: a second handle (a restarted process after a crash) sees
        # all of it while the first is still open.
        assert await spool_entries(path) == 3
    finally:
        await spool.close()

    reopened = Spool(path)
    await reopened.open()
    read: list[tuple[str, Any]] = []
    try:
        assert reopened.pending == 3
        while (entry := await reopened.oldest()) is not None:
            entry_id, kind, body = entry
            assert await reopened.oldest() == entry  # reading does not consume
            read.append((kind, body))
            await reopened.remove(entry_id)
        assert reopened.pending == 0
    finally:
        await reopened.close()

    assert read == [("samples", first), ("gap", gap), ("samples", second)]
    for kind, body in read:
        rows = body if kind == "samples" else [body]
        for row in rows:
            values = row._asdict().values() if kind == "samples" else row.values()
            assert all(v.tzinfo is not None for v in values if isinstance(v, datetime))
    assert isinstance(read[1][1]["id"], uuid.UUID)
    assert await spool_entries(path) == 0

    # What comes back is what the database takes, on either backend.
    store = SampleStore(ctx.db)
    for kind, body in read:
        if kind == "samples":
            await store.write(body)
        else:
            await store.write_gaps([body])
    async with ctx.db.engine.connect() as conn:
        stored = [SampleRow(*row) for row in await conn.execute(select(*SAMPLE.c[COLUMNS]))]
        kept = [dict(row._mapping) for row in await conn.execute(select(GAP))]
    assert sorted(stored) == sorted(first + second)
    assert kept == [gap]


async def test_a_restarted_ingest_drains_the_spool_before_new_values(
    ctx: AppContext, tags: dict[str, int], stream: Stream, tmp_path: Path
) -> None:
    """What a previous run left in the spool is stored first, and what arrives meanwhile
    follows it there, so nothing new overtakes it."""
    path = tmp_path / "spool.db"
    left = Spool(path)
    await left.open()
    try:
        for index in range(5):
            await left.append_samples([to_row(o, tags) for o in stream.batch()])
            if index == 2:
                await left.append_gap(gap_record(stream.gap("left by the previous run")))
    finally:
        await left.close()

    store = RecordingStore(ctx.db)
    ingest = Ingest(store, Spool(path), ctx.clock)
    await ingest.start()
    try:
        assert ingest.spool.pending == 6
        for _ in range(5):
            await emit(ingest, stream.batch())
        await until_drained(ingest)
        await emit(ingest, stream.batch())
        assert ingest.spool.pending == 0
    finally:
        await ingest.stop()

    assert store.first_commits() == stream.events
    await assert_stored_exactly_once(ctx, stream)
    await assert_inserted_in_emission_order(ctx, stream.events)
    await assert_latest_is_last_emitted(ctx, stream)
    assert await spool_entries(path) == 0


# -- PostgreSQL unreachable ----------------------------------------------------------------


@needs_postgresql
async def test_a_database_outage_loses_nothing_and_keeps_the_order(
    ctx: AppContext,
    tags: dict[str, int],
    stream: Stream,
    proxy: TcpProxy,
    proxied_db: Database,
    tmp_path: Path,
) -> None:
    store = RecordingStore(proxied_db)
    ingest = Ingest(store, Spool(tmp_path / "spool.db"), ctx.clock)
    await ingest.start()
    try:
        await stream_for(ingest, stream, 1.0)
        assert ingest.spool.pending == 0
        assert proxy.connections > 0  # the ingest really goes through the proxy
        before_outage = len(stream.sent)

        await proxy.cut()
        # Every batch resolves although the database is unreachable: the spool is durable.
        await stream_for(ingest, stream, OUTAGE_S / 2)
        await asyncio.wait_for(ingest.report_gap(stream.gap("broker restarted")), EMIT_TIMEOUT_S)
        await stream_for(ingest, stream, OUTAGE_S / 2)
        during_outage = len(stream.sent) - before_outage
        assert during_outage > 0
        # Each batch and the gap wait in the spool, one entry each.
        assert ingest.spool.pending == during_outage // len(TAGS) + 1
        assert await spool_entries(ingest.spool.path) == ingest.spool.pending
        assert store.failed_writes > 0
        # Nothing of it reached the database (read directly, not through the proxy).
        stored = await stored_samples(ctx)
        assert len(stored) == before_outage
        assert {row[0] for row in stored} == {o.seq for o in stream.sent[:before_outage]}

        await proxy.restore()
        # New values keep coming until the spool is empty; meanwhile they queue behind it.
        after = await stream_until_drained(ingest, stream)
        assert after > 0
        # Drained: new values go straight to the database again.
        await emit(ingest, stream.batch())
        assert ingest.spool.pending == 0
    finally:
        await ingest.stop()

    assert await spool_entries(ingest.spool.path) == 0
    assert ingest.stored == len(stream.sent)
    assert not ingest.rejected
    await assert_stored_exactly_once(ctx, stream)
    assert store.first_commits() == stream.events
    await assert_inserted_in_emission_order(ctx, stream.events)
    await assert_latest_is_last_emitted(ctx, stream)


@needs_postgresql
async def test_an_ingest_stopped_during_an_outage_drains_after_a_restart(
    ctx: AppContext,
    database_url: str,
    tags: dict[str, int],
    stream: Stream,
    proxy: TcpProxy,
    proxied_db: Database,
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    first = RecordingStore(proxied_db)
    ingest = Ingest(first, Spool(path), ctx.clock)
    await ingest.start()
    try:
        for _ in range(3):
            await emit(ingest, stream.batch())
        await proxy.cut()
        for _ in range(4):
            await emit(ingest, stream.batch())
        await asyncio.wait_for(ingest.report_gap(stream.gap("source reconnected")), EMIT_TIMEOUT_S)
        for _ in range(3):
            await emit(ingest, stream.batch())
    finally:
        # Stopped with the database still unreachable: the spool keeps what it holds.
        await asyncio.wait_for(ingest.stop(), EMIT_TIMEOUT_S)
    assert await spool_entries(path) == 4 + 1 + 3
    assert len(await stored_samples(ctx)) == 3 * len(TAGS)

    await proxy.restore()
    # A new process: its own engine, the same spool file.
    db = Database.from_url(proxied_url(database_url, proxy))
    second = RecordingStore(db)
    restarted = Ingest(second, Spool(path), ctx.clock)
    try:
        await restarted.start()  # drains what the spool holds, oldest first
        for _ in range(3):
            await emit(restarted, stream.batch())
        await until_drained(restarted)
    finally:
        await restarted.stop()
        await db.dispose()

    assert await spool_entries(path) == 0
    assert first.first_commits() + second.first_commits() == stream.events
    await assert_stored_exactly_once(ctx, stream)
    await assert_inserted_in_emission_order(ctx, stream.events)
    await assert_latest_is_last_emitted(ctx, stream)


# -- stopping, and reconnecting after an outage -------------------------------------------


@needs_postgresql
async def test_the_store_gets_through_once_the_database_is_back(
    tags: dict[str, int], stream: Stream, proxy: TcpProxy, proxied_db: Database
) -> None:
    store = SampleStore(proxied_db)
    await store.write([to_row(o, tags) for o in stream.batch()])
    await proxy.cut()
    await proxy.restore()
    # Reachable again: a caller retrying a few times a second gets through after at most
    # one failure on the connection that the outage broke.
    outcomes: list[str] = []
    for _ in range(5):
        try:
            await store.write([to_row(o, tags) for o in stream.batch()])
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            outcomes.append(repr(exc))
        else:
            outcomes.append("stored")
        await asyncio.sleep(0.2)
    assert "stored" in outcomes[:2], outcomes


async def test_stop_keeps_a_batch_that_is_being_written(
    ctx: AppContext, tags: dict[str, int], stream: Stream, tmp_path: Path
) -> None:
    """Stopping while the writer holds a batch waits for it (regression: stop() used to
    cancel the writer mid-commit, the batch neither stored nor spooled and its emit future
    never resolved)."""
    path = tmp_path / "spool.db"
    ingest = Ingest(SampleStore(ctx.db), Spool(path), ctx.clock)
    await ingest.start()
    await emit(ingest, stream.batch())
    done = ingest.emit(stream.batch())
    assert isinstance(done, asyncio.Future)
    await asyncio.sleep(0)  # the writer takes the batch and starts writing it
    await asyncio.wait_for(ingest.stop(), EMIT_TIMEOUT_S)
    assert done.done()
    assert done.exception() is None
    assert {row[0] for row in await stored_samples(ctx)} == {o.seq for o in stream.sent}
    assert await spool_entries(path) == 0
