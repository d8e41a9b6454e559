"""Harness for the OPC UA connector tests: a real asyncua server on a free loopback port and
an in-memory stand-in for the MES side of ``ConnectorContext``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.common.node import Node
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import NodeData
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectors.base import ConnectorContext, Gap, Observation, Rejected
from connectors.opcua.config import OpcUaConfig
from connectors.opcua.connector import OpcUaConnector

WAIT_S = 20.0
NAMESPACE = "urn:mes:test:plant"
SERVER_URI = "urn:mes:test:plant-server"
CLIENT_URI = "urn:mes:opcua-client"
USERNAME, PASSWORD = "mes", "s3cret-line-7"
LIMIT = 100.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UtcClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Sink:
    """What the MES would store: every emitted batch, gap and rejected payload."""

    observations: list[Observation] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    emit_calls: int = 0

    async def emit(self, batch: Any) -> None:
        self.emit_calls += 1
        self.observations.extend(batch)

    async def report_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)

    def values(self, tag: str) -> list[Any]:
        return [obs.value for obs in self.observations if obs.tag == tag]

    def last(self, tag: str) -> Observation | None:
        found = [obs for obs in self.observations if obs.tag == tag]
        return found[-1] if found else None


def make_ctx(
    config: dict[str, Any] | OpcUaConfig, sink: Sink, name: str = "R-101"
) -> ConnectorContext:
    model = config if isinstance(config, OpcUaConfig) else OpcUaConfig.model_validate(config)
    return ConnectorContext(
        name=name,
        config=model,
        emit=sink.emit,
        report_gap=sink.report_gap,
        reject=sink.reject,
        logger=logging.getLogger(f"test.opcua.{name}"),
        clock=UtcClock(),
    )


async def wait_until(
    condition: Callable[[], bool], task: asyncio.Task[None] | None = None, limit_s: float = WAIT_S
) -> None:
    """Poll ``condition``; fail early with the connector's own error if its task ended."""

    async def poll() -> None:
        while not condition():
            if task is not None and task.done():
                task.result()
                raise AssertionError("connector stopped")
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), limit_s)


