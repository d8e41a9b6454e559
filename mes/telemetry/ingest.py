"""Observations in, stored samples out: the MES side of the connector contract.

``Ingest.emit`` checks each observation (registered tag, value of the tag's kind, timestamp
not in the future), queues the good ones and returns a future that resolves when they are
durable. One writer task commits whatever has queued since its last commit (group commit:
low latency when idle, large batches under load). When the database is unreachable the batch
goes to the local spool instead - durable too, so the connector may acknowledge - and while
the spool holds anything every new batch follows it there, so the drain keeps arrival order.
Refused values are counted and logged per source with the reason and stored in
``ingest_reject``; they never stop the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from connectors.base import Gap, Observation, Quality, Rejected
from mes.clock import Clock
from mes.ids import uuid7
from mes.models import TagKind
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleRow, SampleStore, database_unavailable

log = logging.getLogger(__name__)


class Effect(Protocol):
    """What follows from stored values (alarms, equipment status): started with the ingest,
    then given every batch once it is in the database."""

    async def start(self) -> None: ...

    async def process(self, rows: Sequence[SampleRow]) -> None: ...


MAX_TEXT = 200
QUALITY_TEXT = {quality: quality.value for quality in Quality}
REJECT_PAYLOAD_BYTES = 256


class Ingest:
    """Validates observations and stores them, through the spool when the database is down."""

    def __init__(
        self,
        store: SampleStore,
        spool: Spool,
        clock: Clock,
        *,
        future_skew: timedelta = timedelta(minutes=5),
        retry_after: timedelta = timedelta(seconds=1),
        effects: Sequence[Effect] = (),
    ) -> None:
        self.store = store
        self.spool = spool
        self.clock = clock
        self.future_skew = future_skew
        self.retry_after = retry_after
        self.effects = list(effects)
        self.tags: dict[str, tuple[int, str]] = {}
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.stored = 0
        self._rows: list[SampleRow] = []
        self._done: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._rejects: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._db_down = False

    async def start(self) -> None:
        """Load the tag registry, open the spool and start the writer (and the drain if the
        spool still holds batches from before a restart)."""
        await self.spool.open()
        self.tags = await self.store.tag_ids()
        for effect in self.effects:
            await effect.start()
        self._writer = asyncio.create_task(self._write_loop(), name="telemetry-writer")
        if self.spool.pending:
            log.warning("telemetry spool holds %d batches: draining", self.spool.pending)
            self._start_drain()

    async def stop(self) -> None:
        """Commit what is queued, then stop. The spool keeps what the database did not take."""
        await self.flush()
        for task in (self._writer, self._drainer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.spool.close()

    async def flush(self) -> None:
        """Wait until everything emitted before the call is durable (or has failed); values
        emitted meanwhile are not waited for, so a steady stream cannot keep it waiting."""
        waiting = [f for f in (self._inflight, self._done) if f is not None and not f.done()]
        if waiting:
            await asyncio.wait(waiting)

    # -- the connector's sinks -------------------------------------------------------------

    def emit(self, observations: Sequence[Observation]) -> Awaitable[None]:
        """Queue ``observations``; the result resolves when the good ones are durable."""
        latest = self.clock.now() + self.future_skew
        check = self._row
        rows = [row for row in (check(obs, latest) for obs in observations) if row is not None]
        if not rows:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        self._rows.extend(rows)
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        self._wake.set()
        # Shared by every caller of this batch: one caller cancelling its wait must not
        # cancel the batch for the others (nor the writer's result).
        return asyncio.shield(self._done)

    async def report_gap(self, gap: Gap) -> None:
        """Store a gap record (in the spool while the database is down)."""
        record = {
            "id": uuid7(),
            "source": gap.source,
            "tag": gap.tag,
            "start": gap.start,
            "end": gap.end,
            "reason": gap.reason[:500],
            "first_seq": gap.first_seq,
            "last_seq": gap.last_seq,
            "recorded_at": self.clock.now(),
        }
        log.warning("telemetry gap %s %s..%s: %s", gap.source, gap.start, gap.end, gap.reason)
        await self.flush()
        if self.spool.pending or self._db_down:
            await self.spool.append_gap(record)
            self._start_drain()
            return
        try:
            await self.store.write_gaps([record])
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            await self.spool.append_gap(record)
            self._start_drain()

    def reject(self, rejected: Rejected) -> None:
        """Count, log and keep a refused payload; never raises."""
        key = (rejected.source, rejected.reason)
        self.rejected[key] += 1
        count = self.rejected[key]
        if count == 1 or count % 1000 == 0:
            log.warning(
                "telemetry from %s refused (%s, %d so far): %s",
                rejected.source,
                rejected.reason,
                count,
                rejected.detail,
            )
        self._rejects.append(
            {
                "source": rejected.source[:100],
                "reason": rejected.reason[:40],
                "detail": rejected.detail[:500],
                "payload": bytes(rejected.payload[:REJECT_PAYLOAD_BYTES]),
                "at": self.clock.now(),
            }
        )

    # -- checking --------------------------------------------------------------------------

    def _row(self, obs: Observation, latest: datetime) -> SampleRow | None:
        """The row to store for ``obs``, or None when it is refused (``latest``: the latest
        source time accepted)."""
        known = self.tags.get(obs.tag)
        if known is None:
            return self._refuse(obs, "unknown_tag", f"tag {obs.tag!r} is not registered")
        if obs.source_ts > latest:
            return self._refuse(
                obs, "future_timestamp", f"{obs.tag}: source time {obs.source_ts.isoformat()}"
            )
        tag_id, kind = known
        value = obs.value
        number: float | None = None
        text: str | None = None
        if value is None:
            pass
        elif kind == TagKind.text:
            text = str(value)
            if len(text) > MAX_TEXT:
                return self._refuse(obs, "oversize", f"{obs.tag}: {len(text)} characters")
        elif isinstance(value, bool):
            number = float(value)
        elif isinstance(value, (int, float)) and kind == TagKind.number:
            number = float(value)
        else:
            return self._refuse(
                obs, "wrong_type", f"{obs.tag} takes a {kind}, got {type(value).__name__}"
            )
        flags = obs.flags
        return SampleRow(
            tag_id,
            obs.source_ts,
            obs.source[:100],
            number,
            text,
            QUALITY_TEXT[obs.quality],
            obs.status_code,
            obs.seq,
            ",".join(sorted(flags))[:100] if flags else None,
            obs.received_ts,
        )

    def _refuse(self, obs: Observation, reason: str, detail: str) -> SampleRow | None:
        """Refuse ``obs`` (no row)."""
        self.reject(Rejected(obs.source, reason, detail, repr(obs.value).encode()[:64]))
        return None

    # -- writing ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, done, rejects = self._rows, self._done, self._rejects
            self._rows, self._done, self._rejects = [], None, []
            if rejects:
                await self._keep_rejects(rejects)
            if not rows or done is None:
                continue
            self._inflight = done
            try:
                in_database = await self._commit(rows)
            except Exception as exc:
                log.exception("telemetry batch of %d samples not stored", len(rows))
                if not done.done():
                    done.set_exception(exc)
            else:
                self.stored += len(rows)
                if in_database:
                    # Before the batch counts as done: whoever waited for it sees its alarms.
                    await self._judge(rows)
                if not done.done():
                    done.set_result(None)
            finally:
                self._inflight = None

    async def _commit(self, rows: list[SampleRow]) -> bool:
        """Store ``rows`` in the database (True) or, while it is unreachable, the spool."""
        if not self.spool.pending and not self._db_down:
            try:
                await self.store.write(rows)
                return True
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.error("database unreachable (%s): spooling telemetry locally", exc)
                self._db_down = True
        await self.spool.append_samples(rows)
        self._start_drain()
        return False

    async def _judge(self, rows: Sequence[SampleRow]) -> None:
        # Alarms and equipment status follow the stored values; a failure of one is logged and
        # the values stay stored (the next batch is judged from the state in memory).
        for effect in self.effects:
            try:
                await effect.process(rows)
            except Exception:
                log.exception("%s of %d samples failed", type(effect).__name__, len(rows))

    async def _keep_rejects(self, rejects: list[dict[str, Any]]) -> None:
        # Best effort: the count and the log line already tell; the stored copy is for
        # inspection and is not worth holding the stream for.
        try:
            await self.store.write_rejects(rejects)
        except Exception:
            log.exception("%d refused payloads not kept", len(rejects))

    def _start_drain(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="telemetry-drain")

    async def _drain(self) -> None:
        """Move the spool into the database, oldest first, until it is empty."""
        while True:
            entry = await self.spool.oldest()
            if entry is None:
                if self._db_down:
                    log.warning("database reachable again: telemetry spool drained")
                self._db_down = False
                return
            entry_id, kind, body = entry
            try:
                if kind == "samples":
                    await self.store.write(body)
                else:
                    await self.store.write_gaps([body])
            except Exception as exc:
                if not database_unavailable(exc):
                    log.exception("spooled %s entry %d refused by the database", kind, entry_id)
                await asyncio.sleep(self.retry_after.total_seconds())
                continue
            await self.spool.remove(entry_id)
            if kind == "samples":
                await self._judge(body)
