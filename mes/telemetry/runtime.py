"""The ingest runtime: the tag registry, the ingest pipeline and the connector host together.

Run by ``mes ingest`` (its own process; several may share one MQTT shared subscription) and by
``mes demo`` inside the server process. The API never runs connectors: it reads what ingest
stored, so any number of API workers see the same values. The periodic hourly roll-up is a
background job (mes/background, ``telemetry-rollup``); ingest only rolls up the older hours it
has just stored itself (``LateRollup``), which that job does not look back to.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

from connectors.host import ConnectorHost
from mes.context import AppContext
from mes.telemetry.alarms import AlarmEngine
from mes.telemetry.config import TelemetryConfig, load_config, register_tags
from mes.telemetry.equipment_feed import EquipmentFeed
from mes.telemetry.ingest import Ingest
from mes.telemetry.rollup import LateRollup
from mes.telemetry.spool import Spool
from mes.telemetry.store import SampleStore

log = logging.getLogger(__name__)

GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector_for_streaming() -> None:
    """Keep the garbage collector out of a stream's way (the ingest process only).

    Every sample allocates a few container objects that die within a batch. With the default
    thresholds (700, 10, 10) the collector runs thousands of times a second, and every
    hundredth run walks every live object: pauses of 100 ms and more in the middle of a
    batch. Objects alive after start-up are moved out of its sight (``gc.freeze``) and it runs
    less often; memory is still freed by reference counting as objects die.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass
class TelemetryRuntime:
    """Everything ingest needs, started and stopped as one."""

    config: TelemetryConfig
    ingest: Ingest
    host: ConnectorHost
    rollup: LateRollup

    @classmethod
    def build(
        cls, ctx: AppContext, config: TelemetryConfig | None = None, *, spool: Path | None = None
    ) -> TelemetryRuntime:
        """Wire the runtime from the settings (the telemetry file unless ``config`` is given)."""
        settings = ctx.settings
        config = config or load_config(settings.telemetry_file)
        rollup = LateRollup(ctx.db, ctx.clock)
        ingest = Ingest(
            SampleStore(ctx.db),
            Spool(spool or settings.var_dir / "spool" / "telemetry.db"),
            ctx.clock,
            future_skew=settings.telemetry_future_skew,
            effects=[AlarmEngine(ctx.db, ctx.clock), EquipmentFeed(ctx), rollup],
        )
        host = ConnectorHost(
            config.connectors,
            emit=ingest.emit,
            report_gap=ingest.report_gap,
            reject=ingest.reject,
            clock=ctx.clock,
        )
        return cls(config=config, ingest=ingest, host=host, rollup=rollup)

    async def start(self, ctx: AppContext) -> None:
        """Register the tags, start ingest, then the connectors."""
        await register_tags(ctx.db, self.config.tags)
        await self.ingest.start()
        self.host.start()
        log.info(
            "telemetry: %d tags, connectors %s",
            len(self.config.tags),
            ", ".join(f"{s.name} ({s.kind})" for s in self.config.connectors) or "none",
        )

    async def stop(self) -> None:
        """Stop the connectors first (no new values), then commit what is queued, then roll
        up the late hours it noted."""
        await self.host.stop()
        await self.ingest.stop()
        await self.rollup.stop()
