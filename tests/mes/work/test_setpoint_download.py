"""Recipe download at operation start: targets written to the unit's OPC UA setpoints, read
back and audited; a setpoint the server refuses fails the request with 409 and the attempt is
still audited (both databases, a real asyncua server)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from asyncua import Server, ua

from mes.context import AppContext
from mes.settings import MesSettings
from mes.telemetry.config import TagSpec, register_tags
from tests.conftest import make_settings
from tests.mes.work.conftest import Floor, resin_master

WO = "WO-R-2611-09"
MELT_SP = "CORE/ROP-TRAIN-1/R-101/melt_temp_sp"
CATALYST_SP = "CORE/ROP-TRAIN-1/R-101/catalyst_sp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = free_port()
T = TypeVar("T")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> MesSettings:
    telemetry = tmp_path / "telemetry.yaml"
    telemetry.write_text(
        yaml.safe_dump(
            {
                "connectors": [
                    {
                        "name": "plc-r101",
                        "kind": "opcua",
                        "options": {
                            "endpoint": f"opc.tcp://127.0.0.1:{PORT}/plc",
                            "setpoints": [
                                {"tag": MELT_SP, "node_id": "ns=2;s=R-101.MeltTempSP"},
                                {"tag": CATALYST_SP, "node_id": "ns=2;s=R-101.CatalystSP"},
                            ],
                        },
                    }
                ]
            }
        )
    )
    return make_settings(database_url, tmp_path, telemetry_file=telemetry)


class Plc:
    """A real asyncua server in a thread of its own, started once for the module: starting
    one costs seconds (it loads the standard address space)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nodes: dict[str, ua.Node] = self.call(self._start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _start(self) -> dict[str, ua.Node]:
        self.server = Server()
        await self.server.init()
        self.server.set_endpoint(f"opc.tcp://127.0.0.1:{PORT}/plc")
        ns = await self.server.register_namespace("urn:test:plc")
        reactor = await self.server.nodes.objects.add_object(ns, "R-101")
        melt = await reactor.add_variable("ns=2;s=R-101.MeltTempSP", "MeltTempSP", 150.0)
        await melt.set_writable()
        # Read-only: the PLC refuses a download of the catalyst charge.
        catalyst = await reactor.add_variable("ns=2;s=R-101.CatalystSP", "CatalystSP", 0.0)
        await self.server.start()
        return {"melt": melt, "catalyst": catalyst}

    def value(self, name: str) -> Any:
        return self.call(self.nodes[name].read_value())

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def plc() -> Iterator[Plc]:
    server = Plc()
    yield server
    server.close()


def master(*, with_catalyst: bool) -> dict[str, object]:
    body = resin_master()
    for op in body["operations"]:  # type: ignore[attr-defined]
        for p in op.get("parameters", []):
            if p["name"] == "melt_temp":
                p["setpoint_tag"] = MELT_SP
            if with_catalyst and p["name"] == "catalyst_charge":
                p["setpoint_tag"] = CATALYST_SP
    return body


async def started(floor: Floor, ctx: AppContext, *, with_catalyst: bool) -> None:
    await register_tags(
        ctx.db,
        [TagSpec(tag=MELT_SP, equipment="R-101"), TagSpec(tag=CATALYST_SP, equipment="R-101")],
    )
    await floor.released_lot("LLA", "LLA-2611-09", "100", "kg")
    await floor.approved_master(master(with_catalyst=with_catalyst))
    await floor.released_order(WO, "WM-RES-PLGA9010", "50", "kg")
    await floor.start(WO, 10, "R-101")


async def test_targets_are_written_read_back_and_audited(
    floor: Floor, ctx: AppContext, plc: Plc
) -> None:
    await started(floor, ctx, with_catalyst=False)
    done = await floor.act(WO, 10, "download-setpoints")
    assert done == {
        "work_order": WO,
        "operation_seq": 10,
        "setpoints": [
            {
                "parameter": "melt_temp",
                "tag": MELT_SP,
                "value": "160",
                "uom": "degC",
                "read_back": "160.0",
                "confirmed": True,
                "error": None,
            }
        ],
    }
    assert plc.value("melt") == 160.0
    op = await floor.op(WO, 10)
    trail = await floor.get("/audit", "qa", entity_type="operation", entity_id=op["id"])
    (entry,) = [e for e in trail["items"] if e["action"] == "setpoint_download"]
    assert entry["username"] == "operator"
    assert entry["reason"] == f"recipe download for {WO}/10"
    assert entry["changes"] == [{"field": MELT_SP, "old": None, "new": done["setpoints"][0]}]


async def test_a_refused_setpoint_fails_and_the_attempt_is_audited(
    floor: Floor, ctx: AppContext, plc: Plc
) -> None:
    await started(floor, ctx, with_catalyst=True)
    op = await floor.op(WO, 10)
    refused = await floor.post(f"/operations/{op['id']}/download-setpoints", "operator")
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["rule"] == "PROC-1"
    assert CATALYST_SP in problem["detail"]
    trail = await floor.get("/audit", "qa", entity_type="operation", entity_id=op["id"])
    (entry,) = [e for e in trail["items"] if e["action"] == "setpoint_download"]
    assert entry["reason"].startswith(f"recipe download for {WO}/10: failed, {CATALYST_SP}")
    assert [(c["field"], c["new"]["confirmed"]) for c in entry["changes"]] == [(CATALYST_SP, False)]


async def test_only_a_running_operation_downloads(floor: Floor, ctx: AppContext) -> None:
    await register_tags(ctx.db, [TagSpec(tag=MELT_SP, equipment="R-101")])
    await floor.released_lot("LLA", "LLA-2611-09", "100", "kg")
    await floor.approved_master(master(with_catalyst=False))
    await floor.released_order(WO, "WM-RES-PLGA9010", "50", "kg")
    op = await floor.op(WO, 10)
    early = await floor.post(f"/operations/{op['id']}/download-setpoints", "operator")
    assert early.status_code == 409
    assert "is ready; setpoints are downloaded while it runs" in early.json()["detail"]
    planner = await floor.post(f"/operations/{op['id']}/download-setpoints", "planner")
    assert planner.status_code == 403
