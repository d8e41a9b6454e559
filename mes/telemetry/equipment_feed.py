"""A unit's status from its own state signal (a tag with role ``equipment_state``).

After each stored batch the newest value of each state tag is mapped through the tag's
``states`` table (``"RUN" -> running``, ``"2" -> down``) and applied through the equipment
service: audited as ``system:telemetry`` with the signal and its time as the reason, and a
unit going down marks its scheduled operations for rescheduling like an operator's report.
Telemetry moves a unit only among idle, running and down; a unit in cleaning or maintenance
stays there until people end it (the refused change is logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

import mes.scheduling.service
import mes.work.dispatch  # noqa: F401  (and marks its planned operations for rescheduling)
from mes.context import AppContext
from mes.equipment import service as equipment
from mes.errors import MesError
from mes.models import EquipmentStatus, TagRole
from mes.principal import system_principal
from mes.telemetry.store import TAG, SampleRow, newest_per_tag

log = logging.getLogger(__name__)

PRINCIPAL = system_principal("telemetry")


def reported(row: SampleRow) -> str | None:
    """A state value as the ``states`` table keys it: text as sent, a whole number without a
    fraction (``2.0`` -> ``"2"``)."""
    if row.value_text is not None:
        return row.value_text
    if row.value_num is None:
        return None
    return str(int(row.value_num)) if row.value_num.is_integer() else str(row.value_num)


class EquipmentFeed:
    """Applies state signals to unit status."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.tags: dict[int, tuple[str, str, dict[str, str]]] = {}
        self.applied: dict[str, EquipmentStatus] = {}
        self._refused: set[tuple[str, str]] = set()

    async def start(self) -> None:
        """Load the state tags (id -> tag, unit, states)."""
        async with self.ctx.db.engine.connect() as conn:
            rows = await conn.execute(
                select(TAG.c.id, TAG.c.tag, TAG.c.equipment_code, TAG.c.states).where(
                    TAG.c.role == TagRole.equipment_state
                )
            )
            self.tags = {r.id: (r.tag, r.equipment_code, r.states or {}) for r in rows}

    async def process(self, rows: Sequence[SampleRow]) -> None:
        """Apply the newest good state value of each state tag in ``rows``."""
        if not self.tags:
            return
        for row in newest_per_tag([r for r in rows if r.tag_id in self.tags]):
            if row.quality != "good":
                continue
            tag, unit, states = self.tags[row.tag_id]
            raw = reported(row)
            target = states.get(raw) if raw is not None else None
            if target is None:
                self._once(unit, f"value {raw!r}", f"{tag} reported {raw!r}, not in its states")
                continue
            status = EquipmentStatus(target)
            if self.applied.get(unit) == status:
                continue
            await self._apply(tag, unit, status, raw, row)

    async def _apply(
        self, tag: str, unit: str, status: EquipmentStatus, raw: Any, row: SampleRow
    ) -> None:
        try:
            async with self.ctx.db.sessionmaker() as session, session.begin():
                current = await equipment.get(session, unit)
                if current.status == status:
                    self.applied[unit] = status
                    return
                await equipment.change_status(
                    self.ctx,
                    session,
                    PRINCIPAL,
                    unit,
                    status,
                    f"state signal {tag} = {raw} at {row.source_ts.isoformat()}",
                    None,
                    by_telemetry=True,
                )
        except MesError as exc:
            self._once(unit, str(status), f"{unit} -> {status} from {tag} not applied: {exc}")
            return
        self.applied[unit] = status
        log.info("%s is %s (state signal %s = %s)", unit, status, tag, raw)

    def _once(self, unit: str, what: str, message: str) -> None:
        if (unit, what) not in self._refused:
            self._refused.add((unit, what))
            log.warning(message)
