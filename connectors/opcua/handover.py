"""Hands observations to the MES in batches, from one task, without blocking the producer.

The publish callback must return quickly (asyncua acknowledges the notification message as
soon as it does), while ``ctx.emit`` waits until values are durably stored. This buffer sits
between the two: ``put`` never blocks, one task calls ``emit`` per accumulated batch, and
when the MES falls too far behind new values are refused and recorded as a gap instead of
growing memory without bound or vanishing silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from connectors.base import ConnectorContext, ConnectorNotReady, Gap, Observation

EMIT_ATTEMPTS = 3


class Handover:
    """Bounded buffer plus the single task that empties it into ``ctx.emit``."""

    def __init__(self, ctx: ConnectorContext, *, batch_size: int, max_buffered: int) -> None:
        self._ctx = ctx
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._pending: list[Observation] = []
        self._in_hand: list[Observation] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._refused: tuple[datetime, datetime, int] | None = None
        self.unstored_since: datetime | None = None
        """Receive time of the oldest value that was never stored (after a failure)."""

    def put(self, batch: list[Observation]) -> None:
        """Queue values for storage, or refuse them (counted for a gap) if the buffer is full."""
        if not batch:
            return
        if len(self._pending) + len(batch) > self._max_buffered:
            first = min(obs.source_ts for obs in batch)
            last = max(obs.source_ts for obs in batch)
            if self._refused is None:
                self._ctx.logger.error(
                    "%s: %d values waiting; refusing new values until the MES catches up",
                    self._ctx.name,
                    len(self._pending),
                )
                self._refused = (first, last, len(batch))
            else:
                start, end, count = self._refused
                self._refused = (min(start, first), max(end, last), count + len(batch))
            return
        self._pending.extend(batch)
        self._wake.set()

    async def run(self) -> None:
        """Emit until ``close``; raises ``ConnectorNotReady`` if storing keeps failing."""
        while not (self._stopping and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            for start in range(0, len(batch), self._batch_size):
                # What is not yet stored, should this task be cancelled mid-batch.
                self._in_hand = batch[start:]
                await self._emit(batch[start : start + self._batch_size], batch[start:])
            self._in_hand = []
            if self._refused is not None:
                first, last, count = self._refused
                self._refused = None
                await self._ctx.report_gap(
                    Gap(
                        source=self._ctx.name,
                        start=first,
                        end=max(first, last),
                        reason=f"{count} values refused: connector buffer full",
                    )
                )

    async def _emit(self, chunk: list[Observation], unstored: list[Observation]) -> None:
        for attempt in range(1, EMIT_ATTEMPTS + 1):
            try:
                await self._ctx.emit(chunk)
                return
            except Exception as exc:
                if attempt == EMIT_ATTEMPTS:
                    self._lose(unstored)
                    raise ConnectorNotReady(f"{self._ctx.name}: values not stored: {exc}") from exc
                self._ctx.logger.warning("%s: storing values failed: %r", self._ctx.name, exc)
                await asyncio.sleep(0.25 * 2**attempt)

    def _lose(self, unstored: list[Observation]) -> None:
        values = unstored + self._pending
        self._pending = []
        if values:
            first = min(obs.received_ts for obs in values)
            self.unstored_since = min(self.unstored_since or first, first)

    async def close(self, task: asyncio.Task[None], timeout_s: float) -> None:
        """Let ``task`` (running ``run``) store what is queued, for at most ``timeout_s``."""
        self._stopping = True
        self._wake.set()
        if not task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout_s)
        elif not task.cancelled() and task.exception() is not None:
            self._ctx.logger.debug("%s: hand-over ended: %r", self._ctx.name, task.exception())
        in_hand, self._in_hand = self._in_hand, []
        if in_hand or self._pending:
            self._ctx.logger.error(
                "%s: %d values not stored at shutdown",
                self._ctx.name,
                len(in_hand) + len(self._pending),
            )
            self._lose(in_hand)
