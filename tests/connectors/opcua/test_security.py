"""Basic256Sha256 SignAndEncrypt with a user login and a validated server certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.base import ConnectorAuthError, ConnectorConfigError
from connectors.opcua.browse import browse
from connectors.opcua.config import SecurityConfig
from connectors.opcua.connector import OpcUaConnector
from tests.connectors.opcua.conftest import (
    PASSWORD,
    USERNAME,
    Pki,
    Plant,
    Sink,
    make_ctx,
    running,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")


def secure_config(
    plant: Plant,
    pki: Pki,
    *,
    trusted: Path | None = None,
    password: str = PASSWORD,
    **security: Any,
) -> dict[str, Any]:
    return {
        "endpoint": plant.url,
        "publishing_interval_ms": 100,
        "username": USERNAME,
        "password": password,
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": str(pki.client_cert),
            "private_key": str(pki.client_key),
            "trusted": str(trusted or pki.trusted_dir),
            **security,
        },
        "nodes": [{"node_id": plant.node_id("MeltTemp"), "tag": "MeltTemp"}],
    }


async def test_trusted_server_and_good_login_receive_data(plant: Plant, pki: Pki) -> None:
    sink = Sink()
    async with running(OpcUaConnector(), make_ctx(secure_config(plant, pki), sink)) as task:
        await wait_until(lambda: bool(sink.values("MeltTemp")), task)
    assert sink.values("MeltTemp")[0] == 180.0


async def test_trusted_certificate_may_be_a_single_file(plant: Plant, pki: Pki) -> None:
    sink = Sink()
    cfg = secure_config(plant, pki, trusted=pki.server_cert)
    async with running(OpcUaConnector(), make_ctx(cfg, sink)) as task:
        await wait_until(lambda: bool(sink.values("MeltTemp")), task)


async def test_wrong_password_is_an_auth_error(plant: Plant, pki: Pki) -> None:
    ctx = make_ctx(secure_config(plant, pki, password="not-the-password"), Sink())
    with pytest.raises(ConnectorAuthError, match="BadUserAccessDenied"):
        await OpcUaConnector().run(ctx)


async def test_untrusted_server_certificate_is_refused(plant: Plant, pki: Pki) -> None:
    ctx = make_ctx(secure_config(plant, pki, trusted=pki.rogue_cert), Sink())
    with pytest.raises(ConnectorAuthError, match="BadCertificateUntrusted"):
        await OpcUaConnector().run(ctx)


async def test_mode_the_server_does_not_offer_is_a_config_error(plant: Plant, pki: Pki) -> None:
    ctx = make_ctx(secure_config(plant, pki, mode="Sign"), Sink())
    with pytest.raises(ConnectorConfigError, match="security"):
        await OpcUaConnector().run(ctx)


async def test_missing_key_file_is_a_config_error(plant: Plant, pki: Pki, tmp_path: Path) -> None:
    ctx = make_ctx(secure_config(plant, pki, private_key=str(tmp_path / "nope.pem")), Sink())
    with pytest.raises(ConnectorConfigError, match=r"security\.private_key"):
        await OpcUaConnector().run(ctx)


async def test_browse_over_a_secure_channel(plant: Plant, pki: Pki) -> None:
    security = SecurityConfig(
        policy="Basic256Sha256",
        certificate=pki.client_cert,
        private_key=pki.client_key,
        trusted=pki.trusted_dir,
    )
    found = await browse(plant.url, security=security, username=USERNAME, password=PASSWORD)
    assert plant.node_id("MeltTemp") in {node.node_id for node in found}
    with pytest.raises(ConnectorAuthError):
        await browse(
            plant.url,
            security=security.model_copy(update={"trusted": pki.rogue_cert}),
            username=USERNAME,
            password=PASSWORD,
        )
