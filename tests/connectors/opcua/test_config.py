"""Validation of the ``opcua`` config section: defaults, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from connectors.base import ConnectorConfigError
from connectors.opcua.config import NodeConfig, OpcUaConfig, default_queue_size, parse_config

ENDPOINT = "opc.tcp://plc-r101.plant.local:4840"


def node(**fields: Any) -> dict[str, Any]:
    return {"node_id": "ns=2;s=R-101.MeltTemp", "tag": "R-101.MeltTemp", **fields}


def test_defaults_bridge_a_minute_of_samples() -> None:
    config = parse_config(
        {"endpoint": ENDPOINT, "nodes": [node(), node(tag="b", node_id="ns=2;i=5")]}
    )
    melt = config.nodes[0]
    assert melt.sampling_interval_ms == 1000
    assert melt.effective_queue_size == 60
    assert melt.deadband is None
    assert config.security.policy == "None"
    assert config.lifetime_count >= 3 * config.keepalive_count
    assert default_queue_size(100) == 600
    assert default_queue_size(250) == 240
    assert default_queue_size(7000) == 9
    assert default_queue_size(120_000) == 1
    assert NodeConfig.model_validate(node(queue_size=5)).effective_queue_size == 5


def test_deadband_forms() -> None:
    assert NodeConfig.model_validate(node(deadband="none")).deadband is None
    absolute = NodeConfig.model_validate(node(deadband={"type": "absolute", "value": 0.5}))
    assert absolute.deadband is not None
    assert (absolute.deadband.type, absolute.deadband.value) == ("absolute", 0.5)
    with pytest.raises(ConnectorConfigError, match="at most 100"):
        parse_config(
            {"endpoint": ENDPOINT, "nodes": [node(deadband={"type": "percent", "value": 150})]}
        )


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"endpoint": "http://plc:4840"}, "endpoint"),
        ({"endpoint": "opc.tcp://plc"}, "endpoint"),
        ({"endpoint": "opc.tcp://user:pw@plc:4840"}, "endpoint"),
        ({"endpoint": ENDPOINT, "nodes": [node(), node(node_id="R-101/Temp")]}, "nodes[1].node_id"),
        (
            {"endpoint": ENDPOINT, "nodes": [node(sampling_interval_ms=0)]},
            "nodes[0].sampling_interval_ms",
        ),
        ({"endpoint": ENDPOINT, "nodes": [node(queue_size=0)]}, "nodes[0].queue_size"),
        ({"endpoint": ENDPOINT, "nodes": [node(colour="red")]}, "nodes[0].colour"),
        ({"endpoint": ENDPOINT, "nodes": [node(), node()]}, "nodes[1].tag"),
        (
            {
                "endpoint": ENDPOINT,
                "setpoints": [{"tag": "t", "node_id": "ns=2;i=1", "variant_type": "Blob"}],
            },
            "setpoints[0].variant_type",
        ),
        ({"endpoint": ENDPOINT, "username": "mes"}, "username and password"),
        ({"endpoint": ENDPOINT, "username": "mes", "password": "x"}, "password login"),
        ({"endpoint": ENDPOINT, "security": {"policy": "Basic256Sha256"}}, "security: "),
        ({"endpoint": ENDPOINT, "security": {"policy": "Basic128Rsa15"}}, "security.policy"),
        ({"endpoint": ENDPOINT, "keepalive_count": 10, "lifetime_count": 20}, "lifetime_count"),
    ],
)
def test_errors_name_the_field(data: dict[str, Any], path: str) -> None:
    with pytest.raises(ConnectorConfigError) as caught:
        parse_config(data)
    assert path in str(caught.value)


def test_models_are_revalidated() -> None:
    unchecked = OpcUaConfig.model_construct(endpoint="http://nowhere")
    with pytest.raises(ConnectorConfigError, match="endpoint"):
        parse_config(unchecked)

    class Other(BaseModel):
        endpoint: str = ENDPOINT

    assert parse_config(Other()).endpoint == ENDPOINT
    secret = parse_config(
        {
            "endpoint": ENDPOINT,
            "username": "mes",
            "password": "pw",
            "security": {
                "policy": "Basic256Sha256",
                "certificate": "c.der",
                "private_key": "k.pem",
                "trusted": "pki/trusted",
            },
        }
    )
    assert "pw" not in repr(secret)
    assert parse_config(secret).password == secret.password
