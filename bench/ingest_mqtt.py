"""MQTT ingest benchmark: ``mes ingest`` through Mosquitto against a bare paho subscriber.

What: the real ``mes ingest`` command (own process, ``--connector``, one MQTT connector: MQTT 5,
QoS 1, fixed client id, persistent session, PUBACK after commit) on a fresh PostgreSQL database
stores what publishers in other processes (this file, ``--role publish``: paho 2.x, MQTT 5,
QoS 1, at most 500 unacknowledged, unpaced or paced) send through a private Mosquitto
(``tests.support.mosquitto``: free loopback port, max_queued_messages 1,000,000,
max_inflight_messages 500, persistence off unless ``--persistence``; a fresh broker per case,
never the shared one on 1883). ``--tags`` tags per family (1,000). Cases:

1. ``json1``: ``{"ts": ISO 8601 (us), "value"}`` per message, one tag per topic ``bench/s/t0000``;
2. ``json10``: a JSON array of 10 ``{"tag", "ts", "value"}`` samples (``tag_field``);
3. ``spb10``: Sparkplug B DDATA of 10 Double metrics by alias (2 edge nodes, 100 devices;
   NBIRTH and DBIRTHs first, their 1,000 birth values are stored samples too);
4. ``shared``: case 1 into two ``mes ingest`` processes on one shared subscription.

How. Throughput (phase A) is a backlog drain: the ingest processes subscribe (a warm-up value
proves it), stop (SIGTERM; the broker keeps their sessions), ``--publishers`` (2) publish the
case's messages, the broker queues them, and the ingest starts again and drains. A Python
publisher costs about one core per 10,000 msg/s here, so running it during the window would
take half of this 2-core machine from what is measured (``--live`` does that instead).
Sustained samples/s = samples / (last commit - first receipt): ``max(telemetry_latest.
stored_at)`` (stamped in the storing transaction just before COMMIT) minus the phase's
``min(received_ts)``. Zero loss: rows of ``telemetry_sample`` == samples published, exactly;
the wait ends when each tag's last value is in ``telemetry_latest`` and the count matches, or
``--settle`` s after the last commit. Latency (phase B): one publisher paced at
``--latency-load`` (0.5) of phase A's rate for ``--latency-seconds`` (8), ingest running:

- end-to-end = ``stored_at - ts`` (publisher clock at publish -> ingest clock at commit, one
  machine) of every new (tag, source_ts) seen in ``telemetry_latest`` polled every 50 ms: the
  newest sample of its tag in its batch (an older one of the same tag in that batch waited up
  to one batch interval longer; batches overwritten between polls are skipped);
- receipt = ``received_ts - ts`` (publish -> connector's receipt), every sample.

Baseline, same run, same publishers and backlog method, case 1 messages: a bare paho
subscriber (``--role bare``: MQTT 5, persistent session, auto ack, ``json.loads``, nothing
else) at QoS 1 and at QoS 0 (broker ``queue_qos0_messages true``); msg/s first to last
message. CPU in cores from /proc over first commit -> all stored: ingest process(es), the
database's PostgreSQL backends, broker, whole machine (the host is shared: others count).

Targets (the issue), per ingest process, QoS 1, zero loss: case 1 >= 0.7 x bare QoS 1 (about
21,000 msg/s; QoS 0 about 37,000); cases 2 and 3 >= 100,000 samples/s; case 4 >= 1.7 x case 1.
For comparison: ThingsBoard reports 15,000 data points/s on 2 vCPU with Kafka and PostgreSQL
at 95% CPU. Figures and PASS/FAIL lines are printed, never asserted.

Run from the repository root::

    .venv/bin/python bench/ingest_mqtt.py                           # about 5 minutes
    .venv/bin/python bench/ingest_mqtt.py --cases json1 --messages 20000 --bare-messages 20000

Setup: database ``mes_bench_ingest`` dropped and created through ``--admin-dsn``, migrated
(``mes.migrate.upgrade``), tags registered, samples truncated between cases, dropped at the
end with the temp dir (configs, ingest and broker logs) unless ``--keep``. Every process
started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg  # type: ignore[import-untyped]
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.engine import make_url

from connectors.mqtt import sparkplug as spb
from connectors.mqtt.sparkplug import DataType, Metric, Payload

REPO = Path(__file__).resolve().parents[1]
ADMIN_DSN = "postgresql://root@127.0.0.1:5432/test"
BENCH_DB = "mes_bench_ingest"
HOST = "127.0.0.1"
JSON_TAG = "BENCH/MQTT/t{:04d}"
WARM_TOPIC, WARM_TAG = "bench/s/warmup", "BENCH/MQTT/warmup"
GROUP, EDGES, PER = "BENCH", 2, 10  # Sparkplug group, edge nodes; samples per batch message
WINDOW = 500  # publisher's unacknowledged QoS 1 messages (= the broker's max_inflight_messages)
POLL_S, BARE_IDLE_S, WAIT_S = 0.05, 10.0, 60.0
TARGET_RATIO, TARGET_BATCH, TARGET_SHARED = 0.7, 100_000, 1.7
TICK = os.sysconf("SC_CLK_TCK")
CPU = ("ingest", "postgres", "broker", "machine")
SUBSCRIPTIONS: dict[str, dict[str, Any]] = {
    "single": {"filter": "bench/s/+", "codec": "json", "tag": "BENCH/MQTT/{2}"},
    "array": {"filter": "bench/a/+", "codec": "json", "tag_field": "tag"},
    "sparkplug": {"filter": f"spBv1.0/{GROUP}/#", "codec": "sparkplug"},
}


class SetupError(RuntimeError):
    """A process or the database did not come up; the message says which."""


# --- messages (publisher side) ------------------------------------------------------------------


def iso(us: int) -> str:
    whole = datetime.fromtimestamp(us // 1_000_000, UTC)
    return whole.replace(microsecond=us % 1_000_000).isoformat()


class Single:
    """One sample per message, one tag per topic. ``part`` of ``parts`` takes a slice of the
    tags. Timestamps rise strictly per tag: (tag, source_ts, source) is a stored sample's key."""

    per = 1

    def __init__(self, tags: int, part: int = 0, parts: int = 1) -> None:
        n = tags // self.per
        self.ids = range(part * n // parts, (part + 1) * n // parts)
        self.topics = [f"bench/{'s' if self.per == 1 else 'a'}/t{i:04d}" for i in self.ids]
        self.last = [0] * len(self.ids)

    @property
    def rounds(self) -> int:
        """Consecutive messages that carry every tag of this part once."""
        return len(self.ids)

    def births(self) -> list[tuple[str, bytes]]:
        return []

    def stamp(self, k: int, scale: int) -> int:
        self.last[k] = max(time.time_ns() // scale, self.last[k] + 1)
        return self.last[k]

    def message(self, i: int) -> tuple[str, bytes, float]:
        k = i % self.rounds
        us = self.stamp(k, 1000)
        return self.topics[k], f'{{"ts":"{iso(us)}","value":{i % 1000}.5}}'.encode(), us / 1e6


class Array(Single):
    """A JSON array of 10 samples of 10 tags."""

    per = PER

    def message(self, i: int) -> tuple[str, bytes, float]:
        k = i % self.rounds
        us, first = self.stamp(k, 1000), self.ids[k] * PER
        ts, v = iso(us), i % 1000
        body = ",".join(
            f'{{"tag":"{JSON_TAG.format(first + j)}","ts":"{ts}","value":{v}.{j}}}'
            for j in range(PER)
        )
        return self.topics[k], f"[{body}]".encode(), us / 1e6


def spb_device(d: int, tags: int) -> tuple[str, str]:
    """(edge node, device) of device number ``d``: the devices split evenly over the nodes."""
    return f"E{d * EDGES // (tags // PER)}", f"D{d:03d}"


class Sparkplug(Single):
    """Edge nodes of 10-Double-metric devices; births name and alias, DDATA by alias; one
    ``seq`` per edge node; a part publishes whole edge nodes."""

    per = PER

    def __init__(self, tags: int, part: int = 0, parts: int = 1) -> None:
        super().__init__(tags, part, parts)
        self.nodes = [spb_device(d, tags) for d in self.ids]
        self.topics = [spb.topic_name(GROUP, "DDATA", e, d) for e, d in self.nodes]
        self.seq: dict[str, int] = {}

    def payload(self, ms: int, node: str, metrics: list[Metric]) -> bytes:
        seq = self.seq.get(node, 0)
        self.seq[node] = (seq + 1) % spb.SEQ_MODULO
        return spb.encode_payload(Payload(ms, seq, metrics))

    def metrics(self, k: int, ms: int, value: float, birth: bool) -> list[Metric]:
        alias = self.ids[k] * PER + 1
        name = [f"m{j}" if birth else None for j in range(PER)]
        return [Metric(name[j], DataType.Double, value + j / 10, alias + j, ms) for j in range(PER)]

    def births(self) -> list[tuple[str, bytes]]:
        ms, out, self.seq = time.time_ns() // 1_000_000, [], {}
        for k, (node, device) in enumerate(self.nodes):
            if node not in self.seq:
                control = [Metric(spb.BDSEQ_METRIC, DataType.Int64, 0),
                           Metric(spb.REBIRTH_METRIC, DataType.Boolean, False)]  # fmt: skip
                out.append((spb.topic_name(GROUP, "NBIRTH", node), self.payload(ms, node, control)))
            birth = self.payload(ms, node, self.metrics(k, ms, 0.0, True))
            out.append((spb.topic_name(GROUP, "DBIRTH", node, device), birth))
            self.last[k] = ms
        return out

    def message(self, i: int) -> tuple[str, bytes, float]:
        k = i % self.rounds
        ms = self.stamp(k, 1_000_000)
        body = self.payload(ms, self.nodes[k][0], self.metrics(k, ms, float(i % 1000), False))
        return self.topics[k], body, ms / 1000


KINDS: dict[str, type[Single]] = {"single": Single, "array": Array, "sparkplug": Sparkplug}


def all_tags(tags: int) -> list[str]:
    names = [JSON_TAG.format(i) for i in range(tags)]
    for d in range(tags // PER):
        node, device = spb_device(d, tags)
        names += [f"{GROUP}/{node}/{device}/m{j}" for j in range(PER)]
    return [*names, WARM_TAG]


# --- child processes: publisher and bare subscriber ---------------------------------------------


def publisher_main(spec: dict[str, Any]) -> None:
    """Publish births then ``count`` messages (unpaced, or ``rate`` msg/s); print a JSON line:
    counts, wall times, first data ts, the ts that starts the last round over the tags, CPU s."""
    source = KINDS[spec["kind"]](spec["tags"], spec["part"], spec["parts"])
    count, rate, qos = spec["count"], spec["rate"], spec["qos"]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec["id"], protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    acked = sent = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    def pump(timeout: float) -> None:
        if client.loop(timeout) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SystemExit("publisher: lost the broker")

    def send(topic: str, payload: bytes) -> None:
        nonlocal sent
        while sent - acked >= WINDOW:
            pump(0.01)
        if (rc := client.publish(topic, payload, qos).rc) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SystemExit(f"publisher: publish returned {rc}")
        sent += 1
        if not sent % 64:
            pump(0)

    client.on_publish = on_publish
    client.connect(HOST, spec["port"], keepalive=60)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        pump(0.05)
        if time.monotonic() > deadline:
            raise SystemExit("publisher: no CONNACK in 10 s")
    cpu0, start = time.process_time(), time.time()
    births = source.births()
    for topic, payload in births:
        send(topic, payload)
    first_ts = final_min = 0.0
    final_at, t0 = max(0, count - source.rounds), time.monotonic()
    for i in range(count):
        while rate and (wait := t0 + i / rate - time.monotonic()) > 0:
            pump(min(wait, 0.005))
        topic, payload, ts = source.message(i)
        first_ts = first_ts or ts
        final_min = ts if i == final_at else final_min
        send(topic, payload)
    published, deadline = time.time(), time.monotonic() + WAIT_S
    while acked < sent and time.monotonic() < deadline:
        pump(0.05)
    samples = count * source.per + (len(births) and source.rounds * PER)
    cpu = time.process_time() - cpu0
    print(json.dumps({"sent": sent, "acked": acked, "samples": samples, "start": start,
                      "published": published, "end": time.time(), "first_ts": first_ts,
                      "final_min": final_min, "cpu": cpu}), flush=True)  # fmt: skip
    client.disconnect()


def bare_main(spec: dict[str, Any]) -> None:
    """Subscribe to the case 1 topics with a persistent session and print "ready"; with
    ``backlog``, disconnect and reconnect on a line from stdin. Decode and count each message;
    print a JSON line once all came or nothing came for ``BARE_IDLE_S``."""
    expected, qos = spec["count"], spec["qos"]
    received, first, last = 0, 0.0, 0.0
    done, subscribed = threading.Event(), threading.Event()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        json.loads(message.payload)
        last = time.time()
        first = first or last
        received += 1
        if received >= expected:
            done.set()

    def connect() -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare", protocol=mqtt.MQTTv5)
        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect(HOST, spec["port"], 60, clean_start=False, properties=props)
        client.loop_start()
        return client

    client = connect()
    client.subscribe(SUBSCRIPTIONS["single"]["filter"], qos)
    subscribed.wait(10)
    print("ready", flush=True)
    if spec["backlog"]:
        client.disconnect()
        client.loop_stop()
        sys.stdin.readline()
        client = connect()
    cpu0, started = time.process_time(), time.time()
    while not done.wait(0.5):
        now = time.time()
        if (received and now - last > BARE_IDLE_S) or now - started > 600:
            break
    cpu = time.process_time() - cpu0
    print(json.dumps({"received": received, "first": first, "last": last, "cpu": cpu}), flush=True)
    client.disconnect()
    client.loop_stop()


# --- parent: processes, CPU ----------------------------------------------------------------------

PROCS: list[Any] = []
PIPE = asyncio.subprocess.PIPE


def proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads); 0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (OSError, TypeError):
        return 0.0
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICK


async def spawn(*argv: str, out: Any = PIPE, env: dict[str, str] | None = None) -> Any:
    err = asyncio.subprocess.STDOUT if env else None  # ingest: its log; children: ours
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=env, stdin=PIPE, stdout=out, stderr=err
    )
    PROCS.append(proc)
    return proc


async def stop(proc: Any, grace: float = 20.0) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def child(role: str, spec: dict[str, Any]) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        role,
        "--spec",
        json.dumps(spec),
    ]


