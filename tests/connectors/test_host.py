"""The connector host: each configured connector runs under its own supervisor, which retries
transient failures with backoff, stops a misconfigured connector without touching the others
and cancels them all on stop; ``build_specs`` validates the ``connectors`` section and names
the YAML path of a problem.

The connectors are small real plug-ins defined here (the host's extension point), passed as
``kinds`` explicitly so that the test does not depend on the installed entry points.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.base import (
    Connector,
    ConnectorAuthError,
    ConnectorConfigError,
    ConnectorContext,
    ConnectorNotReady,
    Gap,
    Observation,
    Quality,
    Rejected,
)
from connectors.host import ConnectorHost, ConnectorSpec, build_specs
from tests.conftest import FakeClock

WAIT_S = 5.0  # bound of every wait; nothing here should take more than a fraction of it
HOST_LOGGER = "connectors.host"


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1)


class SourceConfig(BaseModel):
    """The options of the test connectors: a constrained port and how often to fail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=4840, ge=1, le=65535)
    tls: bool = False
    failures: int = Field(default=0, ge=0)
    nodes: list[Endpoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tls_port(self) -> SourceConfig:
        if self.tls and self.port == 1883:
            raise ValueError("port 1883 is the plain-text MQTT port; TLS listens on 8883")
        return self


class TestConnector:
    """Counts its runs; the subclasses decide how a run ends."""

    __test__ = False  # not a test class, despite the name
    kind: ClassVar[str] = "test"
    Config: ClassVar[type[BaseModel]] = SourceConfig

    def __init__(self) -> None:
        self.attempts = 0
        self.contexts: list[ConnectorContext] = []
        self.running = asyncio.Event()
        self.cancelled = False

    async def run(self, ctx: ConnectorContext) -> None:
        self.attempts += 1
        self.contexts.append(ctx)
        assert isinstance(ctx.config, SourceConfig)
        await self.attempt(ctx, ctx.config)

    async def attempt(self, ctx: ConnectorContext, config: SourceConfig) -> None:
        raise NotImplementedError

    async def serve(self, ctx: ConnectorContext) -> None:
        """Emit one value, then read until cancelled."""
        now = ctx.clock.now()
        await ctx.emit([Observation(ctx.name, "temp", 21.5, Quality.good, now, now)])
        self.running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class Flaky(TestConnector):
    """Not ready for its first ``failures`` runs, then runs."""

    kind = "flaky"

    async def attempt(self, ctx: ConnectorContext, config: SourceConfig) -> None:
        if self.attempts <= config.failures:
            raise ConnectorNotReady(f"source not ready (attempt {self.attempts})")
        await self.serve(ctx)


class Crashy(TestConnector):
    """Hits a bug on its first run, then runs."""

    kind = "crashy"

    async def attempt(self, ctx: ConnectorContext, config: SourceConfig) -> None:
        if self.attempts == 1:
            raise RuntimeError("driver bug")
        await self.serve(ctx)


class Misconfigured(TestConnector):
    kind = "misconfigured"

    async def attempt(self, ctx: ConnectorContext, config: SourceConfig) -> None:
        raise ConnectorConfigError("options.nodes[0].node: no such node on the server")


class Refused(TestConnector):
    kind = "refused"

    async def attempt(self, ctx: ConnectorContext, config: SourceConfig) -> None:
        raise ConnectorAuthError("certificate rejected by the server")


class Finishing(TestConnector):
    """Returns on its own (a replay that reached its end)."""

    kind = "finishing"

    async def attempt(self, ctx: ConnectorContext, config: SourceConfig) -> None:
        return None


KINDS: dict[str, type[Connector]] = {
    cls.kind: cls for cls in (Flaky, Crashy, Misconfigured, Refused, Finishing)
}


class Sinks:
    """The MES side of the contract, collecting what the connectors hand over."""

    def __init__(self) -> None:
        self.emitted: list[Observation] = []
        self.gaps: list[Gap] = []
        self.rejected: list[Rejected] = []

    async def emit(self, observations: Sequence[Observation]) -> None:
        self.emitted.extend(observations)

    async def report_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)


