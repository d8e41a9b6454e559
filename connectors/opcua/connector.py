"""OPC UA connector: subscriptions in, setpoints out, and an honest record of what was missed.

asyncua 2.1's ``Subscription`` hands every notification to a task of its own (handler mode)
or to a bounded queue that silently drops (iterator mode), does not report revised queue
sizes and recreates subscriptions in one unbatched request. So this connector drives the
session's subscription services itself: one publish callback maps a whole notification
message into one batch, sequence numbers reveal lost messages, Republish fills them, and a
subscription that could not be kept is recreated in batches, recorded as a ``Gap`` and
followed by a full read. Transport and session recovery (capped exponential backoff,
ActivateSession on the old session first) is asyncua's ``auto_reconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.client.ua_session import UaSession
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from pydantic import BaseModel

from connectors.base import (
    ConnectorContext,
    ConnectorNotReady,
    Gap,
    Observation,
)
from connectors.opcua import mapping
from connectors.opcua.client import (
    SetpointError,
    SetpointNotConfirmed,
    SetpointRejected,
    UnknownSetpoint,
    classify_error,
    connect_client,
    write_confirmed,
)
from connectors.opcua.config import OpcUaConfig, SetpointConfig, parse_config
from connectors.opcua.handover import Handover

__all__ = [
    "OpcUaConnector",
    "SetpointError",
    "SetpointNotConfirmed",
    "SetpointRejected",
    "UnknownSetpoint",
]

MAX_REPUBLISH = 1000
"""Beyond this many missing notification messages a gap is reported without asking."""
SHUTDOWN_TIMEOUT_S = 5.0
REPLAYED = frozenset({mapping.FLAG_REPLAYED})
FULL_READ = frozenset({mapping.FLAG_FULL_READ})


@dataclass(eq=False)
class _Subscription:
    """One server subscription over a slice of the node table (client handle = index)."""

    handles: range
    server_id: int | None = None
    last_seq: int | None = None
    last_publish: float = 0.0
    stale_after_s: float = 10.0
    dead: bool = False


class OpcUaConnector:
    """Streams configured OPC UA variables into the MES and writes setpoints back.

    One instance serves one source; ``run`` may be called again after it failed, and then
    reports the time it was down as a gap.
    """

    kind: ClassVar[str] = "opcua"
    Config: ClassVar[type[BaseModel]] = OpcUaConfig

    def __init__(self) -> None:
        self._client: Client | None = None
        self._ctx: ConnectorContext | None = None
        self._cfg = OpcUaConfig(endpoint="opc.tcp://localhost:4840")
        self._tags: list[str] = []
        self._node_ids: list[ua.NodeId] = []
        self._setpoints: dict[str, SetpointConfig] = {}
        self._variant_types: dict[str, ua.VariantType] = {}
        self._subs: list[_Subscription] = []
        self._by_id: dict[int, _Subscription] = {}
        self._session_token: ua.NodeId | None = None
        self._handover: Handover | None = None
        self._last_publish_at: datetime | None = None
        """Receive time of the last publish response; where a gap starts."""

    @property
    def ctx(self) -> ConnectorContext:
        """The context of the current (or last) ``run``."""
        if self._ctx is None:
            raise ConnectorNotReady("the OPC UA connector is not running")
        return self._ctx

    def _now(self) -> datetime:
        return self.ctx.clock.now()

    async def run(self, ctx: ConnectorContext) -> None:
        """Connect, subscribe and stream until cancelled; see the module docstring."""
        cfg = parse_config(ctx.config)
        self._ctx, self._cfg = ctx, cfg
        self._tags = [node.tag for node in cfg.nodes]
        self._node_ids = [ua.NodeId.from_string(node.node_id) for node in cfg.nodes]
        self._setpoints = {sp.tag: sp for sp in cfg.setpoints}
        self._variant_types = {}
        size = cfg.items_per_subscription
        count = len(cfg.nodes)
        self._subs = [_Subscription(range(i, min(i + size, count))) for i in range(0, count, size)]
        self._by_id = {}
        client = await connect_client(
            cfg.endpoint,
            cfg.security,
            cfg.username,
            cfg.password.get_secret_value() if cfg.password else None,
            timeout_s=cfg.request_timeout_s,
            session_timeout_ms=cfg.session_timeout_ms,
            watchdog_interval_s=cfg.watchdog_interval_s,
            reconnect_max_delay_s=cfg.reconnect_max_delay_s,
            auto_reconnect=True,
        )
        ctx.logger.info("opcua %s: connected to %s", ctx.name, cfg.endpoint)
        handover = self._handover = Handover(
            ctx, batch_size=cfg.emit_batch_size, max_buffered=cfg.max_buffered
        )
        emitter = asyncio.create_task(handover.run(), name=f"opcua-emit-{ctx.name}")
        supervisor: asyncio.Task[None] | None = None
        self._client = client
        try:
            previous = self._last_publish_at
            try:
                await self._create(self._subs)
                if previous is not None:
                    await self._recreated(previous, "connector restarted; subscriptions recreated")
            except (OSError, TimeoutError, UaError) as exc:
                raise classify_error(exc, cfg.endpoint) from exc
            supervisor = asyncio.create_task(self._supervise(client), name=f"opcua-{ctx.name}")
            done, _ = await asyncio.wait({emitter, supervisor}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise ConnectorNotReady(f"opcua {ctx.name}: supervisor stopped")
        finally:
            self._client = None
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await supervisor
            await self._shutdown(client, handover, emitter)

    async def _shutdown(
        self, client: Client, handover: Handover, emitter: asyncio.Task[None]
    ) -> None:
        """Close the session, then give the hand-over a bounded chance to store what is left."""
        try:
            await asyncio.wait_for(client.disconnect(), SHUTDOWN_TIMEOUT_S)
        except (OSError, TimeoutError, UaError) as exc:
            self.ctx.logger.debug("opcua %s: disconnect failed: %r", self.ctx.name, exc)
        await handover.close(emitter, SHUTDOWN_TIMEOUT_S)
        self._handover = None
        lost = handover.unstored_since
        if lost is not None:
            self._last_publish_at = min(self._last_publish_at or lost, lost)

    # --- subscriptions -------------------------------------------------------------------

    def _put(self, batch: list[Observation]) -> None:
        if self._handover is not None:
            self._handover.put(batch)

    def _session(self) -> UaSession:
        if self._client is None:
            raise ConnectorNotReady("not connected")
        return self._client.uaclient.session

    async def _create(self, subs: list[_Subscription]) -> None:
        """(Re)create subscriptions and their monitored items, ``batch_size`` per request."""
        cfg, session = self._cfg, self._session()
        for sub in subs:
            if sub.server_id is not None:
                self._by_id.pop(sub.server_id, None)
            params = ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=cfg.publishing_interval_ms,
                RequestedLifetimeCount=cfg.lifetime_count,
                RequestedMaxKeepAliveCount=cfg.keepalive_count,
                MaxNotificationsPerPublish=0,
                PublishingEnabled=True,
            )
            result = await session.create_subscription(params, self._on_publish)
            sub.server_id, sub.last_seq, sub.dead = result.SubscriptionId, None, False
            sub.last_publish = time.monotonic()
            interval_s = result.RevisedPublishingInterval / 1000
            sub.stale_after_s = max(3 * interval_s * result.RevisedMaxKeepAliveCount, 5.0)
            self._by_id[result.SubscriptionId] = sub
            for start in range(sub.handles.start, sub.handles.stop, cfg.batch_size):
                await self._monitor(
                    session, sub, range(start, min(start + cfg.batch_size, sub.handles.stop))
                )
            self.ctx.logger.info(
                "opcua %s: subscription %s: %d node(s), publishing %s ms, keep-alive %s, "
                "lifetime %s (revised by the server where they differ from the config)",
                self.ctx.name,
                result.SubscriptionId,
                len(sub.handles),
                result.RevisedPublishingInterval,
                result.RevisedMaxKeepAliveCount,
                result.RevisedLifetimeCount,
            )
        self._session_token = session.authentication_token

    def _item_request(self, handle: int) -> ua.MonitoredItemCreateRequest:
        node = self._cfg.nodes[handle]
        params = ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=node.sampling_interval_ms,
            QueueSize=node.effective_queue_size,
            DiscardOldest=True,
        )
        if node.deadband is not None:
            params.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=(
                    ua.DeadbandType.Absolute
                    if node.deadband.type == "absolute"
                    else ua.DeadbandType.Percent
                ),
                DeadbandValue=node.deadband.value,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(
                NodeId=self._node_ids[handle], AttributeId=AttributeIds.Value
            ),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=params,
        )

    async def _monitor(self, session: UaSession, sub: _Subscription, handles: range) -> None:
        requests = [self._item_request(handle) for handle in handles]
        results = await session.create_monitored_items(
            ua.CreateMonitoredItemsParameters(
                SubscriptionId=sub.server_id,
                ItemsToCreate=requests,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
            )
        )
        ctx, now = self.ctx, self._now()
        refused: list[Observation] = []
        revised: list[str] = []
        for handle, request, result in zip(handles, requests, results, strict=True):
            tag, code = self._tags[handle], int(result.StatusCode.value)
            if not result.StatusCode.is_good():
                ctx.logger.error(
                    "opcua %s: server refused to monitor %s (%s): %s",
                    ctx.name,
                    tag,
                    self._cfg.nodes[handle].node_id,
                    result.StatusCode.name,
                )
                refused.append(mapping.refused_observation(tag, ctx.name, code, now))
            elif result.RevisedQueueSize != request.RequestedParameters.QueueSize:
                revised.append(
                    f"{tag}: {request.RequestedParameters.QueueSize}->{result.RevisedQueueSize}"
                )
        if revised:
            ctx.logger.warning(
                "opcua %s: server revised the queue size of %d monitored item(s) (%s); "
                "values sampled faster than they are published may be lost",
                ctx.name,
                len(revised),
                ", ".join(revised[:10]) + (", ..." if len(revised) > 10 else ""),
            )
        self._put(refused)

    async def _on_publish(self, result: ua.PublishResult) -> None:
        """The session's publish callback: one notification message, one batch."""
        sub = self._by_id.get(result.SubscriptionId)
        if sub is None:
            return
        message = result.NotificationMessage
        now, previous = self._now(), self._last_publish_at
        sub.last_publish = time.monotonic()
        self._last_publish_at = now
        seq = message.SequenceNumber
        if sub.last_seq is not None and seq > sub.last_seq + 1:
            missing = range(sub.last_seq + 1, seq)
            try:
                await self._republish(sub, missing, previous or now)
            except Exception as exc:
                # asyncua would swallow this and acknowledge the message undelivered; the
                # messages it could not fetch again are a gap.
                self.ctx.logger.exception("opcua %s: republish failed", self.ctx.name)
                with contextlib.suppress(Exception):
                    await self._report_gap(
                        previous or now,
                        f"{len(missing)} notification message(s) of subscription "
                        f"{sub.server_id} missing; republishing failed: {exc!r}",
                    )
            # A keep-alive carries the next sequence number: everything before is settled.
            sub.last_seq = max(sub.last_seq or 0, seq - 1)
        if message.NotificationData:
            sub.last_seq = seq
            self._deliver(sub, message, now, mapping.NO_FLAGS)

    def _deliver(
        self,
        sub: _Subscription,
        message: ua.NotificationMessage,
        received: datetime,
        flags: frozenset[str],
    ) -> None:
        ctx, tags, count = self.ctx, self._tags, len(self._tags)
        batch: list[Observation] = []
        for notification in message.NotificationData:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    handle = item.ClientHandle
                    if not 0 <= handle < count:
                        continue
                    mapped = mapping.to_observation(
                        ctx.name, tags[handle], item.Value, received, flags
                    )
                    if isinstance(mapped, Observation):
                        batch.append(mapped)
                    else:
                        ctx.reject(mapped)
            elif isinstance(notification, ua.StatusChangeNotification):
                if not notification.Status.is_good():
                    ctx.logger.warning(
                        "opcua %s: subscription %s ended on the server: %s",
                        ctx.name,
                        sub.server_id,
                        notification.Status.name,
                    )
                    sub.dead = True
        self._put(batch)

    async def _republish(self, sub: _Subscription, missing: range, gap_start: datetime) -> None:
        """Ask the server again for notification messages that never arrived."""
        if sub.server_id is None or len(missing) > MAX_REPUBLISH:
            lost = len(missing)
        else:
            lost = await self._fetch_again(sub, sub.server_id, missing)
        if lost:
            await self._report_gap(
                gap_start,
                f"{lost} notification message(s) of subscription {sub.server_id} "
                "were not available for republishing",
            )

    async def _fetch_again(self, sub: _Subscription, server_id: int, missing: range) -> int:
        session, lost = self._session(), 0
        for seq in missing:
            try:
                message = await session.republish(server_id, seq)
            except UaStatusCodeError:
                message = None
            if message is None or not message.NotificationData:
                lost += 1
                continue
            sub.last_seq = max(sub.last_seq or 0, seq)
            self._deliver(sub, message, self._now(), REPLAYED)
        return lost

    async def _restore(self, gap_start: datetime) -> None:
        """After a reconnect: keep what survived on the server, recreate the rest."""
        session = self._session()
        live = [s for s in self._subs if s.server_id is not None and not s.dead]
        if live and session.authentication_token != self._session_token:
            await self._transfer(session, live, gap_start)
        elif live:
            await self._probe(session, live)
        assert self._client is not None
        self._client.uaclient.ensure_publish_loop()
        self._session_token = session.authentication_token
        dead = [s for s in self._subs if s.dead or s.server_id is None]
        if dead:
            await self._recreated(gap_start, "OPC UA session lost; subscriptions recreated", dead)
        else:
            self.ctx.logger.info("opcua %s: reconnected; subscriptions kept", self.ctx.name)

    async def _transfer(
        self, session: UaSession, subs: list[_Subscription], gap_start: datetime
    ) -> None:
        params = ua.TransferSubscriptionsParameters(
            SubscriptionIds=[s.server_id for s in subs], SendInitialValues=False
        )
        try:
            results = await session.transfer_subscriptions(params)
        except UaStatusCodeError:
            results = []
        for index, sub in enumerate(subs):
            if index >= len(results) or not results[index].StatusCode.is_good():
                sub.dead = True
                continue
            available = results[index].AvailableSequenceNumbers
            if sub.last_seq is not None and available and max(available) > sub.last_seq:
                await self._republish(sub, range(sub.last_seq + 1, max(available) + 1), gap_start)

    async def _probe(self, session: UaSession, subs: list[_Subscription]) -> None:
        """Mark subscriptions the server no longer knows (SetPublishingMode is harmless)."""
        params = ua.SetPublishingModeParameters(
            PublishingEnabled=True, SubscriptionIds=[s.server_id for s in subs]
        )
        results = await session.set_publishing_mode(params)
        for sub, status in zip(subs, results, strict=False):
            if not status.is_good():
                sub.dead = True

    async def _recreated(
        self, gap_start: datetime, reason: str, subs: list[_Subscription] | None = None
    ) -> None:
        """Recreate ``subs`` (if given), record the gap, then read every mapped node."""
        if subs:
            await self._create(subs)
        await self._report_gap(gap_start, reason)
        await self._full_read()

    async def _report_gap(self, start: datetime, reason: str) -> None:
        ctx, end = self.ctx, self._now()
        ctx.logger.warning("opcua %s: gap since %s: %s", ctx.name, start.isoformat(), reason)
        await ctx.report_gap(Gap(source=ctx.name, start=min(start, end), end=end, reason=reason))

    async def _full_read(self) -> None:
        session, ctx, step = self._session(), self.ctx, self._cfg.batch_size
        for start in range(0, len(self._node_ids), step):
            handles = range(start, min(start + step, len(self._node_ids)))
            params = ua.ReadParameters(
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[
                    ua.ReadValueId(NodeId=self._node_ids[h], AttributeId=AttributeIds.Value)
                    for h in handles
                ],
            )
            values = await session.read(params)
            now = self._now()
            batch: list[Observation] = []
            for handle, value in zip(handles, values, strict=True):
                mapped = mapping.to_observation(ctx.name, self._tags[handle], value, now, FULL_READ)
                if isinstance(mapped, Observation):
                    batch.append(mapped)
                else:
                    ctx.reject(mapped)
            self._put(batch)

    async def _supervise(self, client: Client) -> None:
        """Follow the client's state: note losses, restore after reconnects, find stale subs."""
        ctx, lost_since = self.ctx, None
        async with client.uaclient.subscribe_state() as states:
            while True:
                with contextlib.suppress(TimeoutError):
                    await states.next_change(timeout=1.0)
                if client.uaclient.state is not UaClientState.CONNECTED:
                    if lost_since is None:
                        lost_since = self._last_publish_at or self._now()
                        ctx.logger.warning("opcua %s: connection lost; reconnecting", ctx.name)
                    continue
                if (
                    lost_since is None
                    and self._session_token != self._session().authentication_token
                ):
                    lost_since = self._last_publish_at or self._now()  # reconnected unseen
                try:
                    if lost_since is not None:
                        await self._restore(lost_since)
                        lost_since = None
                    else:
                        await self._check_subscriptions()
                except (OSError, TimeoutError, UaError) as exc:
                    ctx.logger.warning("opcua %s: recovery interrupted: %r", ctx.name, exc)
                    lost_since = lost_since or self._last_publish_at or self._now()

    async def _check_subscriptions(self) -> None:
        now, session = time.monotonic(), self._session()
        stale = [s for s in self._subs if not s.dead and now - s.last_publish > s.stale_after_s]
        if stale:
            assert self._client is not None
            self._client.uaclient.ensure_publish_loop()
            await self._probe(session, stale)
            for sub in stale:
                sub.last_publish = now
        dead = [s for s in self._subs if s.dead]
        if dead:
            start = self._last_publish_at or self._now()
            await self._recreated(start, "subscription ended on the server; recreated", dead)

    # --- setpoints ---------------------------------------------------------------------

    async def write(self, tag: str, value: Any) -> None:
        """Write a setpoint and confirm it by reading it back (see ``write_setpoint``).

        Returns None to match ``WritableConnector``; success means the read-back matched.
        """
        await self.write_setpoint(tag, value)

    async def write_setpoint(self, tag: str, value: object) -> mapping.Scalar:
        """Write ``value`` with the node's data type, read it back and return what it holds.

        Raises ``UnknownSetpoint``, ``SetpointRejected`` (bad value or refused write),
        ``SetpointNotConfirmed`` (read-back differs) or ``ConnectorNotReady``. Uses the
        session of the running ``run()``; the audit record is the caller's.
        """
        client = self._client
        if self._ctx is None or client is None:
            raise ConnectorNotReady("the OPC UA connector is not running")
        setpoint = self._setpoints.get(tag)
        if setpoint is None:
            raise UnknownSetpoint(f"opcua {self.ctx.name}: no setpoint with tag {tag!r}")
        if client.uaclient.state is not UaClientState.CONNECTED:
            raise ConnectorNotReady(f"opcua {self.ctx.name}: not connected")
        known = self._variant_types.get(tag)
        if setpoint.variant_type is not None:
            known = ua.VariantType[setpoint.variant_type]
        node_id = ua.NodeId.from_string(setpoint.node_id)
        got, self._variant_types[tag] = await write_confirmed(client, node_id, value, known, tag)
        self.ctx.logger.info("opcua %s: setpoint %s = %r confirmed", self.ctx.name, tag, got)
        return got