def start_broker(directory: Path, args: argparse.Namespace, extra: str = "") -> Any:
    sys.path.insert(0, str(REPO))
    from tests.support.mosquitto import PrivateMosquitto

    options = {"persistence": args.persistence, "max_inflight_messages": args.inflight}
    broker = PrivateMosquitto(directory, extra_config=extra, **options)
    broker.start()
    return broker


def open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    kind: str
    subs: tuple[str, ...]
    processes: int = 1


CASES = (
    Case("json1", "JSON, 1 sample/msg", "single", ("single",)),
    Case("json10", "JSON array, 10 samples/msg", "array", ("single", "array")),
    Case("spb10", "Sparkplug B DDATA, 10 metrics/msg", "sparkplug", ("single", "sparkplug")),
    Case("shared", "JSON, 1 sample/msg, 2 processes, $share", "single", ("single",), 2),
)


@dataclass
class Phase:
    samples: int
    stored: int
    rate: float  # stored samples/s (phase B: offered)
    pub_rate: float  # messages/s the publishers achieved
    cpu: dict[str, float]
    span: float  # first receipt -> last commit, s
    tail: float  # last PUBACK to a publisher -> last commit, s


@dataclass
class Result:
    case: Case
    a: Phase
    b: Phase | None = None
    latency: list[float] = field(default_factory=list)
    receipt: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return (self.b or self.a).samples - (self.b or self.a).stored


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, url: str, db_name: str) -> None:
        self.args, self.tmp, self.url, self.db_name = args, tmp, url, db_name
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.conn: Any = None
        self.warm_id = 0
        self.ingests: list[Any] = []
        self.running: tuple[Path, list[str]] = (tmp, [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
        env |= {"MES_DATABASE_URL": url, "MES_VAR_DIR": str(tmp / "var"), "MES_ENV": "test"}
        self.env = env | {"MES_JWT_SECRET": secrets.token_urlsafe(48)}

    async def admin(self, *sql: str) -> None:
        conn = await asyncpg.connect(self.args.admin_dsn)
        try:
            for statement in sql:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def prepare(self) -> None:
        from mes.db import Database
        from mes.migrate import upgrade
        from mes.telemetry.config import TagSpec, register_tags

        drop = f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'
        await self.admin(drop, f'CREATE DATABASE "{self.db_name}"')
        db = Database.from_url(self.url)
        try:
            await upgrade(db.engine)
            ids = await register_tags(db, [TagSpec(tag=t) for t in all_tags(self.args.tags)])
        finally:
            await db.dispose()
        self.warm_id = ids[WARM_TAG]
        self.conn = await asyncpg.connect(self.dsn)

    async def snapshot(self, named: dict[str, list[int | None]]) -> tuple[Any, ...]:
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() "
            "AND coalesce(leader_pid, 0) <> pg_backend_pid()",
            self.db_name,
        )
        cpu = {k: sum(proc_cpu(p) for p in v) for k, v in named.items()}
        return time.monotonic(), machine_busy(), cpu, {r[0]: proc_cpu(r[0]) for r in rows}

    @staticmethod
    def cores(a: tuple[Any, ...], b: tuple[Any, ...]) -> dict[str, float]:
        wall = b[0] - a[0]
        out = {k: (b[2][k] - a[2][k]) / wall for k in b[2]}
        out["postgres"] = sum(v - a[3].get(p, 0.0) for p, v in b[3].items()) / wall
        return out | {"machine": (b[1] - a[1]) / wall}

    async def count(self) -> int:
        sql = "SELECT count(*) FROM telemetry_sample WHERE tag_id <> $1"
        return int(await self.conn.fetchval(sql, self.warm_id))

    async def wait_stored(self, final_min: float, expected: int) -> tuple[int, datetime]:
        """Until each tag's last value of the run is stored and the count is ``expected``, or
        nothing was committed for ``--settle`` s: (samples stored, last commit)."""
        since, seen, changed = datetime.fromtimestamp(final_min, UTC), None, time.monotonic()
        while True:
            done, last = await self.conn.fetchrow(
                "SELECT count(*) FILTER (WHERE source_ts >= $1), max(stored_at) "
                "FROM telemetry_latest",
                since,
            )
            if last != seen:
                seen, changed = last, time.monotonic()
            if done >= self.args.tags and (stored := await self.count()) >= expected:
                return stored, last
            if time.monotonic() - changed > self.args.settle:
                return await self.count(), last
            await asyncio.sleep(0.25 if done >= self.args.tags else 0.1)

    async def first_commit(self, since: float) -> None:
        sql = "SELECT count(*) FROM telemetry_latest WHERE source_ts >= $1"
        deadline = time.monotonic() + WAIT_S
        while not await self.conn.fetchval(sql, datetime.fromtimestamp(since, UTC)):
            if time.monotonic() > deadline:
                raise SetupError(f"nothing stored {WAIT_S:.0f} s after the ingest restart")
            await asyncio.sleep(POLL_S)

    async def warm_up(self, port: int, sources: list[str]) -> None:
        """Publish a warm-up value every 0.3 s until every ingest process stored one."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        await asyncio.to_thread(client.connect, HOST, port)
        client.loop_start()
        try:
            for _ in range(int(WAIT_S / 0.3)):
                value = {"ts": datetime.now(UTC).isoformat(), "value": 0}
                client.publish(WARM_TOPIC, json.dumps(value), 1)
                await asyncio.sleep(0.3)
                rows = await self.conn.fetch(
                    "SELECT DISTINCT source FROM telemetry_sample WHERE tag_id = $1", self.warm_id
                )
                if {r[0] for r in rows} >= set(sources):
                    return
        finally:
            client.disconnect()
            client.loop_stop()
        raise SetupError(f"ingest {', '.join(sources)} stored no warm-up value in {WAIT_S} s")

    def write_config(self, case: Case, port: int) -> tuple[Path, list[str]]:
        names = [f"bench-{case.key}-{chr(97 + i)}" for i in range(case.processes)]
        share = {"shared_group": "bench"} if case.processes > 1 else {}
        subs = [SUBSCRIPTIONS[s] | share for s in case.subs]
        options = {"host": HOST, "port": port, "protocol": "5", "subscriptions": subs}
        connectors = [
            {"name": n, "kind": "mqtt", "options": options | {"client_id": n}} for n in names
        ]
        path = self.tmp / f"telemetry-{case.key}.yaml"
        doc = {"tags": [{"tag": t} for t in all_tags(self.args.tags)], "connectors": connectors}
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path, names

    async def start_ingests(self, config: Path, names: list[str]) -> None:
        mes, self.running = str(Path(sys.executable).parent / "mes"), (config, names)
        for name in names:
            spool = str(self.tmp / f"spool-{name}.db")
            with open_log(self.tmp / f"ingest-{name}.log") as log:
                argv = [mes, "ingest", "--connector", name, "--config", str(config)]
                self.ingests.append(await spawn(*argv, "--spool", spool, out=log, env=self.env))

    async def stop_ingests(self) -> list[int]:
        for proc in self.ingests:
            await stop(proc)
        codes, self.ingests = [p.returncode for p in self.ingests], []
        return codes

    async def publish(self, spec: dict[str, Any], parts: int) -> dict[str, Any]:
        """Run ``parts`` publishers at once (each its slice of the tags); merged results."""
        procs = [
            await spawn(*child("publish", spec | {"part": p, "parts": parts, "id": f"pub-{p}"}))
            for p in range(parts)
        ]
        results = []
        for proc in procs:
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise SetupError(f"publisher exited with {proc.returncode}")
            results.append(json.loads(out.decode().splitlines()[-1]))
        if any(r["acked"] != r["sent"] for r in results):
            raise SetupError("the broker did not acknowledge every message in time")
        merged = {k: sum(r[k] for r in results) for k in ("sent", "samples", "cpu")}
        merged |= {k: min(r[k] for r in results) for k in ("start", "first_ts", "final_min")}
        return merged | {k: max(r[k] for r in results) for k in ("published", "end")}

    async def bare(self, qos: int) -> dict[str, Any]:
        extra = "queue_qos0_messages true" if qos == 0 else ""
        path = self.tmp / f"broker-bare{qos}"
        broker = await asyncio.to_thread(start_broker, path, self.args, extra)
        backlog, count = not self.args.live, self.args.bare_messages
        spec = {"port": broker.port, "qos": qos, "count": count, "backlog": backlog}
        sub = await spawn(*child("bare", spec))
        try:
            if (await asyncio.wait_for(sub.stdout.readline(), WAIT_S)).strip() != b"ready":
                raise SetupError("bare subscriber did not subscribe")
            spec = {"port": broker.port, "kind": "single", "tags": self.args.tags, "rate": 0}
            parts = self.args.publishers if backlog else 1
            pub = await self.publish(spec | {"qos": 1, "count": count // parts}, parts)
            a = await self.snapshot({"broker": [broker.pid]})
            out, _ = await sub.communicate(b"go\n")
            b = await self.snapshot({"broker": [broker.pid]})
        finally:
            await stop(sub)
            broker.stop()
        res: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
        span = res["last"] - res["first"]
        res["rate"] = (res["received"] - 1) / span if span > 0 else math.nan
        res["sub_cores"] = res["cpu"] / (res["last"] - (res["first"] if backlog else pub["start"]))
        res["pub_rate"] = pub["sent"] / (pub["published"] - pub["start"])
        return res | {"broker_cores": self.cores(a, b)["broker"], "count": pub["sent"]}

    async def phase(
        self, case: Case, port: int, pids: dict[str, Any], count: int, rate: float, before: int
    ) -> tuple[Phase, dict[str, Any]]:
        spec = {"port": port, "kind": case.kind, "tags": self.args.tags, "rate": rate, "qos": 1}
        backlog = not rate and not self.args.live
        parts = self.args.publishers if backlog else 1
        if backlog:
            config, names = self.running
            await self.stop_ingests()
            pub = await self.publish(spec | {"count": count // parts}, parts)
            await self.start_ingests(config, names)
            pids["ingest"] = [p.pid for p in self.ingests]
            await self.first_commit(pub["start"])
            a = await self.snapshot(pids)
        else:
            a = await self.snapshot(pids)
            pub = await self.publish(spec | {"count": count}, parts)
        samples = before + pub["samples"]
        stored, last = await self.wait_stored(pub["final_min"], samples)
        b = await self.snapshot(pids)
        first = await self.conn.fetchval(
            "SELECT min(received_ts) FROM telemetry_sample WHERE source_ts >= $1 AND tag_id <> $2",
            datetime.fromtimestamp(pub["start"] - 0.002, UTC),
            self.warm_id,
        )
        span = (last - first).total_seconds()
        rate = pub["samples"] / span if span > 0 else math.nan
        pub_rate = pub["sent"] / (pub["published"] - pub["start"])
        tail = last.timestamp() - pub["end"]
        return Phase(samples, stored, rate, pub_rate, self.cores(a, b), span, tail), pub

    async def case(self, case: Case) -> Result:
        args = self.args
        tables = "telemetry_sample, telemetry_latest, ingest_reject, telemetry_gap"
        await self.conn.execute(f"TRUNCATE {tables}")
        path = self.tmp / f"broker-{case.key}"
        broker = await asyncio.to_thread(start_broker, path, args)
        try:
            config, names = self.write_config(case, broker.port)
            await self.start_ingests(config, names)
            await self.warm_up(broker.port, names)
            pids = {"ingest": [p.pid for p in self.ingests], "broker": [broker.pid]}
            count = {"json1": args.messages, "shared": args.shared_messages}
            count |= {"json10": args.batch_messages, "spb10": args.batch_messages}
            a, _ = await self.phase(case, broker.port, pids, count.get(case.key, 0), 0, 0)
            print(f"  {case.key} A: {a.stored:,} of {a.samples:,} stored, {a.rate:,.0f}/s")
            result = Result(case, a)
            if a.stored == a.samples and args.latency_seconds > 0:
                result.b = await self.latency(case, broker.port, pids, result)
            gaps = await self.conn.fetch("SELECT reason FROM telemetry_gap")
            rejects = await self.conn.fetchval("SELECT count(*) FROM ingest_reject")
            if rejects or gaps:
                first_gap = gaps[0][0] if gaps else ""
                result.notes.append(f"{rejects} rejects, {len(gaps)} gaps: {first_gap}")
            if case.processes > 1:
                rows = await self.conn.fetch(
                    "SELECT source, count(*) FROM telemetry_sample WHERE tag_id <> $1 "
                    "GROUP BY source ORDER BY source",
                    self.warm_id,
                )
                result.notes.append("per process: " + ", ".join(f"{s} {n:,}" for s, n in rows))
            if "being dropped" in broker.log_text():
                result.notes.append("the broker logged 'Outgoing messages are being dropped'")
        finally:
            codes = await self.stop_ingests()
            broker.stop()
        for name, code in zip(names, codes, strict=True):
            text = (self.tmp / f"ingest-{name}.log").read_text(errors="replace")
            bad = [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]
            if bad or code != 0:
                result.notes.append(f"{name}: exit {code}, {len(bad)} error lines {bad[:2]}")
        return result

    async def latency(self, case: Case, port: int, pids: dict[str, Any], result: Result) -> Phase:
        """Phase B: one publisher paced at ``--latency-load`` of phase A's rate."""
        rounds, per = KINDS[case.kind](self.args.tags).rounds, KINDS[case.kind].per
        rate = self.args.latency_load * result.a.rate / per
        count = max(rounds, int(rate * self.args.latency_seconds))
        poller, stop_poll = await asyncpg.connect(self.dsn), asyncio.Event()
        observed: list[tuple[float, float]] = []
        task = asyncio.create_task(watch(poller, observed, stop_poll))
        try:
            b, pub = await self.phase(case, port, pids, count, rate, result.a.samples)
        finally:
            stop_poll.set()
            await task
            await poller.close()
        b.rate = rate * per
        result.latency = sorted(lat for ts, lat in observed if ts >= pub["first_ts"])
        result.receipt = await self.conn.fetchval(
            "SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY extract(epoch FROM "
            "received_ts - source_ts)::float8) FROM telemetry_sample "
            "WHERE source_ts >= $1 AND tag_id <> $2",
            datetime.fromtimestamp(pub["first_ts"], UTC),
            self.warm_id,
        )
        return b


async def watch(conn: Any, out: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """Poll ``telemetry_latest``: (source ts, stored_at - source ts) of every new value seen."""
    seen: dict[int, Any] = {}
    first, sql = True, "SELECT tag_id, source_ts, stored_at FROM telemetry_latest"
    while not stop.is_set():
        for tag_id, ts, at in await conn.fetch(sql):
            if seen.get(tag_id) != ts:
                seen[tag_id] = ts
                if not first:
                    out.append((ts.timestamp(), (at - ts).total_seconds()))
        first = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


# --- report --------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    return values[max(1, math.ceil(p / 100 * len(values))) - 1] if values else math.nan


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.0f}"


def table(head: str, rows: list[list[Any]]) -> None:
    print(f"| {head} |\n|---{'|---:' * head.count('|')}|")
    for row in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")


def report(args: argparse.Namespace, bare: dict[int, Any], results: dict[str, Result]) -> None:
    how = "publisher running" if args.live else f"backlog of {args.publishers} publishers"
    print(f"\n## Bare paho subscriber (decode only), case 1 messages, {how}\n")
    head = "subscriber | messages | received | msg/s | subscriber cores | broker | publishers msg/s"
    table(head, [[f"QoS {q}", f"{r['count']:,}", f"{r['received']:,}", f"{r['rate']:,.0f}",
                  r["sub_cores"], r["broker_cores"], f"{r['pub_rate']:,.0f}"]
                 for q, r in bare.items()])  # fmt: skip
    print(
        f"\n## mes ingest, phase A ({how}): samples/s = samples / (last commit - first receipt)\n"
    )
    head = "case | samples | stored | lost | samples/s | seconds | ingest cores | postgres | broker"
    table(f"{head} | machine | publishers msg/s", [
        [r.case.title, f"{r.a.samples:,}", f"{r.a.stored:,}", f"{r.a.samples - r.a.stored:,}",
         f"{r.a.rate:,.0f}", f"{r.a.span:.1f}", *(r.a.cpu[k] for k in CPU), f"{r.a.pub_rate:,.0f}"]
        for r in results.values()])  # fmt: skip
    print(f"\n## Latency, phase B: one publisher paced at {args.latency_load:g} x phase A's rate\n")
    head = (
        "case | offered samples/s | lost | observed | end-to-end p50 ms | p95 ms | receipt p50 ms"
    )
    table(f"{head} | p95 ms | ingest cores | postgres | broker | machine | tail s", [
        [r.case.title, f"{r.b.rate:,.0f}", f"{r.lost:,}", f"{len(r.latency):,}",
         ms(pct(r.latency, 50)), ms(pct(r.latency, 95)), ms(r.receipt[0]), ms(r.receipt[1]),
         *(r.b.cpu[k] for k in CPU), f"{r.b.tail:.1f}"]
        for r in results.values() if r.b])  # fmt: skip
    print("\n(lost: samples published - rows stored, cumulative over phases A and B, exact)")
    for r in results.values():
        for note in r.notes:
            print(f"note {r.case.key}: {note}")
    print("for comparison: ThingsBoard reports 15,000 data points/s on 2 vCPU (Kafka + "
          "PostgreSQL, 95% CPU)\n")  # fmt: skip
    lines = []
    if "json1" in results and 1 in bare:
        rate, base = results["json1"].a.rate, bare[1]["rate"]
        text = f"{rate / base:.2f} x bare QoS 1 ({base:,.0f} msg/s); target >= {TARGET_RATIO} x"
        lines.append(("json1", rate >= TARGET_RATIO * base, f"{rate:,.0f} samples/s = {text}"))
    for key in ("json10", "spb10"):
        if key in results:
            rate = results[key].a.rate
            lines.append(
                (key, rate >= TARGET_BATCH, f"{rate:,.0f} samples/s; target >= {TARGET_BATCH:,}")
            )
    if "shared" in results and "json1" in results:
        rate, one = results["shared"].a.rate, results["json1"].a.rate
        lines.append(("shared", rate >= TARGET_SHARED * one, f"{rate:,.0f} samples/s = "
                      f"{rate / one:.2f} x one process; target >= {TARGET_SHARED} x"))  # fmt: skip
    for key, met, text in lines:
        lost = results[key].lost
        verdict = "PASS" if met and not lost else "FAIL"
        print(f"{verdict} {key}: {text}, zero loss ({'none' if not lost else f'{lost:,}'} lost)")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--database-url", help=f"postgresql+asyncpg://... (default: {BENCH_DB} on 127.0.0.1)")
    add("--admin-dsn", default=ADMIN_DSN, help="connection for CREATE/DROP DATABASE")
    add("--keep", action="store_true", help="keep the database and the temp dir (logs)")
    add("--cases", default=",".join(c.key for c in CASES), help="comma-separated subset")
    add("--tags", type=int, default=1000, help="tags per family (a multiple of 20)")
    add("--messages", type=int, default=120_000, help="case json1")
    add("--batch-messages", type=int, default=50_000, help="cases json10 and spb10")
    add("--shared-messages", type=int, default=250_000, help="case shared")
    add("--bare-messages", type=int, default=150_000, help="each bare subscriber")
    add("--publishers", type=int, default=2, choices=(1, 2), help="filling the backlog")
    add("--live", action="store_true", help="phase A: one publisher during the window")
    add("--no-qos0", action="store_true", help="skip the bare QoS 0 subscriber")
    add("--latency-load", type=float, default=0.5, help="phase B rate, fraction of phase A")
    add("--latency-seconds", type=float, default=8.0, help="phase B length (0: none)")
    add("--settle", type=float, default=15.0, help="give up this long after the last commit")
    add("--persistence", action="store_true", help="broker persistence on (autosave 30 s)")
    add("--inflight", type=int, default=500, help="broker max_inflight_messages")
    add("--role", choices=("publish", "bare"), help=argparse.SUPPRESS)
    add("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if set(args.cases.split(",")) - {c.key for c in CASES}:
        parser.error(f"--cases: choose among {', '.join(c.key for c in CASES)}")
    if args.tags < 2 * PER or args.tags % (2 * PER):
        parser.error("--tags must be a positive multiple of 20")
    if (
        min(args.messages, args.shared_messages, args.bare_messages, args.batch_messages * PER)
        < 2 * args.tags
    ):
        parser.error("every case publishes at least two values per tag")
    return args


async def run(args: argparse.Namespace) -> int:
    url = args.database_url or f"postgresql+asyncpg://root@127.0.0.1:5432/{BENCH_DB}"
    name = make_url(url).database or BENCH_DB
    tmp = Path(tempfile.mkdtemp(prefix="mes-bench-mqtt-"))
    bench, started = Bench(args, tmp, url, name), time.monotonic()
    bare: dict[int, dict[str, Any]] = {}
    results: dict[str, Result] = {}
    try:
        await bench.prepare()
        print(f"database {name} migrated, temp dir {tmp}, {os.cpu_count()} CPUs", flush=True)
        for qos in (1,) if args.no_qos0 else (1, 0):
            bare[qos] = await bench.bare(qos)
            print(f"  bare QoS {qos}: {bare[qos]['rate']:,.0f} msg/s", flush=True)
        for case in (c for c in CASES if c.key in args.cases.split(",")):
            print(f"case {case.key}: {case.title}", flush=True)
            results[case.key] = await bench.case(case)
        report(args, bare, results)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in PROCS:
            await stop(proc, 5.0)
        if bench.conn is not None:
            await bench.conn.close()
        if args.keep:
            print(f"kept the database {name} and {tmp}")
        else:
            await bench.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"dropped database {name}")
        print(f"runtime {time.monotonic() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "publish":
        publisher_main(json.loads(args.spec))
    elif args.role == "bare":
        bare_main(json.loads(args.spec))
    else:
        return asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
