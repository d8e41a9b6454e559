"""Discovery: walk a server's address space and draft the ``nodes:`` section of a config.

Typing NodeIds by hand is where most OPC UA configs go wrong; ``mes connectors browse URL``
lists what the server really has and prints entries that validate as ``NodeConfig``. The
draft is a starting point: tags, sampling intervals and deadbands are for the engineer to
decide.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError

from connectors.base import ConnectorConfigError
from connectors.opcua.client import classify_error, connect_client
from connectors.opcua.config import SecurityConfig, check_endpoint

_FOLLOWED = ua.NodeClass.Object | ua.NodeClass.Variable


@dataclass(frozen=True, slots=True)
class BrowsedNode:
    """One object or variable found below the browse root."""

    node_id: str
    path: tuple[str, ...]
    """Browse names from the root (exclusive) down to this node."""
    display_name: str
    node_class: str
    """``Object`` or ``Variable``."""
    data_type: str | None = None
    """Name of the variable's data type (``Double``, ``Int16``, ...); None for objects."""


async def browse(
    endpoint: str,
    *,
    root: str = "i=85",
    max_depth: int = 5,
    max_nodes: int = 10_000,
    include_ns0: bool = False,
    security: SecurityConfig | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 10.0,
) -> list[BrowsedNode]:
    """Objects and variables below ``root`` (default: the Objects folder), breadth first.

    Descends through objects only (a variable's properties are not listed), at most
    ``max_depth`` levels and ``max_nodes`` nodes. Namespace 0 (the server's own diagnostics)
    is skipped unless ``include_ns0``. Raises the connector errors on connection failure.
    """
    try:
        check_endpoint(endpoint)
        start = ua.NodeId.from_string(root)
    except Exception as exc:  # asyncua's NodeId parser raises several types
        raise ConnectorConfigError(f"browse: {exc}") from exc
    client = await connect_client(
        endpoint, security or SecurityConfig(), username, password, timeout_s=timeout_s
    )
    try:
        return await _walk(client, start, max_depth, max_nodes, include_ns0)
    except (OSError, TimeoutError, UaError) as exc:
        raise classify_error(exc, endpoint) from exc
    finally:
        with contextlib.suppress(OSError, TimeoutError, UaError):
            await client.disconnect()


async def _walk(
    client: Client, root: ua.NodeId, max_depth: int, max_nodes: int, include_ns0: bool
) -> list[BrowsedNode]:
    found: list[tuple[ua.ReferenceDescription, tuple[str, ...]]] = []
    seen = {root}
    level: list[tuple[ua.NodeId, tuple[str, ...]]] = [(root, ())]
    for _ in range(max_depth):
        if not level or len(found) >= max_nodes:
            break
        following: list[tuple[ua.NodeId, tuple[str, ...]]] = []
        children = await _children(client, level, strict=not found)
        for (_, path), references in zip(level, children, strict=True):
            for ref in references:
                node_id = ref.NodeId
                if node_id in seen or (node_id.NamespaceIndex == 0 and not include_ns0):
                    continue
                seen.add(node_id)
                child_path = (*path, ref.BrowseName.Name)
                found.append((ref, child_path))
                if ref.NodeClass == ua.NodeClass.Object:
                    following.append((node_id, child_path))
        level = following
    found = found[:max_nodes]
    types = await _data_type_names(
        client, [ref.NodeId for ref, _ in found if ref.NodeClass == ua.NodeClass.Variable]
    )
    return [
        BrowsedNode(
            node_id=ref.NodeId.to_string(),
            path=path,
            display_name=ref.DisplayName.Text or ref.BrowseName.Name,
            node_class=ref.NodeClass.name,
            data_type=types.get(ref.NodeId),
        )
        for ref, path in found
    ]


async def _children(
    client: Client, level: Sequence[tuple[ua.NodeId, tuple[str, ...]]], strict: bool
) -> list[list[ua.ReferenceDescription]]:
    """Forward hierarchical references of every node in ``level``, following continuations.

    With ``strict`` (the root level) a node the server cannot browse is an error; deeper
    down it is skipped.
    """
    params = ua.BrowseParameters(
        RequestedMaxReferencesPerNode=0,
        NodesToBrowse=[
            ua.BrowseDescription(
                NodeId=node_id,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
                IncludeSubtypes=True,
                NodeClassMask=int(_FOLLOWED),
                ResultMask=int(ua.BrowseResultMask.All),
            )
            for node_id, _ in level
        ],
    )
    results = await client.uaclient.browse(params)
    children: list[list[ua.ReferenceDescription]] = []
    for (node_id, _), result in zip(level, results, strict=True):
        if strict and not result.StatusCode.is_good():
            raise ConnectorConfigError(
                f"browse: root {node_id.to_string()}: {result.StatusCode.name}"
            )
        references = list(result.References)
        point = result.ContinuationPoint
        while point:
            more = await client.uaclient.browse_next(
                ua.BrowseNextParameters(ContinuationPoints=[point])
            )
            references.extend(more[0].References)
            point = more[0].ContinuationPoint
        children.append(references)
    return children


async def _data_type_names(client: Client, variables: list[ua.NodeId]) -> dict[ua.NodeId, str]:
    names: dict[ua.NodeId, str] = {}
    for start in range(0, len(variables), 500):
        chunk = variables[start : start + 500]
        values = await client.uaclient.read_attributes(chunk, AttributeIds.DataType)
        type_ids = {
            node_id: value.Value.Value
            for node_id, value in zip(chunk, values, strict=True)
            if value.Value is not None and isinstance(value.Value.Value, ua.NodeId)
        }
        unknown = sorted({t for t in type_ids.values() if _builtin_name(t) is None}, key=str)
        custom: dict[ua.NodeId, str] = {}
        if unknown:
            browse_names = await client.uaclient.read_attributes(unknown, AttributeIds.BrowseName)
            custom = {
                t: v.Value.Value.Name
                for t, v in zip(unknown, browse_names, strict=True)
                if v.Value is not None and isinstance(v.Value.Value, ua.QualifiedName)
            }
        for node_id, type_id in type_ids.items():
            names[node_id] = _builtin_name(type_id) or custom.get(type_id, type_id.to_string())
    return names


def _builtin_name(type_id: ua.NodeId) -> str | None:
    if type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
        return ObjectIdNames.get(type_id.Identifier)
    return None


def _tag(node: BrowsedNode) -> str:
    return ".".join(node.path) or node.display_name


def render_nodes_yaml(nodes: Sequence[BrowsedNode], *, sampling_interval_ms: float = 1000.0) -> str:
    """A ``nodes:`` YAML block for the variables in ``nodes``, ready to paste into a config.

    Tags are the browse path joined with dots (made unique with a ``~N`` suffix); the data
    type is left as a comment. Strings are JSON-quoted, which YAML reads as-is.
    """
    lines = ["nodes:"]
    used: set[str] = set()
    for node in nodes:
        if node.node_class != "Variable":
            continue
        tag, suffix = _tag(node), 2
        while tag in used:
            tag, suffix = f"{_tag(node)}~{suffix}", suffix + 1
        used.add(tag)
        comment = f"  # {node.data_type}" if node.data_type else ""
        lines.append(f"  - node_id: {json.dumps(node.node_id)}{comment}")
        lines.append(f"    tag: {json.dumps(tag)}")
        lines.append(f"    sampling_interval_ms: {sampling_interval_ms:g}")
    if len(lines) == 1:
        lines[0] = "nodes: []"
    return "\n".join(lines) + "\n"
