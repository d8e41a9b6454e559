"""The telemetry configuration file (``config/telemetry.yaml``): tags and connectors.

::

    tags:
      - tag: CORE/ROP-TRAIN-1/R-101/melt_temp
        kind: number            # number | boolean | text
        uom: degC
        equipment: R-101        # the unit whose signal it is
      - tag: CORE/CR-FIB/temperature
        room: CR-FIB            # a cleanroom condition
    connectors:
      - name: plant-opcua
        kind: opcua             # an installed connector (entry point mes.connectors)
        options: {...}          # that connector's own configuration

Validated at start; an error names its YAML path (``connectors[1].options.endpoint``,
``tags[3].kind``). Tags are registered in ``telemetry_tag`` by name; a sample of a tag that is
not registered is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select

from connectors.base import Connector, ConnectorConfigError
from connectors.host import ConnectorSpec, build_specs, yaml_path
from mes.clock import utc_now
from mes.db import Database
from mes.models import Equipment, EquipmentStatus, TagKind, TagRole
from mes.telemetry.store import TAG, upsert_tags_stmt

EQUIPMENT: Any = Equipment.__table__  # type: ignore[attr-defined]


TAG_PATTERN = r"^[A-Za-z0-9_.:/#\- ]+$"
"""What a tag name may contain (the equipment path, ``/`` between levels, and the signal)."""


class TelemetryConfigError(ValueError):
    """The telemetry file is invalid; the message names the YAML path."""


class TagSpec(BaseModel):
    """One tag of the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str = Field(min_length=1, max_length=200, pattern=TAG_PATTERN)
    kind: TagKind = TagKind.number
    uom: str | None = Field(default=None, max_length=20)
    equipment: str | None = Field(default=None, max_length=40)
    room: str | None = Field(default=None, max_length=40)
    description: str | None = Field(default=None, max_length=500)
    alert_low: float | None = Field(default=None, allow_inf_nan=False)
    alert_high: float | None = Field(default=None, allow_inf_nan=False)
    action_low: float | None = Field(default=None, allow_inf_nan=False)
    action_high: float | None = Field(default=None, allow_inf_nan=False)
    alarm_delay_s: float = Field(default=0.0, ge=0, le=3600)
    hysteresis: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    role: TagRole | None = None
    states: dict[str, EquipmentStatus] | None = None
    ideal_cycle_s: float | None = Field(default=None, gt=0, le=86400)
    raw_retention_days: int | None = Field(default=None, ge=1, le=36500)

    @model_validator(mode="after")
    def _ordered_limits(self) -> TagSpec:
        known = [
            (name, value)
            for name in ("action_low", "alert_low", "alert_high", "action_high")
            if (value := getattr(self, name)) is not None
        ]
        for (low_name, low), (high_name, high) in itertools.pairwise(known):
            if low > high:
                raise ValueError(f"{low_name} ({low}) must not exceed {high_name} ({high})")
        if known and self.kind != TagKind.number:
            raise ValueError("limits apply to number tags only")
        if self.role is not None and not self.equipment:
            raise ValueError(f"a tag with role {self.role} names its equipment")
        if (self.role == TagRole.equipment_state) != bool(self.states):
            raise ValueError("states (reported value -> unit status) go with role equipment_state")
        if self.role in (TagRole.good_count, TagRole.reject_count) and self.kind != TagKind.number:
            raise ValueError(f"a {self.role} tag is a number")
        if self.ideal_cycle_s is not None and self.role != TagRole.good_count:
            raise ValueError("ideal_cycle_s goes with role good_count")
        if self.raw_retention_days is not None and self.room is not None:
            raise ValueError(
                "a room condition belongs to production records (PR-5): its raw values are kept"
            )
        return self


class TelemetryConfig(BaseModel):
    """The whole file: the tag registry and the connectors that feed it."""

    tags: list[TagSpec] = Field(default_factory=list)
    connectors: list[ConnectorSpec] = Field(default_factory=list)

    model_config = ConfigDict(arbitrary_types_allowed=True)


def parse_config(
    data: Mapping[str, Any],
    *,
    kinds: Mapping[str, type[Connector]] | None = None,
    where: str = "telemetry",
) -> TelemetryConfig:
    """Validate a loaded telemetry document."""
    unknown = set(data) - {"tags", "connectors"}
    if unknown:
        raise TelemetryConfigError(f"{where}: unknown keys {sorted(unknown)}")
    tags: list[TagSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(data.get("tags") or []):
        try:
            spec = TagSpec.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = yaml_path(first["loc"])
            raise TelemetryConfigError(f"{where}: tags[{index}].{loc}: {first['msg']}") from exc
        if spec.tag in seen:
            raise TelemetryConfigError(f"{where}: tags[{index}].tag: {spec.tag!r} listed twice")
        seen.add(spec.tag)
        tags.append(spec)
    try:
        connectors = build_specs(data.get("connectors") or [], kinds)
    except ConnectorConfigError as exc:
        raise TelemetryConfigError(f"{where}: {exc}") from exc
    return TelemetryConfig(tags=tags, connectors=connectors)


def load_config(path: Path, **kwargs: Any) -> TelemetryConfig:
    """Read and validate the telemetry file; a missing file is an empty configuration."""
    if not path.is_file():
        return TelemetryConfig()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise TelemetryConfigError(f"{path}: top level must be a mapping")
    return parse_config(data, where=str(path), **kwargs)


async def register_tags(db: Database, tags: list[TagSpec]) -> dict[str, int]:
    """Register ``tags`` (new ones created, attributes updated; none removed: stored samples
    keep their tag). The equipment and rooms they name must exist. Returns name -> id."""
    async with db.engine.begin() as conn:
        codes = {t.equipment for t in tags if t.equipment} | {t.room for t in tags if t.room}
        if codes:
            known = set(
                await conn.scalars(select(EQUIPMENT.c.code).where(EQUIPMENT.c.code.in_(codes)))
            )
            for index, spec in enumerate(tags):
                for key, code in (("equipment", spec.equipment), ("room", spec.room)):
                    if code and code not in known:
                        raise TelemetryConfigError(
                            f"tags[{index}].{key}: no equipment {code!r} in the plant model"
                        )
        if tags:
            now = utc_now()
            await conn.execute(
                upsert_tags_stmt(db.dialect),
                [
                    {
                        "tag": t.tag,
                        "kind": t.kind.value,
                        "uom": t.uom,
                        "equipment_code": t.equipment,
                        "room_code": t.room,
                        "description": t.description,
                        "alert_low": t.alert_low,
                        "alert_high": t.alert_high,
                        "action_low": t.action_low,
                        "action_high": t.action_high,
                        "alarm_delay_s": t.alarm_delay_s,
                        "hysteresis": t.hysteresis,
                        "role": t.role.value if t.role else None,
                        "states": {k: v.value for k, v in t.states.items()} if t.states else None,
                        "ideal_cycle_s": t.ideal_cycle_s,
                        "raw_retention_days": t.raw_retention_days,
                        "created_at": now,
                    }
                    for t in tags
                ],
            )
        rows = await conn.execute(select(TAG.c.tag, TAG.c.id))
        return {str(name): int(tag_id) for name, tag_id in rows}
