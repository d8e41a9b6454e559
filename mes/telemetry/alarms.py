"""Alarms on limits, with delay and hysteresis, and deviations from action-level excursions.

Every stored batch passes through ``AlarmEngine.process``. A tag is judged against the limits of
the parameter it supplies while an operation runs on its unit (the work order's frozen work
master), else against its own limits (a room condition). Per tag and level (alert, action):

- an excursion beyond a limit raises an alarm once it has lasted ``alarm_delay_s`` (source
  time), so a single noisy value does not;
- a raised alarm clears once the value has stood back inside by ``hysteresis`` for the same
  delay, so a value hovering at the limit does not chatter;
- values of bad or uncertain quality neither raise nor clear.

An action-level alarm raised while an operation runs opens a deviation on its work order
(PROC-2), in the same transaction as the alarm row and the deviation's audit entry. The state of
raised alarms is reloaded at start, so an alarm raised before a restart still clears.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from mes.clock import Clock
from mes.db import Database
from mes.ids import uuid7
from mes.models import (
    AlarmLevel,
    Equipment,
    Operation,
    OperationExecution,
    OperationStatus,
    TelemetryAlarm,
    WorkOrder,
)
from mes.principal import system_principal
from mes.telemetry.context import Limits, parameter_limits, tag_on_unit
from mes.telemetry.store import TAG, SampleRow
from mes.work import deviations

log = logging.getLogger(__name__)

ALARM: Any = TelemetryAlarm.__table__  # type: ignore[attr-defined]
EXECUTION: Any = OperationExecution.__table__  # type: ignore[attr-defined]
OPERATION: Any = Operation.__table__  # type: ignore[attr-defined]
ORDER: Any = WorkOrder.__table__  # type: ignore[attr-defined]
EQUIPMENT: Any = Equipment.__table__  # type: ignore[attr-defined]

PRINCIPAL = system_principal("telemetry")


@dataclass(frozen=True)
class Rule:
    """The limits a tag is judged against now, and the operation they come from."""

    tag: str
    limits: Limits
    delay: timedelta
    hysteresis: float
    uom: str | None = None
    work_order_id: uuid.UUID | None = None
    operation_id: uuid.UUID | None = None
    parameter: str | None = None
    critical: bool = False


@dataclass
class _State:
    """One tag at one level: an excursion being timed, or a raised alarm."""

    direction: str | None = None
    since: datetime | None = None
    peak: float = 0.0
    alarm_id: uuid.UUID | None = None
    clear_since: datetime | None = None
    last_ts: datetime | None = None


@dataclass
class Event:
    kind: str  # raise | clear
    rule: Rule
    level: AlarmLevel
    direction: str
    limit: float
    value: float
    peak: float
    started_at: datetime
    at: datetime
    alarm_id: uuid.UUID = field(default_factory=uuid7)


def _bounds(limits: Limits, level: AlarmLevel) -> tuple[float | None, float | None]:
    if level == AlarmLevel.action:
        return limits.action_low, limits.action_high
    return limits.alert_low, limits.alert_high


def step(state: _State, rule: Rule, level: AlarmLevel, ts: datetime, value: float) -> Event | None:
    """Advance one tag's state at one level by one good value; the event it causes, if any."""
    low, high = _bounds(rule.limits, level)
    if low is None and high is None:
        return None
    direction = (
        "high"
        if high is not None and value > high
        else ("low" if low is not None and value < low else None)
    )
    if state.alarm_id is None:
        if direction is None:
            state.direction = state.since = None
            return None
        if direction != state.direction or state.since is None:
            state.direction, state.since, state.peak = direction, ts, value
        state.peak = max(state.peak, value) if direction == "high" else min(state.peak, value)
        if ts - state.since < rule.delay:
            return None
        limit = high if direction == "high" else low
        assert limit is not None
        event = Event("raise", rule, level, direction, limit, value, state.peak, state.since, ts)
        state.alarm_id, state.clear_since = event.alarm_id, None
        return event
    limit = high if state.direction == "high" else low
    if limit is None:  # the limits changed under a raised alarm (another operation started)
        inside = True
    elif state.direction == "high":
        state.peak = max(state.peak, value)
        inside = value <= limit - rule.hysteresis
    else:
        state.peak = min(state.peak, value)
        inside = value >= limit + rule.hysteresis
    if not inside:
        state.clear_since = None
        return None
    if state.clear_since is None:
        state.clear_since = ts
    if ts - state.clear_since < rule.delay:
        return None
    event = Event(
        "clear",
        rule,
        level,
        state.direction or "high",
        limit if limit is not None else value,
        value,
        state.peak,
        state.since or ts,
        ts,
        alarm_id=state.alarm_id,
    )
    state.alarm_id = state.direction = state.since = state.clear_since = None
    return event