HostFactory = Callable[..., ConnectorHost]


@pytest.fixture
def sinks() -> Sinks:
    return Sinks()


@pytest.fixture
async def make_host(sinks: Sinks, clock: FakeClock) -> AsyncIterator[HostFactory]:
    """Build and start a host for ``entries`` (tiny backoff unless given); stopped at the end."""
    hosts: list[ConnectorHost] = []

    def make(entries: Sequence[Mapping[str, Any]], **options: Any) -> ConnectorHost:
        options.setdefault("initial_backoff_s", 0.01)
        options.setdefault("max_backoff_s", 0.04)
        host = ConnectorHost(
            build_specs(entries, KINDS),
            emit=sinks.emit,
            report_gap=sinks.report_gap,
            reject=sinks.reject,
            clock=clock,
            kinds=KINDS,
            **options,
        )
        hosts.append(host)
        host.start()
        return host

    yield make
    for host in hosts:
        await asyncio.wait_for(host.stop(), WAIT_S)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``predicate`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def instance(host: ConnectorHost, name: str) -> TestConnector:
    connector = host.instances[name]
    assert isinstance(connector, TestConnector)
    return connector


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(HOST_LOGGER) and r.levelno == level
    ]


# -- supervision ---------------------------------------------------------------------------


async def test_a_connector_not_ready_is_retried_until_it_runs(
    make_host: HostFactory, sinks: Sinks, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOST_LOGGER)
    host = make_host([{"name": "plc-1", "kind": "flaky", "options": {"failures": 2}}])
    flaky = instance(host, "plc-1")
    await asyncio.wait_for(flaky.running.wait(), WAIT_S)

    health = host.health["plc-1"]
    assert (health.name, health.kind, health.status, health.detail) == (
        "plc-1",
        "flaky",
        "running",
        None,
    )
    assert health.restarts == 2
    assert health.since is not None
    assert flaky.attempts == 3
    # Every run gets the same context: its name, validated options, own logger, the sinks.
    ctx = flaky.contexts[-1]
    assert ctx.name == "plc-1"
    assert ctx.config == SourceConfig(failures=2)
    assert ctx.logger.name == f"{HOST_LOGGER}.plc-1"
    assert ctx.clock is clock
    assert [o.source for o in sinks.emitted] == ["plc-1"]
    # A transient failure is a warning without a traceback, never an error.
    warnings = messages(caplog, logging.WARNING)
    assert warnings
    assert warnings[0] == "connector plc-1 down: source not ready (attempt 1); retrying"
    assert not messages(caplog, logging.ERROR)
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_connector_waits_out_its_backoff_before_retrying(
    make_host: HostFactory,
) -> None:
    host = make_host(
        [{"name": "plc-1", "kind": "flaky", "options": {"failures": 5}}],
        initial_backoff_s=3600.0,
        max_backoff_s=3600.0,
    )
    await until(lambda: host.health["plc-1"].status == "down", "plc-1 down")
    for _ in range(20):
        await asyncio.sleep(0.005)  # plenty of chances for a retry that skips the backoff
    health = host.health["plc-1"]
    assert (health.status, health.detail, health.restarts) == (
        "down",
        "ConnectorNotReady: source not ready (attempt 1)",
        1,
    )
    assert instance(host, "plc-1").attempts == 1
    # stop() does not wait for the backoff to run out.
    await asyncio.wait_for(host.stop(), WAIT_S)
    assert host.health["plc-1"].status == "stopped"


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        (
            "misconfigured",
            "ConnectorConfigError: options.nodes[0].node: no such node on the server",
        ),
        ("refused", "ConnectorAuthError: certificate rejected by the server"),
    ],
)
async def test_a_fatal_error_stops_only_that_connector(
    make_host: HostFactory,
    sinks: Sinks,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    detail: str,
) -> None:
    caplog.set_level(logging.INFO, logger=HOST_LOGGER)
    host = make_host(
        [
            {"name": "plc-1", "kind": "flaky"},
            {"name": "broken", "kind": kind},
            {"name": "plc-2", "kind": "flaky", "options": {"failures": 1}},
        ]
    )
    await until(lambda: host.health["broken"].status == "failed", "broken to fail")
    for name in ("plc-1", "plc-2"):
        await asyncio.wait_for(instance(host, name).running.wait(), WAIT_S)
    # Ten backoffs' worth of time: a retry of the failed connector would have happened.
    await asyncio.sleep(0.1)

    broken = host.health["broken"]
    assert (broken.status, broken.detail, broken.restarts) == ("failed", detail, 0)
    assert instance(host, "broken").attempts == 1
    assert [(h.status, h.restarts) for n, h in host.health.items() if n != "broken"] == [
        ("running", 0),
        ("running", 1),
    ]
    assert not any(instance(host, name).cancelled for name in ("plc-1", "plc-2"))
    assert sorted(o.source for o in sinks.emitted) == ["plc-1", "plc-2"]
    assert messages(caplog, logging.ERROR) == [
        f"connector broken stopped: {detail.split(': ', 1)[1]}"
    ]


async def test_an_unexpected_exception_is_retried(
    make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOST_LOGGER)
    host = make_host([{"name": "plc-1", "kind": "crashy"}])
    crashy = instance(host, "plc-1")
    await asyncio.wait_for(crashy.running.wait(), WAIT_S)

    health = host.health["plc-1"]
    assert (health.status, health.detail, health.restarts) == ("running", None, 1)
    assert crashy.attempts == 2
    # A bug is an error with its traceback (unlike a source that is not ready).
    errors = [
        r for r in caplog.records if r.name.startswith(HOST_LOGGER) and r.levelno == logging.ERROR
    ]
    assert [r.getMessage() for r in errors] == ["connector plc-1 down: driver bug; retrying"]
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


async def test_a_connector_that_returns_is_stopped_not_restarted(
    make_host: HostFactory,
) -> None:
    host = make_host([{"name": "replay", "kind": "finishing"}])
    await until(lambda: host.health["replay"].status == "stopped", "replay to finish")
    await asyncio.sleep(0.05)  # several backoffs: a restart would show
    assert instance(host, "replay").attempts == 1
    assert host.health["replay"].restarts == 0


async def test_stop_cancels_every_connector(make_host: HostFactory, clock: FakeClock) -> None:
    host = make_host(
        [
            {"name": "plc-1", "kind": "flaky"},
            {"name": "plc-2", "kind": "crashy"},
            {"name": "broken", "kind": "misconfigured"},
        ]
    )
    for name in ("plc-1", "plc-2"):
        await asyncio.wait_for(instance(host, name).running.wait(), WAIT_S)
    await until(lambda: host.health["broken"].status == "failed", "broken to fail")
    clock.advance(timedelta(minutes=1))

    await asyncio.wait_for(host.stop(), WAIT_S)

    assert {name: h.status for name, h in host.health.items()} == {
        "plc-1": "stopped",
        "plc-2": "stopped",
        "broken": "failed",  # still says why it never ran
    }
    assert instance(host, "plc-1").cancelled
    assert instance(host, "plc-2").cancelled
    supervisors = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    assert not {"connector-plc-1", "connector-plc-2", "connector-broken"} & supervisors
    # Stopping twice is harmless.
    await asyncio.wait_for(host.stop(), WAIT_S)


async def test_an_outage_is_logged_once_down_and_once_back(
    make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HOST_LOGGER)
    host = make_host([{"name": "plc-1", "kind": "flaky", "options": {"failures": 3}}])
    await asyncio.wait_for(instance(host, "plc-1").running.wait(), WAIT_S)
    logged = messages(caplog, logging.WARNING) + messages(caplog, logging.INFO)
    assert [m for m in logged if " down: " in m] == [
        "connector plc-1 down: source not ready (attempt 1); retrying"
    ]
    assert [m for m in logged if "running again" in m] == ["connector plc-1 (flaky) running again"]


# -- build_specs ---------------------------------------------------------------------------


def test_build_specs_validates_each_connector() -> None:
    specs = build_specs(
        [
            {"name": "plc-1", "kind": "flaky", "options": {"port": 4841, "nodes": [{"node": "a"}]}},
            {"name": "broker-1", "kind": "crashy"},
        ],
        KINDS,
    )
    assert specs == [
        ConnectorSpec("plc-1", "flaky", SourceConfig(port=4841, nodes=[Endpoint(node="a")])),
        ConnectorSpec("broker-1", "crashy", SourceConfig()),
    ]
    assert build_specs([], KINDS) == []


FLAKY = {"name": "plc-1", "kind": "flaky"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [FLAKY, {"name": "plc-2", "kind": "flaky", "options": {"port": 70000}}],
            r"^connectors\[1\]\.options\.port: Input should be less than or equal to 65535$",
        ),
        (
            [{**FLAKY, "options": {"port": "opc.tcp"}}],
            r"^connectors\[0\]\.options\.port: Input should be a valid integer",
        ),
        (
            [{**FLAKY, "options": {"endpiont": "opc.tcp://plc:4840"}}],
            r"^connectors\[0\]\.options\.endpiont: Extra inputs are not permitted$",
        ),
        (
            [{**FLAKY, "options": {"nodes": [{"node": "a"}, {"node": ""}]}}],
            r"^connectors\[0\]\.options\.nodes.*node: String should have at least 1 character",
        ),
        (
            [{**FLAKY, "options": {"tls": True, "port": 1883}}],
            r"^connectors\[0\]\.options: Value error, port 1883 is the plain-text MQTT port",
        ),
        (
            [{**FLAKY, "options": ["port", 4840]}],
            r"^connectors\[0\]\.options: Input should be a valid dictionary",
        ),
        ([FLAKY, {"kind": "flaky"}], r"^connectors\[1\]\.name: a connector needs a name$"),
        ([{**FLAKY, "name": ""}], r"^connectors\[0\]\.name: a connector needs a name$"),
        ([{**FLAKY, "name": 7}], r"^connectors\[0\]\.name: a connector needs a name$"),
        ([FLAKY, dict(FLAKY)], r"^connectors\[1\]\.name: 'plc-1' is used twice$"),
        (
            [FLAKY, {"name": "plc-2", "kind": "opcx"}],
            r"^connectors\[1\]\.kind: 'opcx' is not one of \['crashy', 'finishing', 'flaky', "
            r"'misconfigured', 'refused'\] \(installed connectors\)$",
        ),
        ([{"name": "plc-1"}], r"^connectors\[0\]\.kind: None is not one of "),
        (
            [{**FLAKY, "option": {}, "enabled": True}],
            r"^connectors\[0\]: unknown keys \['enabled', 'option'\]$",
        ),
    ],
)
def test_build_specs_errors_name_the_yaml_path(entries: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConnectorConfigError, match=message):
        build_specs(entries, KINDS)


def test_build_specs_errors_use_the_given_path() -> None:
    with pytest.raises(ConnectorConfigError, match=r"^telemetry\.connectors\[0\]\.options\.port: "):
        build_specs([{**FLAKY, "options": {"port": 0}}], KINDS, path="telemetry.connectors")


def test_build_specs_without_installed_kinds_refuses_every_kind() -> None:
    with pytest.raises(ConnectorConfigError, match=r"'flaky' is not one of \[\]"):
        build_specs([FLAKY], {})


def test_an_entry_that_is_not_a_mapping_names_its_path() -> None:
    with pytest.raises(ConnectorConfigError, match=r"^connectors\[0\]"):
        build_specs(["plc-1"], KINDS)  # type: ignore[list-item]
