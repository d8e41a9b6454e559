"""The MQTT connector: a persistent MQTT session whose messages are acknowledged only
after the MES has stored what they said.

paho's client runs on the event loop without a network thread (``transport.LoopDriver``),
and the connector reconnects with capped backoff itself. Each message read goes to an inbox;
a consumer task takes it in batches, maps them, calls ``ctx.emit`` once per batch and sends the
batch's PUBACKs when that emit resolved, in receipt order (MQTT requires PUBACKs in PUBLISH
order). A bounded number of batches may be in flight; beyond that the inbox fills, the loop
stops reading the socket and TCP (or, in MQTT 5, the broker's Receive Maximum) holds the rest
at the broker instead of in our memory.

Acknowledging on a newer connection than the one a message arrived on would be wrong: packet
ids are per connection and may be reused for other messages after a reconnect. Every message
therefore carries its connection generation, and PUBACKs of an older generation are dropped;
the broker redelivers those messages on the resumed session (at least once, never acked
unstored).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ValidationError

from connectors.base import (
    ConnectorAuthError,
    ConnectorConfigError,
    ConnectorContext,
    ConnectorNotReady,
    Gap,
)
from connectors.mqtt import sparkplug
from connectors.mqtt.codecs import Payload
from connectors.mqtt.config import MqttConfig
from connectors.mqtt.mapping import Mapper, Output
from connectors.mqtt.transport import (
    ChunkedClient,
    LoopDriver,
    connack_error,
    make_client,
    open_in_thread,
)

Item = tuple[int, int, str | None, Payload, float, int]
"""(mid, qos, topic, payload, wall-clock receipt time, connection generation)"""
Ack = tuple[int, int, int]
"""(mid, qos, connection generation)"""


class MqttConnector:
    """Entry point ``mqtt``: one instance per configured connector; ``run`` may be called
    again after it raised, and then reports the gap if the broker lost the session."""

    kind: ClassVar[str] = "mqtt"
    Config: ClassVar[type[BaseModel]] = MqttConfig

    def __init__(self) -> None:
        self.last_activity: datetime | None = None
        """End of the previous run (its last message or its stop), for the restart gap."""
        self.ready = asyncio.Event()
        """Set while connected with the subscriptions confirmed (health checks, tests)."""
        self.sources: set[str] = set()
        """Sources mapped in earlier runs (a restart gap covers them too)."""

    async def run(self, ctx: ConnectorContext) -> None:
        config = ctx.config
        if not isinstance(config, MqttConfig):
            try:
                config = MqttConfig.model_validate(config.model_dump())
            except ValidationError as exc:
                raise ConnectorConfigError(f"{ctx.name}: {exc}") from exc
        session = _Session(self, ctx, config, asyncio.get_running_loop())
        try:
            await session.run()
        finally:
            self.ready.clear()
            self.last_activity = session.last_activity()
            self.sources |= session.mapper.router.sources


class _Session:
    """One ``run``: a paho client driven by the event loop, and the pipeline behind it."""

    def __init__(
        self,
        owner: MqttConnector,
        ctx: ConnectorContext,
        config: MqttConfig,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.owner, self.ctx, self.config, self.loop = owner, ctx, config, loop
        self.v5 = config.protocol == "5"
        self.mapper = Mapper(config, ctx.name)
        self.max_items = max(config.receive_maximum, config.max_batch)
        self._inbox: list[Item] = []
        self._inbox_bytes = 0
        self._stopping = False
        self._generation = 0
        self._connected = False
        self._connected_once = False
        self._last_message_at: float | None = None
        self._connected_at = time.time()
        self._lost: str | None = None
        self._delay = float(config.reconnect_min_delay)
        self._reconnect_task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._first_connack: asyncio.Future[bool] = loop.create_future()
        self._first_suback: asyncio.Future[None] = loop.create_future()
        self._fatal: asyncio.Future[None] = loop.create_future()
        self._slots = asyncio.Semaphore(config.max_batches_in_flight)
        self._pending: asyncio.Queue[tuple[asyncio.Future[None] | None, list[Ack]] | None]
        self._pending = asyncio.Queue()
        self._side_tasks: set[asyncio.Future[None]] = set()
        self._emits: set[asyncio.Future[None]] = set()
        self._state_ts = sparkplug.now_ms()
        self.client = self._make_client()
        self.io = LoopDriver(self.client, loop, self._inbox_full)

    def _make_client(self) -> ChunkedClient:
        client = make_client(self.config)
        if self.config.sparkplug_host_id is not None:
            offline = json.dumps({"online": False, "timestamp": self._state_ts})
            topic = sparkplug.state_topic(self.config.sparkplug_host_id)
            client.will_set(topic, offline, 1, True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def last_activity(self) -> datetime | None:
        if not self._connected_once:
            return self.owner.last_activity
        return self._wall(self._last_message_at or time.time())

    def _wall(self, seconds: float) -> datetime:
        """A ``time.time()`` value on the context's clock (tests may shift it)."""
        offset = self.ctx.clock.now().timestamp() - time.time()
        return datetime.fromtimestamp(seconds + offset, UTC)

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        await self._open(first=True)
        # The pipeline runs before CONNACK: a resumed session delivers its backlog at once.
        tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(self._acknowledge()),
            asyncio.create_task(self._housekeeping()),
        ]
        try:
            try:
                session_present = await asyncio.wait_for(self._first_connack, cfg.connect_timeout)
                await asyncio.wait_for(self._first_suback, cfg.connect_timeout)
            except TimeoutError:
                hint = (
                    " (an MQTT 3.1.1-only broker such as amqtt ignores MQTT 5)" if self.v5 else ""
                )
                raise ConnectorNotReady(
                    f"no CONNACK/SUBACK from {cfg.host}:{cfg.port} in {cfg.connect_timeout} s{hint}"
                ) from None
            self.ctx.logger.info(
                "mqtt %s connected to %s:%s (session present: %s)",
                *(self.ctx.name, cfg.host, cfg.port, session_present),
            )
            await self._restart_gap(session_present)
            self.owner.ready.set()
            done, _ = await asyncio.wait([*tasks, self._fatal], return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            await self._shutdown(tasks)

    async def _open(self, first: bool = False) -> None:
        """Open a connection (TCP, TLS, CONNECT sent) in a worker thread, then watch it."""
        cfg = self.config
        await open_in_thread(self.client, cfg, first)
        if not self.io.attach():
            return
        if not first:
            generation = self._generation
            self.loop.call_later(cfg.connect_timeout, self._connack_overdue, generation)

    def _connack_overdue(self, generation: int) -> None:
        """A broker that took the connection but sent no CONNACK: drop it and retry."""
        sock = self.io.sock
        if generation == self._generation and not self._connected and sock is not None:
            self.ctx.logger.warning("mqtt %s: no CONNACK in time; reconnecting", self.ctx.name)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the next read sees the end

    async def _reconnect(self) -> None:
        """Reconnect with capped exponential backoff until connected or stopped."""
        cfg = self.config
        while not self._stopping:
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, float(cfg.reconnect_max_delay))
            try:
                await self._open()
            except (ConnectorAuthError, ConnectorConfigError) as exc:
                self._fail(exc)
                return
            except ConnectorNotReady as exc:
                self.ctx.logger.info("mqtt %s: %s; retrying", self.ctx.name, exc)
                continue
            return

    async def _housekeeping(self) -> None:
        """paho's keepalive: PINGREQ when idle, and a connection whose PINGRESP is overdue
        is dropped (which reconnects)."""
        while True:
            await asyncio.sleep(1.0)
            if self.io.sock is not None and self._reconnect_task is None:
                self.client.loop_misc()

    async def _restart_gap(self, session_present: bool) -> None:
        previous = self.owner.last_activity
        if previous is None or session_present:
            return
        now = self.ctx.clock.now()
        reason = (
            f"connector restarted and broker {self.config.host}:{self.config.port} had no "
            f"session for client id {self.config.client_id!r} (expired or lost): messages "
            "published meanwhile were not queued"
        )
        for source in self._sources():
            await self.ctx.report_gap(Gap(source, min(previous, now), now, reason))

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop reading, ack what the MES stores within ``stop_timeout``, then disconnect.

        Unacknowledged messages stay in the broker's session and come again next run.
        """
        self._stopping = self.io.stopped = True
        self.io.pause()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        for task in (tasks[0], *tasks[2:]):
            task.cancel()
        self._pending.put_nowait(None)
        if not tasks[1].done():
            await asyncio.wait(tasks[1:2], timeout=self.config.stop_timeout)
        leftovers: list[asyncio.Future[Any]] = [*tasks, *self._side_tasks, *self._emits]
        if self._reconnect_task is not None:
            leftovers.append(self._reconnect_task)
        while not self._pending.empty():  # failed emits nobody awaited: retrieve them
            entry = self._pending.get_nowait()
            if entry is not None and entry[0] is not None:
                leftovers.append(entry[0])
        for future in leftovers:
            future.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await self._disconnect()
        for future in (self._fatal, self._first_connack, self._first_suback):
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: asyncio would log it as never retrieved

    async def _disconnect(self) -> None:
        """Say goodbye (offline STATE, DISCONNECT) if connected, and close the socket."""
        client = self.client
        if self._connected:
            if self.config.sparkplug_host_id is not None:
                offline = json.dumps({"online": False, "timestamp": self._state_ts})
                topic = sparkplug.state_topic(self.config.sparkplug_host_id)
                client.publish(topic, offline, qos=1, retain=True)
            client.disconnect()  # paho closes the socket once DISCONNECT is written
        await self.io.close(grace=1.0)

    def _sources(self) -> list[str]:
        """The sources a connection-level gap covers: every one mapped so far."""
        return sorted(self.mapper.router.sources | self.owner.sources) or [self.ctx.name]

    def _fail(self, exc: BaseException) -> None:
        if not self._fatal.done():
            self._fatal.set_exception(exc)

    def _spawn(self, awaitable: Awaitable[None]) -> None:
        if self._stopping:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            return
        task = asyncio.ensure_future(awaitable)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Future[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(ConnectorNotReady(f"could not record a gap: {task.exception()!r}"))

    def _inbox_full(self) -> bool:
        return (
            len(self._inbox) >= self.max_items
            or self._inbox_bytes >= self.config.max_buffered_bytes
        )

    # --- paho callbacks (event loop, from loop_read / loop_write / loop_misc) ----------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.io.in_loop(self._refused, reason)
            return
        first = not self._connected_once
        if first or not flags.session_present:
            self._subscribe(client)
        if self.config.sparkplug_host_id is not None:
            online = json.dumps({"online": True, "timestamp": self._state_ts})
            client.publish(sparkplug.state_topic(self.config.sparkplug_host_id), online, 1, True)
        self._connected_once = True
        lost, self._lost = self._lost, None
        now = time.time()
        last = self._last_message_at or self._connected_at
        self._connected_at = now
        self.io.in_loop(self._on_connected, first, flags.session_present, lost, last, now)

    def _subscribe(self, client: mqtt.Client) -> None:
        topics: list[tuple[str, Any]] = []
        for sub in self.config.subscriptions:
            if self.v5:
                # No Local keeps our own rebirth commands away; it is illegal on $share.
                no_local = sub.shared_group is None and sub.codec == "sparkplug"
                topics.append((sub.subscribe_filter, SubscribeOptions(sub.qos, no_local)))
            else:
                topics.append((sub.subscribe_filter, sub.qos))
        client.subscribe(topics)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.io.in_loop(self._subscribed, reasons)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.io.in_loop(self._disconnected, str(reason))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        now = time.time()
        payload = message.payload
        inbox = self._inbox
        inbox.append((message.mid, message.qos, topic, payload, now, self._generation))
        self._inbox_bytes += len(payload)
        self._last_message_at = now
        if len(inbox) == 1:
            self._wakeup.set()

    # --- event loop: connection events ------------------------------------------------

    def _refused(self, reason: ReasonCode) -> None:
        error = connack_error(reason, f"{self.config.host}:{self.config.port}")
        if not self._first_connack.done():
            self._first_connack.set_exception(error)
        elif isinstance(error, ConnectorAuthError | ConnectorConfigError):
            self._fail(error)
        else:
            self.ctx.logger.warning("mqtt %s: %s; retrying", self.ctx.name, error)

    def _subscribed(self, reasons: Sequence[ReasonCode]) -> None:
        failed = [r for r in reasons if r.is_failure]
        if not failed:
            if not self._first_suback.done():
                self._first_suback.set_result(None)
            return
        filters = ", ".join(s.subscribe_filter for s in self.config.subscriptions)
        text = f"broker refused subscriptions ({filters}): {', '.join(map(str, failed))}"
        auth = any(r.value == 135 for r in failed)
        error = ConnectorAuthError(text) if auth else ConnectorConfigError(text)
        if not self._first_suback.done():
            self._first_suback.set_exception(error)
        else:
            self._fail(error)

    def _disconnected(self, reason: str) -> None:
        # Messages read on this connection are never acknowledged on the next one.
        self._generation += 1
        self._connected = False
        self.io.forget(self.io.sock)
        if self._stopping:
            return
        if self._lost is None:
            self._lost = reason
        self.owner.ready.clear()
        if not self._first_connack.done():
            self._first_connack.set_exception(
                ConnectorNotReady(
                    f"broker closed the connection before CONNACK ({reason}); a broker that "
                    "speaks only MQTT 3.1.1 (amqtt) does this to MQTT 5: set protocol '3.1.1'"
                )
            )
            return
        self.ctx.logger.warning(
            "mqtt %s lost the broker %s:%s (%s); reconnecting",
            self.ctx.name,
            self.config.host,
            self.config.port,
            reason,
        )
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.ensure_future(self._reconnect())
            self._reconnect_task.add_done_callback(self._reconnect_done)

    def _reconnect_done(self, task: asyncio.Task[None]) -> None:
        if self._reconnect_task is task:
            self._reconnect_task = None
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception() or RuntimeError("reconnect failed"))

    def _on_connected(
        self,
        first: bool,
        session_present: bool,
        lost: str | None,
        last: float,
        now: float,
    ) -> None:
        self._connected = True
        self._delay = float(self.config.reconnect_min_delay)
        if self.io.paused:
            self.io.resume()
        if first:
            if not self._first_connack.done():
                self._first_connack.set_result(session_present)
            return
        self.owner.ready.set()
        self.ctx.logger.info(
            "mqtt %s reconnected (session present: %s)", self.ctx.name, session_present
        )
        if lost is None:
            return
        kept = (
            "the broker kept the session (session_present=1), but it acknowledged QoS 1 "
            "from memory and may have lost messages"
            if session_present
            else "the broker had lost the session (session_present=0): messages published "
            "while disconnected were not queued"
        )
        reason = f"MQTT connection lost ({lost}); reconnected: {kept}"
        end = self._wall(now)
        for source in self._sources():
            self._spawn(self.ctx.report_gap(Gap(source, min(self._wall(last), end), end, reason)))

    # --- event loop: the pipeline -----------------------------------------------------

    def _take(self) -> list[Item]:
        inbox, most = self._inbox, self.config.max_batch
        if len(inbox) <= most:
            self._inbox = []
            items = inbox
        else:
            items = inbox[:most]
            del inbox[:most]
        self._inbox_bytes -= sum(len(item[3]) for item in items)
        if self.io.paused and self._connected:
            self.io.resume()
        return items

    async def _consume(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                await self._slots.acquire()
                items = self._take()
                if not items:
                    self._slots.release()
                    break
                out, acks = self._decode(items)
                for rejected in out.rejects:
                    self.ctx.reject(rejected)
                for gap in out.gaps:
                    await self.ctx.report_gap(gap)
                for group, edge_node in out.rebirths:
                    self._request_rebirth(group, edge_node)
                emitted = None
                if out.observations:
                    emitted = asyncio.ensure_future(self.ctx.emit(out.observations))
                    self._emits.add(emitted)
                    emitted.add_done_callback(self._emits.discard)
                self._pending.put_nowait((emitted, acks))

    async def _acknowledge(self) -> None:
        while True:
            entry = await self._pending.get()
            if entry is None:
                return
            emitted, acks = entry
            if emitted is not None:
                try:
                    await asyncio.shield(emitted)
                except asyncio.CancelledError:
                    if not emitted.cancelled():
                        raise  # this task is being stopped
                    raise ConnectorNotReady("emit was cancelled") from None
                except Exception as exc:
                    raise ConnectorNotReady(
                        f"emit failed ({exc!r}); the broker redelivers the unacknowledged "
                        "messages when the connector reconnects"
                    ) from exc
            generation, ack = self._generation, self.client.ack
            for mid, qos, message_generation in acks:
                if message_generation == generation:
                    ack(mid, qos)
            self._slots.release()

    def _decode(self, items: list[Item]) -> tuple[Output, list[Ack]]:
        now = self.ctx.clock.now()
        offset = now.timestamp() - time.time()
        latest = now + timedelta(seconds=self.config.max_future_skew)
        out = Output()
        acks: list[Ack] = [(mid, qos, gen) for mid, qos, _, _, _, gen in items if qos]
        mapper = self.mapper.map
        for _, _, topic, payload, at, _ in items:
            mapper(topic, payload, datetime.fromtimestamp(at + offset, UTC), latest, out)
        return out, acks

    def _request_rebirth(self, group: str, edge_node: str) -> None:
        topic = f"{sparkplug.NAMESPACE}/{group}/NCMD/{edge_node}"
        info = self.client.publish(topic, sparkplug.rebirth_request(), qos=0)
        self.ctx.logger.info(
            "mqtt %s asked %s/%s for a rebirth (rc %s)", self.ctx.name, group, edge_node, info.rc
        )
