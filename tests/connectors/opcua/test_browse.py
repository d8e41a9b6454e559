"""Browsing a live server and drafting the ``nodes:`` section of a config."""

from __future__ import annotations

import pytest
import yaml

from connectors.base import ConnectorConfigError, ConnectorNotReady
from connectors.opcua.browse import BrowsedNode, browse, render_nodes_yaml
from connectors.opcua.config import OpcUaConfig
from tests.connectors.opcua.conftest import Plant, free_port

in_package_loop = pytest.mark.asyncio(loop_scope="package")


@in_package_loop
async def test_browse_finds_the_reactor_variables(plant: Plant) -> None:
    found = await browse(plant.url)
    by_id = {node.node_id: node for node in found}
    melt = by_id[plant.node_id("MeltTemp")]
    assert melt == BrowsedNode(
        node_id="ns=2;s=R-101.MeltTemp",
        path=("R-101", "MeltTemp"),
        display_name="MeltTemp",
        node_class="Variable",
        data_type="Double",
    )
    assert by_id["ns=2;i=5"].data_type == "UInt32"
    assert by_id["ns=2;s=R-101.Running"].data_type == "Boolean"
    assert by_id["ns=2;s=R-101"].node_class == "Object"
    assert all(not node.node_id.startswith("i=") for node in found)


@in_package_loop
async def test_browse_respects_depth_and_root(plant: Plant) -> None:
    top = await browse(plant.url, max_depth=1)
    assert [node.node_id for node in top] == ["ns=2;s=R-101"]
    below = await browse(plant.url, root="ns=2;s=R-101", max_depth=1)
    assert {node.path for node in below} >= {("MeltTemp",), ("Speed",)}


@in_package_loop
async def test_rendered_yaml_is_a_valid_nodes_section(plant: Plant) -> None:
    found = await browse(plant.url)
    text = render_nodes_yaml(found, sampling_interval_ms=500)
    assert '  - node_id: "ns=2;s=R-101.MeltTemp"  # Double\n' in text
    nodes = yaml.safe_load(text)["nodes"]
    config = OpcUaConfig.model_validate({"endpoint": plant.url, "nodes": nodes})
    tags = {node.tag: node for node in config.nodes}
    assert tags["R-101.MeltTemp"].node_id == "ns=2;s=R-101.MeltTemp"
    assert tags["R-101.MeltTemp"].sampling_interval_ms == 500
    assert "R-101" not in tags


def test_rendering_makes_tags_unique_and_handles_nothing() -> None:
    twins = [
        BrowsedNode("ns=2;i=1", ("A", "T"), "T", "Variable", "Double"),
        BrowsedNode("ns=3;i=1", ("A", "T"), "T", "Variable", None),
    ]
    nodes = yaml.safe_load(render_nodes_yaml(twins))["nodes"]
    assert [node["tag"] for node in nodes] == ["A.T", "A.T~2"]
    assert yaml.safe_load(render_nodes_yaml([])) == {"nodes": []}


@in_package_loop
async def test_browse_unreachable_is_not_ready() -> None:
    with pytest.raises(ConnectorNotReady):
        await browse(f"opc.tcp://127.0.0.1:{free_port()}/")


@in_package_loop
async def test_browse_arguments_are_checked(plant: Plant) -> None:
    with pytest.raises(ConnectorConfigError, match=r"opc\.tcp"):
        await browse("http://127.0.0.1:4840")
    with pytest.raises(ConnectorConfigError, match="browse"):
        await browse(plant.url, root="R-101/MeltTemp")
    with pytest.raises(ConnectorConfigError, match=r"root ns=2;s=NoSuchFolder: BadNodeId"):
        await browse(plant.url, root="ns=2;s=NoSuchFolder")
