"""Recipe download: the targets of a running operation's parameters written to its unit's
setpoints over OPC UA, each read back, and the outcome audited.

A parameter names the setpoint with ``setpoint_tag`` (a tag of the unit the master was written
for; on another eligible unit, that unit's tag with the same signal name is used). The tag must
be one of the ``setpoints`` of an OPC UA connector in the telemetry file, which gives the node
and the server. The API process opens its own short session for the download, so it does not
depend on the ingest process being up.

The audit entry (operation, action ``setpoint_download``) lists every setpoint with the value
written and the value read back, in the request's transaction; a setpoint that could not be
confirmed makes the request fail (409 naming it) after the entry of the attempt is committed,
because the unit may hold some of the new values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from asyncua import ua
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from connectors.base import ConnectorError
from connectors.opcua.client import connect_client, write_confirmed
from connectors.opcua.config import OpcUaConfig
from mes.audit import service as audit
from mes.context import AppContext
from mes.errors import Conflict, InvalidTransition
from mes.models import Equipment, OperationStatus
from mes.principal import Principal
from mes.telemetry.config import TelemetryConfig, load_config
from mes.telemetry.context import tag_on_unit
from mes.telemetry.store import TAG
from mes.work import execution

log = logging.getLogger(__name__)

RULE = "PROC-1"


@dataclass(frozen=True)
class Download:
    parameter: str
    tag: str
    value: Decimal
    uom: str
    connector: str
    node_id: str
    variant_type: str | None


@cache
def _config(path: Path, stamp: float) -> TelemetryConfig:
    return load_config(path)


def telemetry_config(ctx: AppContext) -> TelemetryConfig:
    """The telemetry file, read again when it changes."""
    path = ctx.settings.telemetry_file
    return _config(path, path.stat().st_mtime if path.exists() else 0.0)


def _setpoints(config: TelemetryConfig) -> dict[str, tuple[str, OpcUaConfig, Any]]:
    """Every OPC UA setpoint by tag: (connector name, its config, the setpoint entry)."""
    found: dict[str, tuple[str, OpcUaConfig, Any]] = {}
    for spec in config.connectors:
        if isinstance(spec.config, OpcUaConfig):
            for setpoint in spec.config.setpoints:
                found[setpoint.tag] = (spec.name, spec.config, setpoint)
    return found


async def _plan(
    ctx: AppContext, session: AsyncSession, unit: str | None, parameters: list[dict[str, Any]]
) -> list[Download]:
    wanted = [p for p in parameters if p.get("setpoint_tag")]
    if not wanted:
        raise InvalidTransition("the operation's parameters name no setpoints to download")
    rows = await session.execute(
        select(TAG.c.equipment_code, TAG.c.tag).where(TAG.c.equipment_code.is_not(None))
    )
    unit_tags: dict[str, set[str]] = {}
    for code, tag in rows:
        unit_tags.setdefault(code, set()).add(tag)
    setpoints = _setpoints(telemetry_config(ctx))
    plan: list[Download] = []
    for p in wanted:
        tag = tag_on_unit(p["setpoint_tag"], unit, unit_tags)
        if tag not in setpoints:
            raise InvalidTransition(
                f"setpoint {tag} of parameter {p['name']} is not a setpoint of any OPC UA "
                f"connector in {ctx.settings.telemetry_file}",
                rule=RULE,
            )
        name, _, setpoint = setpoints[tag]
        plan.append(
            Download(
                parameter=p["name"],
                tag=tag,
                value=Decimal(str(p["target"])),
                uom=p["uom"],
                connector=name,
                node_id=setpoint.node_id,
                variant_type=setpoint.variant_type,
            )
        )
    return plan


async def _write(plan: list[Download], config: OpcUaConfig) -> list[dict[str, Any]]:
    """Write and read back each setpoint of one server; stops at the first failure."""
    results: list[dict[str, Any]] = []
    client = await connect_client(
        config.endpoint,
        config.security,
        config.username,
        config.password.get_secret_value() if config.password else None,
        timeout_s=config.request_timeout_s,
    )
    try:
        for item in plan:
            variant = getattr(ua.VariantType, item.variant_type) if item.variant_type else None
            try:
                read_back, _ = await write_confirmed(
                    client,
                    ua.NodeId.from_string(item.node_id),
                    float(item.value),
                    variant,
                    item.tag,
                )
            except ConnectorError as exc:
                results.append(_result(item, None, str(exc)))
                break
            results.append(_result(item, read_back, None))
    finally:
        await client.disconnect()
    return results


def _result(item: Download, read_back: Any, error: str | None) -> dict[str, Any]:
    return {
        "parameter": item.parameter,
        "tag": item.tag,
        "value": str(item.value),
        "uom": item.uom,
        "read_back": None if read_back is None else str(read_back),
        "confirmed": error is None,
        "error": error,
    }


async def download(
    ctx: AppContext, session: AsyncSession, principal: Principal, ident: str
) -> dict[str, Any]:
    """Download the targets of a running operation to its unit (see the module docstring)."""
    op, order = await execution.get(session, ident)
    status = OperationStatus(op.status)
    if status != OperationStatus.running:
        raise InvalidTransition(
            f"operation {order.number}/{op.seq} is {status}; setpoints are downloaded while "
            "it runs",
            current_status=str(status),
        )
    ex = await execution.execution_of(session, op)
    unit = await session.get(Equipment, ex.equipment_id)
    spec = next(s for s in order.snapshot["operations"] if s["seq"] == op.seq)
    plan = await _plan(ctx, session, unit.code if unit else None, spec.get("parameters", []))
    results: list[dict[str, Any]] = []
    by_connector: dict[str, list[Download]] = {}
    for item in plan:
        by_connector.setdefault(item.connector, []).append(item)
    setpoints = _setpoints(telemetry_config(ctx))
    failure: str | None = None
    for name, items in by_connector.items():
        config = setpoints[items[0].tag][1]
        try:
            written = await _write(items, config)
        except ConnectorError as exc:
            written = [_result(items[0], None, f"{name}: {exc}")]
        results += written
        failed = next((r for r in written if not r["confirmed"]), None)
        if failed is not None:
            failure = failed["error"]
            break
    await audit.record(
        session,
        principal,
        action="setpoint_download",
        entity_type="operation",
        entity_id=str(op.id),
        entity_version=op.version,
        changes=[{"field": r["tag"], "old": None, "new": r} for r in results],
        reason=f"recipe download for {order.number}/{op.seq}"
        + (f": failed, {failure}" if failure else ""),
    )
    if failure is not None:
        log.warning("recipe download %s/%s failed: %s", order.number, op.seq, failure)
        raise Conflict(
            f"setpoint download for {order.number}/{op.seq} not confirmed: {failure}",
            rule=RULE,
            persist=True,
            results=results,
        )
    return {"work_order": order.number, "operation_seq": op.seq, "setpoints": results}