class AlarmEngine:
    """Judges stored values against the limits in force and keeps the alarm table."""

    def __init__(
        self, db: Database, clock: Clock, *, refresh: timedelta = timedelta(seconds=2)
    ) -> None:
        self.db = db
        self.clock = clock
        self.refresh = refresh
        self.rules: dict[int, Rule] = {}
        self.states: dict[tuple[int, AlarmLevel], _State] = {}
        self._loaded_at: datetime | None = None
        self.raised = 0
        self.cleared = 0

    async def start(self) -> None:
        """Load the rules and the alarms still raised (so that they can clear)."""
        await self._load_rules()
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(ALARM, TAG.c.id.label("tag_id"))
                .join(TAG, TAG.c.tag == ALARM.c.tag)
                .where(ALARM.c.cleared_at.is_(None))
            )
            for row in rows:
                level = AlarmLevel(row.level)
                self.states[(row.tag_id, level)] = _State(
                    direction=row.direction,
                    since=row.started_at,
                    peak=row.peak,
                    alarm_id=row.id,
                    last_ts=row.raised_at,
                )

    async def process(self, rows: Sequence[SampleRow]) -> None:
        """Judge a stored batch; write the alarms it raises or clears."""
        now = self.clock.now()
        if self._loaded_at is None or now - self._loaded_at >= self.refresh:
            await self._load_rules()
        events: list[Event] = []
        judged = [r for r in rows if r.tag_id in self.rules]
        for row in sorted(judged, key=lambda r: (r.tag_id, r.source_ts)):
            rule = self.rules[row.tag_id]
            if row.value_num is None or row.quality != "good":
                continue
            for level in (AlarmLevel.alert, AlarmLevel.action):
                state = self.states.setdefault((row.tag_id, level), _State())
                if state.last_ts is not None and row.source_ts <= state.last_ts:
                    continue  # a late value (from the spool) does not rewind the state
                state.last_ts = row.source_ts
                event = step(state, rule, level, row.source_ts, row.value_num)
                if event is not None:
                    events.append(event)
        if events:
            await self._write(events)

    async def _write(self, events: list[Event]) -> None:
        async with self.db.sessionmaker() as session, session.begin():
            for event in events:
                if event.kind == "clear":
                    await session.execute(
                        update(ALARM)
                        .where(ALARM.c.id == event.alarm_id, ALARM.c.cleared_at.is_(None))
                        .values(cleared_at=event.at, peak=event.peak, version=ALARM.c.version + 1)
                    )
                    self.cleared += 1
                    continue
                rule = event.rule
                deviation_id = None
                if event.level == AlarmLevel.action and rule.operation_id is not None:
                    deviation_id = await self._open_deviation(session, event)
                session.add(
                    TelemetryAlarm(
                        id=event.alarm_id,
                        tag=rule.tag,
                        level=event.level,
                        direction=event.direction,
                        limit_value=event.limit,
                        value=event.value,
                        peak=event.peak,
                        started_at=event.started_at,
                        raised_at=event.at,
                        work_order_id=rule.work_order_id,
                        operation_id=rule.operation_id,
                        parameter=rule.parameter,
                        deviation_id=deviation_id,
                    )
                )
                self.raised += 1
                log.warning(
                    "%s alarm %s: %s %s limit %s (value %s since %s)",
                    event.level,
                    rule.tag,
                    event.direction,
                    event.level,
                    event.limit,
                    event.value,
                    event.started_at.isoformat(),
                )

    async def _open_deviation(self, session: Any, event: Event) -> uuid.UUID | None:
        rule = event.rule
        order = await session.get(WorkOrder, rule.work_order_id)
        operation = await session.get(Operation, rule.operation_id)
        if order is None or operation is None:
            return None
        word = "above" if event.direction == "high" else "below"
        unit = f" {rule.uom}" if rule.uom else ""
        dev = await deviations.open_deviation(
            session,
            PRINCIPAL,
            kind="cpp" if rule.critical else "parameter",
            description=(
                f"PROC-2: {rule.parameter} {event.value:g}{unit} {word} its action limit "
                f"{event.limit:g}{unit} since {event.started_at.isoformat()} "
                f"(line data, tag {rule.tag}, operation {operation.seq})"
            ),
            now=self.clock.now(),
            work_order=order,
            operation=operation,
        )
        return dev.id

    async def _load_rules(self) -> None:
        """The tags' own limits, overridden by the parameters of operations running now."""
        rules: dict[int, Rule] = {}
        async with self.db.engine.connect() as conn:
            tags = list(await conn.execute(select(TAG)))
            by_name = {t.tag: t for t in tags}
            for t in tags:
                limits = Limits(t.alert_low, t.alert_high, t.action_low, t.action_high)
                if limits != Limits():
                    rules[t.id] = Rule(
                        t.tag, limits, timedelta(seconds=t.alarm_delay_s), t.hysteresis, t.uom
                    )
            unit_tags: dict[str, set[str]] = {}
            for t in tags:
                if t.equipment_code:
                    unit_tags.setdefault(t.equipment_code, set()).add(t.tag)
            running = await conn.execute(
                select(
                    OPERATION.c.id,
                    OPERATION.c.seq,
                    OPERATION.c.work_order_id,
                    ORDER.c.snapshot,
                    EQUIPMENT.c.code,
                )
                .join(EXECUTION, EXECUTION.c.operation_id == OPERATION.c.id)
                .join(ORDER, ORDER.c.id == OPERATION.c.work_order_id)
                .join(EQUIPMENT, EQUIPMENT.c.id == EXECUTION.c.equipment_id)
                .where(
                    EXECUTION.c.ended_at.is_(None),
                    OPERATION.c.status.in_([OperationStatus.running, OperationStatus.paused]),
                )
            )
            for op_id, seq, order_id, snapshot, unit in running:
                spec: dict[str, Any] = next(
                    (s for s in snapshot["operations"] if s["seq"] == seq), {}
                )
                for p in spec.get("parameters", []):
                    if not p.get("tag"):
                        continue
                    tag = by_name.get(tag_on_unit(p["tag"], unit, unit_tags))
                    if tag is None:
                        continue
                    rules[tag.id] = Rule(
                        tag.tag,
                        parameter_limits(p),
                        timedelta(seconds=tag.alarm_delay_s),
                        tag.hysteresis,
                        p.get("uom"),
                        work_order_id=order_id,
                        operation_id=op_id,
                        parameter=p["name"],
                        critical=bool(p.get("critical")),
                    )
        self.rules = rules
        self._loaded_at = self.clock.now()
