"""OPC UA connector: subscribes to PLC and controller variables and writes recipe setpoints.

Registered as the ``opcua`` entry point of ``mes.connectors``; the MES reaches it only
through ``connectors.base``. ``browse`` and ``render_nodes_yaml`` draft a config from a
live server.
"""

from connectors.opcua.browse import BrowsedNode, browse, render_nodes_yaml
from connectors.opcua.config import OpcUaConfig
from connectors.opcua.connector import (
    OpcUaConnector,
    SetpointError,
    SetpointNotConfirmed,
    SetpointRejected,
    UnknownSetpoint,
)

__all__ = [
    "BrowsedNode",
    "OpcUaConfig",
    "OpcUaConnector",
    "SetpointError",
    "SetpointNotConfirmed",
    "SetpointRejected",
    "UnknownSetpoint",
    "browse",
    "render_nodes_yaml",
]
