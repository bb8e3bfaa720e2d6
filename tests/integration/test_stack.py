"""The local stack against real servers: Kafka round trips, Redis, Prometheus, topics, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource
from prometheus_client import CollectorRegistry, Counter, start_http_server

from schemas import MirroredRequest, decode, encode
from shadow import clients
from shadow.exceptions import ServerStartError, TopicMismatchError
from shadow.settings import Settings
from shadow.stack import Endpoints, Stack, procs, prometheus, redis
from shadow.topics import create_topics, topic_specs
from tests.integration.roundtrip import round_trip, sample_request


def test_kafka_round_trip_with_the_project_codec(
    settings: Settings, stack: Endpoints, topic_factory: Callable[..., str]
) -> None:
    import random

    topic = topic_factory(partitions=3)
    rng = random.Random(1)
    sent = [sample_request(rng, i) for i in range(50)]
    prod = clients.producer(settings, stack.kafka_bootstrap)
    for req in sent:
        prod.produce(topic, encode(req), key=req.request_id.encode())
        prod.poll(0)
    assert prod.flush(30) == 0

    cons = clients.consumer(settings, stack.kafka_bootstrap, f"g-{uuid.uuid4()}")
    cons.subscribe([topic])
    got: dict[str, MirroredRequest] = {}
    partitions: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        msg = cons.poll(0.5)
        if msg is None or msg.error():
            continue
        req = decode(msg.value(), MirroredRequest)
        assert msg.key() == req.request_id.encode()
        got[req.request_id] = req
        partitions[req.request_id] = msg.partition()
    cons.close()
    assert [got.get(r.request_id) for r in sent] == sent
    assert len(set(partitions.values())) > 1  # keys spread over partitions


def test_redis_reads_and_writes(stack: Endpoints) -> None:
    r = clients.redis_client(stack.redis_url)
    key = f"it:{uuid.uuid4().hex}"
    r.set(key, b"v1")
    assert r.get(key) == b"v1"
    entry = r.xadd(f"{key}:stream", {"a": "1"})
    assert r.xrange(f"{key}:stream") == [(entry, {b"a": b"1"})]
    assert r.config_get("save") == {"save": ""}  # no persistence


def _prom_query(url: str, query: str) -> list[dict]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_prometheus_scrapes_a_registered_exporter(settings: Settings, stack: Endpoints) -> None:
    assert stack.prometheus_url
    registry = CollectorRegistry()
    marker = f"it_{uuid.uuid4().hex[:8]}"
    Counter(f"{marker}_events", "test events", registry=registry).inc(7)
    port = procs.free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prometheus.register_target(Stack(settings).root / "prometheus", "it",
                                   f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        result: list[dict] = []
        while time.monotonic() < deadline and not result:
            result = _prom_query(stack.prometheus_url, f"{marker}_events_total")
            time.sleep(1)
        assert result, "Prometheus never scraped the registered target"
        assert float(result[0]["value"][1]) == 7.0
        assert result[0]["metric"]["job"] == "it"
    finally:
        server.shutdown()


def test_stack_up_again_changes_nothing(settings: Settings, stack: Endpoints) -> None:
    before = Stack(settings).status()
    assert Stack(settings).up(with_prometheus=True) == stack
    assert Stack(settings).status() == before
    assert {s.name: s.state for s in before} == {
        "kafka": "external" if settings.kafka_bootstrap else "running",
        "redis": "external" if settings.redis_url else "running",
        "prometheus": "external" if settings.prometheus_url else "running",
    }


def test_topics_are_created_once_with_their_config_and_mismatches_refused(
    settings_factory: Callable[..., Settings], stack: Endpoints
) -> None:
    s = settings_factory(partitions=4)
    admin = clients.admin(s, stack.kafka_bootstrap)
    first = create_topics(admin, topic_specs(s))
    assert len(first.create) == 5 and first.existing == []
    again = create_topics(admin, topic_specs(s))
    assert again.create == [] and len(again.existing) == 5

    meta = admin.list_topics(timeout=10).topics
    assert len(meta[s.topic("requests")].partitions) == 4
    assert len(meta[s.topic("outputs")].partitions) == 4
    assert len(meta[s.topic("windows")].partitions) == 1
    res = ConfigResource(ConfigResource.Type.TOPIC, s.topic("windows"))
    config = admin.describe_configs([res])[res].result(timeout=10)
    assert config["retention.ms"].value == str(30 * 24 * 3600 * 1000)

    with pytest.raises(TopicMismatchError, match=r"has 4 partitions, expected 2"):
        create_topics(admin, topic_specs(s, partitions=2))


def test_demo_round_trip(settings_factory: Callable[..., Settings], stack: Endpoints) -> None:
    s = settings_factory()
    result = round_trip(s, stack, count=40)
    assert (result.sent, result.received) == (40, 40)
    assert result.redis_count == 40
    assert result.partitions_used == s.partitions


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServerStartError) as info:
            redis.start(tmp_path, port=taken.getsockname()[1])
    assert info.value.server == "redis"
    assert "Address already in use" in info.value.tail
    assert str(tmp_path) in str(info.value)


def _shadow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shadow.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_cli_up_json_then_down_leaves_no_process(tmp_path: Path) -> None:
    env = {**os.environ, "SHADOW_STATE_DIR": str(tmp_path)}
    up = _shadow("stack", "up", "--prometheus", "--json", env=env)
    assert up.returncode == 0, up.stderr
    endpoints = json.loads(up.stdout)
    assert set(endpoints) == {"kafka_bootstrap", "redis_url", "prometheus_url",
                              "kafka_sasl_ssl", "credentials_dir"}
    assert all(endpoints[k] for k in ("kafka_bootstrap", "redis_url", "prometheus_url"))
    assert endpoints["kafka_sasl_ssl"] is None and endpoints["credentials_dir"] is None

    status = json.loads(_shadow("stack", "status", "--json", env=env).stdout)
    started = [s for s in status if s["state"] == "running"]
    assert started and all(s["pid"] for s in started)
    again = _shadow("stack", "up", "--prometheus", "--json", env=env)
    assert json.loads(again.stdout) == endpoints

    down = _shadow("stack", "down", env=env)
    assert down.returncode == 0, down.stderr
    for s in started:
        assert not procs.alive(s["pid"]), f"{s['name']} (pid {s['pid']}) still runs"
    after = json.loads(_shadow("stack", "status", "--json", env=env).stdout)
    assert {s["state"] for s in after} <= {"stopped", "external"}
