"""The simulator's OPC UA server: the batch and line units as a real asyncua address space.

The MES's OPC UA connector must be tested against a real server, with the quirks of real
ones: source timestamps taken by the device, Bad status codes while a sensor is out, and
setpoints that the device may refuse. So:

* namespace ``urn:bmb:simulator`` (index 2); ``Objects/<site>/<work center>/<unit>`` with
  one variable per signal, NodeId ``ns=2;s=<unit>.<signal>`` (see ``layout.node_id``);
* every update carries the tick's wall-clock time as SourceTimestamp; a dropout writes
  ``BadSensorFailure`` (asyncua then serves a null value);
* writable setpoints (``temp_sp``, ``zoneN_sp``) are validated by the unit model *before*
  the address space changes: an out-of-range or non-numeric write is answered
  ``BadOutOfRange`` / ``BadTypeMismatch`` and the old value stays, as a PLC would do;
  an accepted write is in force in the model at once and reads back unchanged;
* port 0 picks a free port; ``endpoint`` reports the one actually bound.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from mes.simulator.dynamics import Plant, Reading, SetpointError, SignalKind, SignalSpec
from mes.simulator.layout import NAMESPACE_INDEX, NAMESPACE_URI, node_id, opcua_endpoint

log = logging.getLogger(__name__)

BIND_ATTEMPTS = 5


def variant_type(spec: SignalSpec) -> ua.VariantType:
    """The OPC UA data type of a signal."""
    if spec.kind == SignalKind.text:
        return ua.VariantType.String
    if spec.kind == SignalKind.boolean:
        return ua.VariantType.Boolean
    return ua.VariantType.Int64 if spec.integer else ua.VariantType.Double


def _variant(spec: SignalSpec, value: object) -> ua.Variant:
    vtype = variant_type(spec)
    if vtype == ua.VariantType.Double and isinstance(value, int | float):
        value = float(value)
    elif vtype == ua.VariantType.Int64 and isinstance(value, int | float):
        value = int(value)
    return ua.Variant(value, vtype)


def status(code: int) -> ua.StatusCode:
    value: Any = code  # asyncua annotates ua.UInt32, a plain int at run time
    return ua.StatusCode(value)


def data_value(variant: ua.Variant, ts: datetime, code: int | None = None) -> ua.DataValue:
    """A value stamped with the device (source) time; a Bad ``code`` marks a dropout."""
    stamp: Any = ts  # asyncua annotates ua.DateTime, a datetime subclass; it stores datetimes
    result = status(code) if code is not None else ua.StatusCode()
    return ua.DataValue(variant, StatusCode=result, SourceTimestamp=stamp, ServerTimestamp=stamp)


WriteCheck = Callable[[ua.NodeId, ua.Variant], ua.StatusCode | None]
"""Returns a Bad status to refuse a write, or None to let it through."""
WriteDone = Callable[[ua.NodeId, ua.Variant], None]


class _GuardedAttributes(AttributeService):
    """asyncua's attribute service with a veto on value writes to setpoint nodes.

    asyncua's value setters cannot return a status code, so the check sits in front of
    the service: each write is checked, written alone, then confirmed to the model.
    """

    def __init__(
        self, aspace: AddressSpace, guarded: set[ua.NodeId], check: WriteCheck, done: WriteDone
    ) -> None:
        super().__init__(aspace)
        self._guarded, self._check, self._done = guarded, check, done

    async def write(
        self, params: ua.WriteParameters, user: User = User(role=UserRole.Admin)
    ) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            guarded = item.AttributeId == AttributeIds.Value and item.NodeId in self._guarded
            if guarded:
                variant = item.Value.Value if item.Value.Value is not None else ua.Variant()
                refused = self._check(item.NodeId, variant)
                if refused is not None:
                    results.append(refused)
                    continue
                now: Any = datetime.now(UTC)
                stamped = dataclasses.replace(item.Value, SourceTimestamp=now, ServerTimestamp=now)
                item = dataclasses.replace(item, Value=stamped)
            (status,) = await super().write(ua.WriteParameters(NodesToWrite=[item]), user)
            if guarded and status.is_good() and item.Value.Value is not None:
                self._done(item.NodeId, item.Value.Value)
            results.append(status)
        return results


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class OpcUaSimServer:
    """Serves the OPC UA units of ``plant``; call ``update`` after every plant step."""

    def __init__(self, plant: Plant, host: str = "127.0.0.1", port: int = 4840) -> None:
        self.plant, self.host, self.requested_port = plant, host, port
        self.port = port
        self.server: Server | None = None
        self.namespace_index = NAMESPACE_INDEX
        self._specs: dict[tuple[str, str], SignalSpec] = {}
        self._node_ids: dict[tuple[str, str], ua.NodeId] = {}
        self._setpoints: dict[ua.NodeId, tuple[str, str]] = {}
        self.units = [u for u in plant.units.values() if u.transport == "opcua"]

    @property
    def endpoint(self) -> str:
        """``opc.tcp://host:port/bmb/simulator`` with the port actually bound."""
        return opcua_endpoint(self.host, self.port)

    async def start(self) -> None:
        """Build the address space and listen; port 0 picks a free port (retried when
        another process takes it between the choice and the bind)."""
        attempts = BIND_ATTEMPTS if self.requested_port == 0 else 1
        for attempt in range(attempts):
            self.port = self.requested_port or _free_port(self.host)
            server = await self._build()
            try:
                await server.start()
            except OSError:
                if attempt + 1 == attempts:
                    raise
                log.info("OPC UA port %s was taken meanwhile; trying another", self.port)
                continue
            self.server = server
            log.info("OPC UA simulator listening on %s", self.endpoint)
            return

    async def _build(self) -> Server:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("BMB plant simulator")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        await server.set_application_uri("urn:bmb:simulator:server")
        idx = await server.register_namespace(NAMESPACE_URI)
        self.namespace_index = idx
        folders: dict[str, object] = {}
        objects = server.nodes.objects
        self._specs.clear()
        self._node_ids.clear()
        self._setpoints.clear()
        for unit in self.units:
            parent = objects
            path = ""
            for level in (unit.site, unit.parent):
                if level is None:
                    continue
                path = f"{path}/{level}" if path else level
                if path not in folders:
                    folder_id = ua.NodeId.from_string(f"ns={idx};s={path}")
                    folders[path] = await parent.add_folder(folder_id, f"{idx}:{level}")
                parent = folders[path]  # type: ignore[assignment]
            obj_id = ua.NodeId.from_string(f"ns={idx};s={unit.code}")
            obj = await parent.add_object(obj_id, f"{idx}:{unit.code}")
            await obj.write_attribute(
                AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(unit.name)))
            )
            values = self.plant.readings
            now = datetime.now(UTC)
            for spec in unit.signals:
                nid = ua.NodeId.from_string(node_id(unit.code, spec.name, idx))
                reading = values.get((unit.code, spec.name), Reading(None, False))
                initial = reading.value if reading.value is not None else _zero(spec)
                var = await obj.add_variable(
                    nid, f"{idx}:{spec.name}", _variant(spec, initial), variant_type(spec)
                )
                description = f"{spec.description} [{spec.uom}]" if spec.uom else spec.description
                await var.write_attribute(
                    AttributeIds.Description,
                    ua.DataValue(ua.Variant(ua.LocalizedText(description))),
                )
                if spec.kind == SignalKind.number and None not in (spec.minimum, spec.maximum):
                    await var.add_property(  # standard 0:EURange: percent deadbands work
                        ua.NodeId.from_string(f"{node_id(unit.code, spec.name, idx)}.EURange"),
                        ua.QualifiedName("EURange", 0),
                        ua.Range(spec.minimum, spec.maximum),
                        datatype=ObjectIds.Range,
                    )
                if spec.writable:
                    await var.set_writable()
                    self._setpoints[nid] = (unit.code, spec.name)
                await server.write_attribute_value(nid, data_value(_variant(spec, initial), now))
                self._specs[(unit.code, spec.name)] = spec
                self._node_ids[(unit.code, spec.name)] = nid
        server.iserver.attribute_service = _GuardedAttributes(
            server.iserver.aspace, set(self._setpoints), self._check_write, self._apply_write
        )
        return server

    def _check_write(self, nid: ua.NodeId, variant: ua.Variant) -> ua.StatusCode | None:
        code, signal = self._setpoints[nid]
        value = variant.Value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return status(StatusCodes.BadTypeMismatch)
        if not math.isfinite(float(value)):
            return status(StatusCodes.BadOutOfRange)
        try:
            self.plant.unit(code).check_setpoint(signal, value)
        except SetpointError as exc:
            log.warning("setpoint write refused: %s", exc)
            return status(StatusCodes.BadOutOfRange)
        return None

    def _apply_write(self, nid: ua.NodeId, variant: ua.Variant) -> None:
        code, signal = self._setpoints[nid]
        accepted = self.plant.write(code, signal, variant.Value)
        log.info("setpoint %s.%s = %s downloaded", code, signal, accepted)

    async def update(self, readings: Mapping[tuple[str, str], Reading], ts: datetime) -> None:
        """Write every (read-only) signal with ``ts`` as its source timestamp; setpoints
        change only through writes, so a tick never races a client's download."""
        server = self.server
        if server is None:
            return
        for key, nid in self._node_ids.items():
            spec = self._specs[key]
            if spec.writable:
                continue
            reading = readings.get(key)
            if reading is None:
                continue
            if reading.good and reading.value is not None:
                dv = data_value(_variant(spec, reading.value), ts)
            else:
                dv = data_value(ua.Variant(), ts, StatusCodes.BadSensorFailure)
            await server.write_attribute_value(nid, dv)

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()


def _zero(spec: SignalSpec) -> object:
    if spec.kind == SignalKind.text:
        return ""
    if spec.kind == SignalKind.boolean:
        return False
    return 0 if spec.integer else 0.0
