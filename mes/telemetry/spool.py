"""The local spool: where telemetry waits, durably, while the MES database is unreachable.

A SQLite file in the var directory (WAL, ``synchronous=FULL``: a batch appended here survives
a power cut), read back oldest first. A batch leaves the spool only after the database has
committed it; a crash in between replays it, and the sample key absorbs the duplicate.
Used from one worker thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from mes.telemetry.store import SampleRow

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, body TEXT NOT NULL)"
)


def _encode_row(row: SampleRow) -> list[Any]:
    return [value.isoformat() if isinstance(value, datetime) else value for value in row]


def _decode_row(raw: list[Any]) -> SampleRow:
    row = SampleRow(*raw)
    return row._replace(
        source_ts=datetime.fromisoformat(row.source_ts),  # type: ignore[arg-type]
        received_ts=datetime.fromisoformat(row.received_ts),  # type: ignore[arg-type]
    )


class Spool:
    """A durable FIFO of sample batches and gap records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self.pending = 0

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError(f"spool {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Open (or create, 0600) the spool file and count what it still holds."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)
        self._conn = conn
        self.pending = conn.execute("SELECT count(*) FROM spool").fetchone()[0]

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def append_samples(self, rows: Sequence[SampleRow]) -> None:
        """Append one batch of samples; returns once it is on disk."""
        await self._call(self._append, "samples", [_encode_row(r) for r in rows])

    async def append_gap(self, gap: dict[str, Any]) -> None:
        """Append one gap record; returns once it is on disk."""
        body = {
            k: v.isoformat()
            if isinstance(v, datetime)
            else str(v)
            if isinstance(v, uuid.UUID)
            else v
            for k, v in gap.items()
        }
        await self._call(self._append, "gap", body)

    def _append(self, kind: str, body: Any) -> None:
        assert self._conn is not None
        self._conn.execute("INSERT INTO spool (kind, body) VALUES (?, ?)", (kind, json.dumps(body)))
        self.pending += 1

    async def oldest(self) -> tuple[int, str, Any] | None:
        """The oldest entry: (id, kind, samples or gap record), or None when empty."""
        entry: tuple[int, str, str] | None = await self._call(self._oldest)
        if entry is None:
            return None
        entry_id, kind, body = entry
        data = json.loads(body)
        if kind == "samples":
            return entry_id, kind, [_decode_row(raw) for raw in data]
        data["id"] = uuid.UUID(data["id"])
        for key in ("start", "end", "recorded_at"):
            if data.get(key):
                data[key] = datetime.fromisoformat(data[key])
        return entry_id, kind, data

    def _oldest(self) -> tuple[int, str, str] | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT id, kind, body FROM spool ORDER BY id LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1], row[2])

    async def remove(self, entry_id: int) -> None:
        """Drop an entry the database has committed."""
        await self._call(self._remove, entry_id)

    def _remove(self, entry_id: int) -> None:
        assert self._conn is not None
        removed = self._conn.execute("DELETE FROM spool WHERE id = ?", (entry_id,)).rowcount
        self.pending -= removed
