"""The MQTT delivery promise end to end: a publisher, a private Mosquitto (persistence on) and
the real ``mes ingest`` process, with faults injected mid-stream (both databases).

- SIGKILL of the ingest process, then a restart: every message the broker accepted is stored
  exactly once (the broker redelivers what the MES never acknowledged).
- SIGTERM of the broker, then a restart: nothing lost, nothing twice.
- SIGKILL of the broker: the ingest reconnects by itself and goes on storing, stores nothing
  twice, and records the broker's loss window as a gap (a broker acknowledges QoS 1 from
  memory, so what it held is its loss, not the MES's).

Every wait is bounded; nothing asserts on durations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import func, select

from mes.db import Database
from mes.models import TelemetryGap, TelemetrySample
from tests.support.mosquitto import PrivateMosquitto

REPO = Path(__file__).resolve().parents[3]
MES = str(Path(sys.executable).parent / "mes")
TAGS = [f"LINE/P-1/v{i}" for i in range(5)]
WAIT_S = 60.0
T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


class Publisher:
    """A paho QoS 1 publisher with a persistent session in a thread of its own; remembers
    which messages the broker acknowledged."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="line-p1-publisher",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)
        # Written by paho's network thread (set.add is atomic); no lock is held around
        # ``publish``, which takes paho's own locks - the network thread holds one of them
        # while it calls ``on_publish``.
        self._acked_mids: set[int] = set()
        self.mids: dict[int, int] = {}
        self.client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        self.sent = 0

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, *args: object) -> None:
        self._acked_mids.add(mid)

    @property
    def acked(self) -> set[int]:
        """The messages (by number) the broker has acknowledged."""
        return {self.mids[mid] for mid in list(self._acked_mids) if mid in self.mids}

    def publish(self, number: int) -> None:
        payload = json.dumps(
            {"ts": (T0 + timedelta(milliseconds=number)).isoformat(), "value": number}
        )
        info = self.client.publish(f"line/p1/v{number % len(TAGS)}", payload, qos=1)
        self.mids[info.mid] = number
        self.sent += 1

    def stream(self, numbers: range, pause_s: float = 0.002) -> None:
        for number in numbers:
            self.publish(number)
            time.sleep(pause_s)

    def wait_acked(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def expected(numbers: set[int]) -> set[tuple[str, datetime]]:
    return {(TAGS[n % len(TAGS)], T0 + timedelta(milliseconds=n)) for n in numbers}


class Ingest:
    """``mes ingest`` as a process of its own."""

    def __init__(self, env: dict[str, str], config: Path, spool: Path, log: Path) -> None:
        self.env, self.config, self.spool, self.log_path = env, config, spool, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [MES, "ingest", "--config", str(self.config), "--spool", str(self.spool)],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(WAIT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path / "broker", autosave_interval=3600) as running:
        yield running


@pytest.fixture
def ingest(broker: PrivateMosquitto, database_url: str, tmp_path: Path) -> Iterator[Ingest]:
    config = tmp_path / "telemetry.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tags": [{"tag": tag} for tag in TAGS],
                "connectors": [
                    {
                        "name": "line-p1",
                        "kind": "mqtt",
                        "options": {
                            "host": "127.0.0.1",
                            "port": broker.port,
                            "client_id": "mes-ingest-line-p1",
                            "reconnect_max_delay": 1,
                            "subscriptions": [
                                {"filter": "line/p1/+", "codec": "json", "tag": "LINE/P-1/{2}"}
                            ],
                        },
                    }
                ],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update(
        MES_DATABASE_URL=database_url,
        MES_VAR_DIR=str(tmp_path / "var"),
        MES_ENV="test",
        MES_JWT_SECRET="ingest-test-secret-" + "x" * 40,
    )
    process = Ingest(env, config, tmp_path / "spool.db", tmp_path / "ingest.log")
    process.start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait(WAIT_S)


@pytest.fixture
async def db(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url)
    yield database  # type: ignore[misc]
    await database.dispose()


async def stored(db: Database) -> list[tuple[str, datetime]]:
    from mes.models import TelemetryTag

    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(TelemetryTag.tag, TelemetrySample.source_ts).join(
                TelemetryTag, TelemetryTag.id == TelemetrySample.tag_id
            )
        )
        return [(tag, ts) for tag, ts in rows]