@contextlib.asynccontextmanager
async def running(
    connector: OpcUaConnector, ctx: ConnectorContext
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the connector as the host would, and stop it like the host does (cancel)."""
    task = asyncio.create_task(connector.run(ctx))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PlantUsers(UserManager):
    """Anonymous sessions, plus exactly one username/password pair."""

    def get_user(
        self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None
    ) -> User | None:
        if username is None or (username, password) == (USERNAME, PASSWORD):
            return User(role=UserRole.User)
        return None


@dataclass(frozen=True)
class Pki:
    """Self-signed certificates: the server's, the client's and an unrelated one."""

    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    trusted_dir: Path


async def make_pki(root: Path) -> Pki:
    host = socket.gethostname()
    server_use = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    files = {}
    for name, uri, use in (
        ("server", SERVER_URI, server_use),
        ("client", CLIENT_URI, [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("rogue", SERVER_URI, server_use),
    ):
        key, cert = root / f"{name}-key.pem", root / f"{name}.der"
        await cert_gen.setup_self_signed_certificate(key, cert, uri, host, use, {})
        files[name] = (cert, key)
    trusted = root / "trusted"
    trusted.mkdir()
    (trusted / "server.der").write_bytes(files["server"][0].read_bytes())
    return Pki(
        server_cert=files["server"][0],
        server_key=files["server"][1],
        client_cert=files["client"][0],
        client_key=files["client"][1],
        rogue_cert=files["rogue"][0],
        trusted_dir=trusted,
    )


@dataclass
class Plant:
    """A running asyncua server with a small reactor address space."""

    server: Server
    url: str
    ns: int
    nodes: dict[str, Node]
    types: dict[str, ua.VariantType]
    port: int
    pki: Pki | None

    def node_id(self, name: str) -> str:
        node_id: str = self.nodes[name].nodeid.to_string()
        return node_id

    async def write(self, name: str, value: Any, **data_value: Any) -> None:
        """Change a variable as the PLC would (``data_value``: StatusCode, timestamps)."""
        variant = ua.Variant(value, self.types[name])
        await self.server.write_attribute_value(
            self.nodes[name].nodeid, ua.DataValue(Value=variant, **data_value)
        )

    async def stop(self) -> None:
        await self.server.stop()

    async def restart(self) -> None:
        """Stop, then start a brand-new server (no sessions, no subscriptions) on the port."""
        await self.stop()
        fresh = await start_plant(self.port, self.pki)
        self.server, self.nodes = fresh.server, fresh.nodes


def _clamp(node: NodeData, attr: ua.AttributeIds, value: ua.DataValue) -> None:
    """A PLC that silently limits its setpoint: accepts the write, stores at most LIMIT."""
    assert value.Value is not None
    clamped = min(float(value.Value.Value), LIMIT)
    node.attributes[attr].value = ua.DataValue(
        Value=ua.Variant(clamped, ua.VariantType.Double),
        SourceTimestamp=datetime.now(UTC),
        ServerTimestamp=datetime.now(UTC),
    )


async def start_plant(port: int, pki: Pki | None = None) -> Plant:
    """Start a server at ``opc.tcp://127.0.0.1:port`` with the reactor R-101.

    With ``pki`` it also offers Basic256Sha256/SignAndEncrypt and one user login.
    """
    server = Server(user_manager=PlantUsers())
    await server.init()
    url = f"opc.tcp://127.0.0.1:{port}/"
    server.set_endpoint(url)
    server.set_server_name("MES test plant")
    await server.set_application_uri(SERVER_URI)
    server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
    if pki is not None:
        server.set_security_policy(
            [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        )
        await server.load_certificate(pki.server_cert)
        await server.load_private_key(pki.server_key)
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE)
    reactor = await server.nodes.objects.add_object(ua.NodeId("R-101", ns), "R-101")
    specs: list[tuple[str, ua.NodeId, Any, ua.VariantType]] = [
        ("MeltTemp", ua.NodeId("R-101.MeltTemp", ns), 180.0, ua.VariantType.Double),
        ("Pressure", ua.NodeId("R-101.Pressure", ns), 1.0, ua.VariantType.Double),
        ("Running", ua.NodeId("R-101.Running", ns), True, ua.VariantType.Boolean),
        ("Batch", ua.NodeId("R-101.Batch", ns), "B-0001", ua.VariantType.String),
        ("Counter", ua.NodeId(5, ns), 0, ua.VariantType.UInt32),
        ("SetTemp", ua.NodeId("R-101.SetTemp", ns), 170.0, ua.VariantType.Double),
        ("Speed", ua.NodeId("R-101.Speed", ns), 100, ua.VariantType.Int16),
        ("Limited", ua.NodeId("R-101.Limited", ns), 50.0, ua.VariantType.Double),
        ("ReadOnly", ua.NodeId("R-101.ReadOnly", ns), 1.0, ua.VariantType.Double),
    ]
    nodes: dict[str, Node] = {}
    for name, node_id, value, vtype in specs:
        node = await reactor.add_variable(node_id, name, ua.Variant(value, vtype))
        if name in ("SetTemp", "Speed", "Limited"):
            await node.set_writable()
        nodes[name] = node
    server.set_attribute_value_setter(nodes["Limited"].nodeid, _clamp)
    await server.start()
    types = {name: vtype for name, _, _, vtype in specs}
    return Plant(server, url, ns, nodes, types, port, pki)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return await make_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def plant(pki: Pki) -> AsyncIterator[Plant]:
    """One server for the whole package: starting one costs seconds.

    ``Plant.restart`` swaps in a fresh server on the same port; later tests use that one.
    """
    started = await start_plant(free_port(), pki)
    yield started
    await started.stop()
