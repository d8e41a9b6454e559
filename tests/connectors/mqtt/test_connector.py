"""The MQTT connector against a real private Mosquitto: mapping end to end, acknowledgement
only after the MES stored a batch (in PUBLISH order), persistent and shared sessions,
refused credentials and TLS."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.base import ConnectorAuthError, ConnectorNotReady
from connectors.mqtt import MqttConfig, MqttConnector
from tests.connectors.mqtt.conftest import WAIT, Publisher, Sink, config, context, running, start
from tests.support.mosquitto import PrivateMosquitto, free_port

SUBSCRIPTIONS = [
    {"filter": "plant/+/+/temperature", "tag": "CORE/{1}/{2}/temperature"},
    {"filter": "plant/+/batch", "tag_field": "tag", "tag": "{1}/{field}"},
    {"filter": "plant/+/count", "codec": "number", "tag": "{1}/count"},
]


def value(i: int) -> str:
    return f'{{"value": {i}}}'


async def test_json_arrays_numbers_and_rejects_end_to_end(
    broker: PrivateMosquitto, publisher: Publisher, sink: Sink
) -> None:
    ctx = context("line-1", config(broker, "e2e", subscriptions=SUBSCRIPTIONS), sink)
    async with running(ctx):
        await publisher.send(
            [
                ("plant/cr2/z1/temperature", '{"value": 21.5, "ts": "2026-03-01T12:00:00Z"}'),
                ("plant/cr2/z1/temperature", "{broken"),
                ("plant/l7/batch", '[{"tag": "speed", "value": 3}, {"tag": "torque", "value": 4}]'),
                ("plant/l7/count", "17"),
                ("plant/l7/count", "NaN"),
                ("plant/cr2/z1/temperature", '{"value": 22}'),
            ]
        )
        await sink.wait_for(lambda: len(sink.observations) == 5 and len(sink.rejects) == 2)
    assert [(o.source, o.tag, o.value) for o in sink.observations] == [
        ("line-1", "CORE/cr2/z1/temperature", 21.5),
        ("line-1", "l7/speed", 3),
        ("line-1", "l7/torque", 4),
        ("line-1", "l7/count", 17),
        ("line-1", "CORE/cr2/z1/temperature", 22),
    ]
    assert [(r.reason, r.payload) for r in sink.rejects] == [
        ("invalid_json", b"{broken"),
        ("non_finite", b"NaN"),
    ]


async def test_a_topic_left_in_the_session_by_an_old_config_is_rejected_as_unmapped(
    broker: PrivateMosquitto, publisher: Publisher, sink: Sink
) -> None:
    old = config(
        broker, "reconfigured", subscriptions=[*SUBSCRIPTIONS, {"filter": "old/#", "tag": "t"}]
    )
    async with running(context("gw", old, sink)):
        pass
    async with running(
        context("gw", config(broker, "reconfigured", subscriptions=SUBSCRIPTIONS), sink)
    ):
        await publisher.send([("old/x", "1"), ("plant/l7/count", "5")])
        await sink.wait_for(lambda: bool(sink.observations and sink.rejects))
    assert [(r.reason, r.detail) for r in sink.rejects] == [("unmapped_topic", "old/x")]
    assert sink.values() == [5]


@pytest.mark.parametrize("failure", ["emit raises", "emit never resolves"])
async def test_messages_are_acknowledged_only_after_emit_resolved(
    broker: PrivateMosquitto, publisher: Publisher, failure: str
) -> None:
    cfg = config(broker, "unacked", stop_timeout=0.2)
    failing = Sink()
    if failure == "emit raises":
        failing.fail = RuntimeError("database unavailable")
    else:
        failing.hang = True
    messages = [(f"plant/cr2/z{i}/temperature", value(i)) for i in range(5)]
    run = await start(context("gw", cfg, failing))
    await publisher.send(messages)
    if failure == "emit raises":
        with pytest.raises(ConnectorNotReady, match="database unavailable"):
            await asyncio.wait_for(run.task, WAIT)
    else:
        await failing.wait_for(lambda: bool(failing.batches))
        await run.stop()
    assert failing.observations == []
    healthy = Sink()
    async with running(context("gw", cfg, healthy)):
        await healthy.wait_for(lambda: sorted(healthy.values()) == [0, 1, 2, 3, 4])


async def test_pubacks_follow_publish_order_when_batches_finish_out_of_order(
    tmp_path: Path, sink: Sink
) -> None:
    broker = PrivateMosquitto(tmp_path, verbose=True)
    broker.start()
    publisher = Publisher(broker)
    try:
        sink.delay = lambda index: 0.3 if index % 3 == 0 else 0.0
        cfg = config(broker, "ack-order", max_batch=3, max_batches_in_flight=4)
        async with running(context("gw", cfg, sink)):
            await publisher.send([(f"plant/a/z{i}/temperature", value(i)) for i in range(30)])
            await sink.wait_for(lambda: len(sink.observations) == 30)
            await asyncio.sleep(0.2)  # let the last PUBACKs reach the broker's log
    finally:
        publisher.close()
        broker.stop()
    log = broker.log_text()
    sent = re.findall(r"Sending PUBLISH to ack-order \(d0, q1, r0, m(\d+),", log)
    acked = re.findall(r"Received PUBACK from ack-order \(Mid: (\d+)", log)
    assert len(sent) == 30
    assert acked == sent
    finished = sink.values()
    assert finished != sorted(finished), "batches did not finish out of order"


async def test_a_slow_mes_makes_the_connector_stop_reading_and_resume_without_loss(
    broker: PrivateMosquitto, publisher: Publisher, sink: Sink
) -> None:
    # MQTT 3.1.1 has no Receive Maximum: the broker sends up to its own in-flight limit (500
    # here), so the inbox fills (4 messages) while one slow batch of 2 is being stored, and
    # the connector leaves the socket unread until the inbox has room again.
    sink.delay = lambda index: 0.05
    cfg = config(
        broker,
        "slow-mes",
        protocol="3.1.1",
        receive_maximum=4,
        max_batch=2,
        max_batches_in_flight=1,
    )
    async with running(context("gw", cfg, sink)):
        await publisher.send([(f"plant/a/z{i}/temperature", value(i)) for i in range(40)])
        await sink.wait_for(lambda: len(sink.observations) == 40)
    assert sink.values() == list(range(40))
    assert max(len(batch) for batch in sink.batches) <= 2


async def test_mqtt_311_persistent_session_keeps_messages_while_stopped(
    broker: PrivateMosquitto, publisher: Publisher, sink: Sink
) -> None:
    cfg = config(broker, "v311", protocol="3.1.1")
    async with running(context("gw", cfg, sink)):
        pass
    await publisher.send([(f"plant/a/z{i}/temperature", value(i)) for i in range(20)])
    async with running(context("gw", cfg, sink)):
        await sink.wait_for(lambda: len(sink.observations) == 20)
    assert sorted(sink.values()) == list(range(20))


async def test_shared_subscription_splits_messages_between_two_clients(
    broker: PrivateMosquitto, publisher: Publisher
) -> None:
    shared = [{"filter": "plant/+/+/temperature", "tag": "t/{1}", "shared_group": "mes"}]
    first, second = Sink(), Sink()
    async with (
        running(context("gw", config(broker, "shared-1", subscriptions=shared), first)),
        running(context("gw", config(broker, "shared-2", subscriptions=shared), second)),
    ):
        await publisher.send([(f"plant/m{i}/z/temperature", value(i)) for i in range(60)])
        await first.wait_for(lambda: len(first.observations) + len(second.observations) >= 60)
    assert first.observations
    assert second.observations
    assert sorted(first.values() + second.values()) == list(range(60))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_refused_credentials_raise_auth_error(
    tmp_path: Path, sink: Sink, protocol: str
) -> None:
    with PrivateMosquitto(tmp_path, users={"mes": "right-password"}) as broker:
        wrong = config(broker, "auth", protocol=protocol, username="mes", password="wrong")
        with pytest.raises(ConnectorAuthError, match="refused"):
            await asyncio.wait_for(MqttConnector().run(context("gw", wrong, sink)), WAIT)
        right = config(broker, "auth", protocol=protocol, username="mes", password="right-password")
        async with running(context("gw", right, sink)) as run:
            assert run.connector.ready.is_set()


async def test_unreachable_broker_is_not_ready(sink: Sink) -> None:
    cfg = MqttConfig(port=free_port(), client_id="nowhere", subscriptions=SUBSCRIPTIONS)
    with pytest.raises(ConnectorNotReady, match="cannot reach broker"):
        await asyncio.wait_for(MqttConnector().run(context("gw", cfg, sink)), WAIT)


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for DNS name ``localhost`` only (not 127.0.0.1)."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def build(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.DNSName("localhost")])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = build("test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = build("localhost", server_key, ca_name, ca_key, ca=False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls_verifies_the_server_name_unless_insecure(tmp_path: Path, sink: Sink) -> None:
    ca, cert, key = write_tls_files(tmp_path)
    extra = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    with PrivateMosquitto(tmp_path / "broker", extra_config=extra) as broker:
        good = config(broker, "tls", host="localhost", tls={"ca_file": ca})
        async with running(context("gw", good, sink)) as run:
            assert run.connector.ready.is_set()
        wrong_name = config(broker, "tls", tls={"ca_file": ca})
        with pytest.raises(ConnectorAuthError, match="certificate"):
            await asyncio.wait_for(MqttConnector().run(context("gw", wrong_name, sink)), WAIT)
        insecure = config(broker, "tls", tls={"ca_file": ca, "insecure": True})
        async with running(context("gw", insecure, sink)) as run:
            assert run.connector.ready.is_set()


async def test_a_stream_over_tls_arrives_whole(tmp_path: Path, sink: Sink) -> None:
    # The connector reads its socket in large chunks; over TLS the decrypted bytes may wait
    # inside the TLS layer where the socket no longer signals them.
    ca, cert, key = write_tls_files(tmp_path)
    extra = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    samples = [{"tag": f"t{k}", "value": k, "note": "x" * 200} for k in range(20)]
    payload = json.dumps(samples)  # about 5 KiB: several messages per TLS record and across
    with PrivateMosquitto(tmp_path / "broker", extra_config=extra) as broker:
        publisher = Publisher(broker, tls_ca=ca)
        try:
            tls = {"ca_file": ca}
            cfg = config(
                broker, "tls-stream", host="localhost", tls=tls, subscriptions=SUBSCRIPTIONS
            )
            async with running(context("gw", cfg, sink)):
                await publisher.send([("plant/line-1/batch", payload)] * 300)
                await sink.wait_for(lambda: len(sink.observations) == 300 * 20)
        finally:
            publisher.close()
    assert sink.rejects == []