async def wait_stored(db: Database, count: int, ingest: Ingest) -> list[tuple[str, datetime]]:
    import asyncio

    deadline = time.monotonic() + WAIT_S
    rows = await stored(db)
    while len(rows) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        rows = await stored(db)
    assert len(rows) >= count, f"{len(rows)} of {count} stored\n{ingest.log()[-3000:]}"
    return rows


async def wait_subscribed(
    db: Database, publisher: Publisher, ingest: Ingest, probe: int = 0
) -> None:
    """The ingest is subscribed: message ``probe``, sent again until it is stored (it is one
    value, however often it is sent)."""
    import asyncio

    wanted = expected({probe})
    deadline = time.monotonic() + WAIT_S
    while not wanted <= set(await stored(db)) and time.monotonic() < deadline:
        publisher.publish(probe)
        await asyncio.sleep(0.5)
    assert wanted <= set(await stored(db)), ingest.log()[-3000:]


async def test_killing_the_ingest_loses_nothing_the_broker_accepted(
    broker: PrivateMosquitto, ingest: Ingest, db: Database
) -> None:
    publisher = Publisher(broker.port)
    try:
        await wait_subscribed(db, publisher, ingest)
        publisher.stream(range(1, 400))
        ingest.signal(signal.SIGKILL)  # mid-stream: some values stored, some not acknowledged
        publisher.stream(range(400, 800))  # the broker queues these for the absent session
        ingest.start()
        publisher.stream(range(800, 1000))
        publisher.wait_acked(1000)
        rows = await wait_stored(db, len(publisher.acked), ingest)
    finally:
        publisher.close()
    assert len(rows) == len(set(rows))  # exactly once
    assert set(rows) == expected(publisher.acked)
    assert len(publisher.acked) == 1000


async def test_a_broker_restart_loses_nothing(
    broker: PrivateMosquitto, ingest: Ingest, db: Database
) -> None:
    publisher = Publisher(broker.port)
    try:
        await wait_subscribed(db, publisher, ingest)
        publisher.stream(range(1, 400))
        broker.restart(signal.SIGTERM)  # persistence on: sessions and queues are saved
        publisher.stream(range(400, 800))  # queued by paho until the broker is back
        publisher.wait_acked(800)
        rows = await wait_stored(db, 800, ingest)
    finally:
        publisher.close()
    assert len(publisher.acked) == 800
    assert len(rows) == len(set(rows))
    assert set(rows) == expected(set(range(800)))


async def test_a_killed_broker_is_survived_and_its_loss_window_recorded(
    broker: PrivateMosquitto, ingest: Ingest, db: Database
) -> None:
    publisher = Publisher(broker.port)
    try:
        await wait_subscribed(db, publisher, ingest)
        publisher.stream(range(1, 300))
        killed_at = datetime.now(UTC)
        broker.kill()  # what the broker held in memory is gone with it
        broker.start()
        # Published before the ingest has subscribed again, a value has no subscriber: the
        # broker drops it. The probe shows the ingest is back.
        await wait_subscribed(db, publisher, ingest, probe=5000)
        publisher.stream(range(300, 600))
        publisher.wait_acked(600)
        # The values sent after the restart arrive: the ingest reconnected by itself.
        after = expected(set(range(300, 600)))
        deadline = time.monotonic() + WAIT_S
        rows = await stored(db)
        while not after <= set(rows) and time.monotonic() < deadline:
            await _sleep()
            rows = await stored(db)
    finally:
        publisher.close()
    assert after <= set(rows), ingest.log()[-3000:]
    assert len(rows) == len(set(rows))
    async with db.sessionmaker() as session:
        gaps = (await session.execute(select(TelemetryGap))).scalars().all()
        count = await session.scalar(select(func.count()).select_from(TelemetrySample))
    assert count == len(rows)
    assert {g.source for g in gaps} == {"line-p1"}
    # The window of the kill is recorded (a loaded machine may drop the connection again).
    covering = [g for g in gaps if g.start <= killed_at <= g.end]
    assert covering, [(g.start, g.end, g.reason) for g in gaps]
    assert "broker" in covering[0].reason


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.25)
