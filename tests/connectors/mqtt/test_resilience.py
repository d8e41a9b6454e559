"""Broker outages: the connector reconnects by itself, reports what it cannot vouch for as a
Gap, and loses nothing that a persisted broker session still holds."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.connectors.mqtt.conftest import Publisher, Sink, config, context, running
from tests.support.mosquitto import PrivateMosquitto


def value(i: int) -> str:
    return f'{{"value": {i}}}'


async def test_broker_killed_connector_reconnects_and_reports_a_gap(
    broker: PrivateMosquitto, sink: Sink
) -> None:
    cfg = config(broker, "survivor", reconnect_min_delay=1, reconnect_max_delay=2)
    async with running(context("gw", cfg, sink)) as run:
        before = Publisher(broker)
        await before.send([("plant/a/z/temperature", value(1))])
        await sink.wait_for(lambda: sink.values() == [1])
        broker.kill()
        before.close()
        broker.restart()
        await sink.wait_for(lambda: len(sink.gaps) == 1)
        after = Publisher(broker)
        try:
            await after.send([("plant/a/z/temperature", value(2))])
            await sink.wait_for(lambda: sink.values() == [1, 2])
        finally:
            after.close()
        assert not run.task.done()
    (gap,) = sink.gaps
    assert gap.source == "gw"
    assert gap.tag is None
    assert gap.start <= gap.end
    # The gap starts at the last message received before the loss (clock jitter aside).
    assert abs((gap.start - sink.observations[0].received_ts).total_seconds()) < 1
    assert "connection lost" in gap.reason
    assert "session_present=" in gap.reason


async def test_broker_restarted_with_sigterm_loses_nothing(
    broker: PrivateMosquitto, sink: Sink
) -> None:
    sink.delay = lambda index: 0.05
    cfg = config(broker, "patient", max_batch=10, reconnect_min_delay=1, reconnect_max_delay=2)
    count = 200
    async with running(context("gw", cfg, sink)):
        publisher = Publisher(broker)
        await publisher.send([(f"plant/a/z{i}/temperature", value(i)) for i in range(count)])
        publisher.close()
        broker.stop(signal.SIGTERM)  # writes the persistence database, sessions included
        broker.restart()
        await sink.wait_for(lambda: set(sink.values()) == set(range(count)))
        await sink.wait_for(lambda: len(sink.gaps) == 1)
    assert "session_present=1" in sink.gaps[0].reason
    # Messages in flight at the restart may come twice (at least once), never zero times.
    assert len(sink.observations) >= count


async def test_clean_stop_reports_no_gap_and_restart_finds_the_session(
    broker: PrivateMosquitto, publisher: Publisher, sink: Sink
) -> None:
    cfg = config(broker, "restartable")
    async with running(context("gw", cfg, sink)) as run:
        connector = run.connector
    await publisher.send([("plant/a/z/temperature", value(7))])
    async with running(context("gw", cfg, sink), connector):
        await sink.wait_for(lambda: sink.values() == [7])
    assert sink.gaps == []


async def test_restart_after_the_broker_lost_the_session_reports_a_gap(
    tmp_path: Path,
) -> None:
    sink = Sink()
    broker = PrivateMosquitto(tmp_path, persistence=False)
    broker.start()
    try:
        cfg = config(broker, "forgotten")
        async with running(context("gw", cfg, sink)) as run:
            connector = run.connector
        broker.restart()  # no persistence: the session is gone
        async with running(context("gw", cfg, sink), connector):
            await sink.wait_for(lambda: len(sink.gaps) == 1)
    finally:
        broker.stop()
    assert "had no session" in sink.gaps[0].reason


async def test_a_broker_that_stops_answering_is_left_and_reconnected(
    broker: PrivateMosquitto, sink: Sink
) -> None:
    # SIGSTOP: the TCP connection stays open but nothing answers. The keepalive (PINGREQ,
    # no PINGRESP within another keepalive period) drops it; while the broker is still
    # stopped, new connections are accepted by the kernel but never get a CONNACK, so each
    # attempt is given up after connect_timeout; once it runs again the connector is back.
    cfg = config(
        broker,
        "watchful",
        keepalive=5,
        connect_timeout=2,
        reconnect_min_delay=1,
        reconnect_max_delay=1,
    )
    assert broker.pid is not None
    async with running(context("gw", cfg, sink)) as run:
        publisher = Publisher(broker)
        await publisher.send([("plant/a/z/temperature", value(1))])
        publisher.close()
        await sink.wait_for(lambda: sink.values() == [1])
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await wait_until(lambda: not run.connector.ready.is_set(), within=20)
            await asyncio.sleep(3)  # at least one attempt without CONNACK
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await wait_until(run.connector.ready.is_set, within=20)
        await sink.wait_for(lambda: len(sink.gaps) == 1)
        publisher = Publisher(broker)
        try:
            await publisher.send([("plant/a/z/temperature", value(2))])
            await sink.wait_for(lambda: sink.values() == [1, 2])
        finally:
            publisher.close()
        assert not run.task.done()


async def wait_until(predicate: Callable[[], bool], within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
