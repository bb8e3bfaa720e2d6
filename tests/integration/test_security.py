"""A secured local stack: Kafka's SASL_SSL listener (SCRAM-SHA-512 over TLS) and Redis with an
ACL user. Every client of the pipeline gets in with the credentials and nobody gets in without
them; no password shows in reprs, command output or the servers' logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from consumers.faust.sinks import RedisAlertSink
from producers import Mirror, MirrorConfig
from schemas import Alert, MirroredRequest
from shadow import clients
from shadow.settings import Settings
from shadow.stack import Endpoints, Stack, secure
from tests.helpers import consume_events
from tests.integration.test_alerts import alert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Endpoints]]:
    s = Settings(state_dir=tmp_path_factory.mktemp("secure-stack"), stack_secure=True,
                 topic_prefix="sec")
    stack = Stack(s)
    try:
        yield s, stack.up()
    finally:
        stack.down()


def _client_settings(creds: secure.Credentials, password: str) -> Settings:
    return Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                    kafka_sasl_username=creds.kafka_user, kafka_sasl_password=password,
                    kafka_ssl_cafile=creds.cafile, topic_prefix="sec")


def _errors_connecting(conf: dict) -> list[KafkaError]:
    """The errors a client reports while it tries to get metadata (which must fail)."""
    with pytest.raises(KafkaException):
        AdminClient(conf).list_topics(timeout=5)
    errors: list[KafkaError] = []
    producer = Producer({**conf, "error_cb": errors.append})  # poll() serves error_cb
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    return errors


def test_kafka_sasl_scram_over_tls(secured: tuple[Settings, Endpoints]) -> None:
    _, ep = secured
    assert ep.kafka_sasl_ssl and ep.credentials_dir
    creds = secure.ensure(Path(ep.credentials_dir))
    good = _client_settings(creds, creds.kafka_password)
    bootstrap = ep.kafka_sasl_ssl
    from shadow.topics import create_topics, topic_specs

    create_topics(clients.admin(good, bootstrap), topic_specs(good, partitions=2))
    # The mirror (confluent-kafka) publishes through the secured listener...
    kafka_opts = {k: v for k, v in good.confluent_config(bootstrap).items()
                  if k != "bootstrap.servers"}
    cfg = MirrorConfig(bootstrap=bootstrap, model="m", topic=good.topic("requests"),
                       kafka=kafka_opts)
    with Mirror(cfg, CollectorRegistry()) as mirror:
        for i in range(50):
            assert mirror.publish(f"s-{i}", {"x": i}, float(i), latency_ms=1.0)
        assert mirror.flush(30) == 0
        assert mirror.metrics.snapshot().published == 50
    assert creds.kafka_password not in repr(cfg)
    # ...the worker's and the tools' consumer reads it back...
    got = consume_events(lambda g: clients.consumer(good, bootstrap, g), good.topic("requests"),
                         MirroredRequest, 50, 60)
    assert {r.request_id for r, _ in got} == {f"s-{i}" for i in range(50)}

    # ...and aiokafka, the join's (Faust's) transport, writes and reads with the same options.
    async def roundtrip() -> bytes:
        producer = AIOKafkaProducer(**good.aiokafka_config(bootstrap))
        await producer.start()
        try:
            await producer.send_and_wait(good.topic("pairs"), b"over-tls", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(good.topic("pairs"), auto_offset_reset="earliest",
                                    group_id="sec-aio", **good.aiokafka_config(bootstrap))
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), 30)
            return msg.value
        finally:
            await consumer.stop()

    assert asyncio.run(roundtrip()) == b"over-tls"

    # A wrong password is refused by the broker; plaintext to the TLS port gets nowhere.
    wrong = _client_settings(creds, "not-the-password").confluent_config(bootstrap)
    errors = _errors_connecting(wrong)
    assert any("Authentication failed" in e.str() or e.code() == KafkaError._AUTHENTICATION
               for e in errors), [e.str() for e in errors]
    assert _errors_connecting({"bootstrap.servers": bootstrap,
                               "security.protocol": "PLAINTEXT"})
    # TLS without the CA: the broker's certificate is not trusted.
    untrusted = {**good.confluent_config(bootstrap)}
    untrusted.pop("ssl.ca.location")
    errors = _errors_connecting(untrusted)
    assert any("certificate verify failed" in e.str() or "SSL" in e.str() for e in errors)


def test_redis_admits_only_its_acl_user(secured: tuple[Settings, Endpoints]) -> None:
    _, ep = secured
    creds = secure.ensure(Path(ep.credentials_dir or ""))
    assert f"{creds.redis_user}:{creds.redis_password}@" in ep.redis_url
    port = ep.redis_url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(redis.AuthenticationError):
        clients.redis_client(f"redis://127.0.0.1:{port}/0").ping()
    with pytest.raises(redis.AuthenticationError):
        clients.redis_client(f"redis://{creds.redis_user}:wrong@127.0.0.1:{port}/0").ping()
    # The join's alert sink works with the ACL user.
    sink = RedisAlertSink(clients.redis_client(ep.redis_url), "sec")
    a = alert(1)
    sink.publish([a])
    assert not sink.outbox and sink.failures == 0
    rows = clients.redis_client(ep.redis_url).xrange("sec:alerts")
    assert [Alert.model_validate_json(f[b"alert"]) for _, f in rows] == [a]


def test_no_secret_in_reprs_output_or_server_logs(secured: tuple[Settings, Endpoints]) -> None:
    s, ep = secured
    creds = secure.ensure(Path(ep.credentials_dir or ""))
    passwords = [creds.kafka_password, creds.redis_password, creds.keystore_password]
    env = {**os.environ, "SHADOW_STATE_DIR": str(s.state_dir), "SHADOW_STACK_SECURE": "1",
           "PYTHONPATH": str(REPO)}
    outputs = [subprocess.run([sys.executable, "-m", "shadow.cli", "stack", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=REPO)
               for args in (["status"], ["status", "--json"], ["up", "--json"])]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [repr(ep), str(ep.as_dict()), repr(creds),
              repr(Settings(redis_url=ep.redis_url, kafka_sasl_password=creds.kafka_password))]
    logs = [p for p in (s.state_dir / "stack").rglob("*.log") if p.is_file()]
    assert len(logs) >= 2
    texts += [p.read_text(errors="replace") for p in logs]
    for text in texts:
        for pw in passwords:
            assert pw not in text
    for name in ("kafka.password", "redis.password", "keystore.password", "ca.key"):
        assert (Path(ep.credentials_dir or "") / name).stat().st_mode & 0o077 == 0
