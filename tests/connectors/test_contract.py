"""The connector contract and the rule that connectors never import mes."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.base import Observation, Quality

PACKAGE = Path(__file__).resolve().parents[2] / "connectors"


def test_connectors_never_import_mes() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "mes" or n.startswith("mes.")]
    assert offenders == []


def test_observation_requires_aware_times_and_finite_values() -> None:
    now = datetime.now(UTC)
    ok = Observation(
        source="s", tag="t", value=1.5, quality=Quality.good, source_ts=now, received_ts=now
    )
    assert ok.value == 1.5
    with pytest.raises(ValueError, match="timezone-aware"):
        Observation(
            source="s",
            tag="t",
            value=1,
            quality=Quality.good,
            source_ts=now.replace(tzinfo=None),
            received_ts=now,
        )
    with pytest.raises(ValueError, match="non-finite"):
        Observation(
            source="s",
            tag="t",
            value=float("nan"),
            quality=Quality.good,
            source_ts=now,
            received_ts=now,
        )
