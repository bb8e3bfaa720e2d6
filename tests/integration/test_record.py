"""shadow record against the real broker: ranges by offset and time, resume, exact bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from schemas.topics import PARTITIONER
from shadow.exceptions import ShadowstreamError
from shadow.offline.recording import Position, read_recording, record
from shadow.settings import Settings
from shadow.stack import Endpoints

REPO = Path(__file__).resolve().parents[2]


def fill(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": PARTITIONER})
    for i in range(start, start + n):
        key = None if i % 50 == 0 else f"k{i}".encode()
        producer.produce(topic, bytes([i % 256]) + f"value-{i}".encode(), key)
    assert producer.flush(30) == 0


def test_offset_range_exact_bytes_and_resume(settings: Settings, stack: Endpoints,
                                            topic_factory: Callable[..., str],
                                            tmp_path: Path) -> None:
    topic = topic_factory(3)
    fill(stack.kafka_bootstrap, topic, 3000)
    out = tmp_path / "rec.jsonl.zst"
    # Interrupted after 1,000 messages (checkpoints every 300: 100 are written twice over).
    first = record(settings, stack.kafka_bootstrap, topic, Position("beginning"),
                   Position("end"), out, checkpoint_every=300, stop_after=1000)
    assert first.records == 1000 and out.with_name(out.name + ".progress.json").exists()
    with pytest.raises(ShadowstreamError, match="progress of another recording"):
        record(settings, stack.kafka_bootstrap, topic, Position("offset", 5), Position("end"),
               out)
    again = record(settings, stack.kafka_bootstrap, topic, Position("beginning"),
                   Position("end"), out, checkpoint_every=300)
    assert again.resumed_from == 1000 and again.records == again.total == 3000
    assert not out.with_name(out.name + ".progress.json").exists()
    got = list(read_recording(out))
    assert len(got) == 3000
    assert len({(m.partition, m.offset) for m in got}) == 3000  # none twice
    values = sorted(m.value[1:] for m in got)
    assert values == sorted(f"value-{i}".encode() for i in range(3000))
    one = next(m for m in got if m.value.endswith(b"value-50"))
    assert one.key is None and one.value[0] == 50 and one.topic == topic
    with pytest.raises(ShadowstreamError, match="exists"):
        record(settings, stack.kafka_bootstrap, topic, Position("beginning"),
               Position("end"), out)


def test_time_range_through_the_cli(settings: Settings, stack: Endpoints,
                                    topic_factory: Callable[..., str], tmp_path: Path) -> None:
    topic = topic_factory(2)
    fill(stack.kafka_bootstrap, topic, 200)
    time.sleep(0.05)
    t1 = time.time_ns() // 1_000_000
    time.sleep(0.05)
    fill(stack.kafka_bootstrap, topic, 300, start=200)
    time.sleep(0.05)
    t2 = time.time_ns() // 1_000_000
    fill(stack.kafka_bootstrap, topic, 100, start=500)
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "PYTHONPATH": str(REPO)}
    out = tmp_path / "mid.jsonl.zst"
    run = subprocess.run([sys.executable, "-m", "shadow.cli", "record", "--topic", topic,
                          "--from", f"@{t1}", "--to", f"@{t2}", "-o", str(out)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "recorded 300 messages" in run.stderr
    got = sorted(int(m.value[1:].split(b"-")[1]) for m in read_recording(out))
    assert got == list(range(200, 500))
    empty = subprocess.run([sys.executable, "-m", "shadow.cli", "record", "--topic", topic,
                            "--from", "@1", "--to", "@2", "-o", str(tmp_path / "e.zst")],
                           env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert empty.returncode == 1 and "no messages" in empty.stderr
    assert not (tmp_path / "e.zst").exists()  # an empty range writes no file to trip a rerun


def test_record_then_replay_through_the_cli_gives_the_same_json_twice(
        settings_factory: Callable[..., Settings], admin, stack: Endpoints,
        tmp_path: Path) -> None:
    import orjson
    from prometheus_client import CollectorRegistry

    from producers import Mirror, MirrorConfig
    from shadow.sim.traffic import TrafficService, TrafficSpec
    from shadow.topics import create_topics, topic_specs

    s = settings_factory()
    create_topics(admin, topic_specs(s))
    spec = TrafficSpec(seed=0, disagree=0.1)
    cfg = MirrorConfig(bootstrap=stack.kafka_bootstrap, model="fraud-scorer",
                       topic=s.topic("requests"), output_kind="probs")
    with Mirror(cfg, CollectorRegistry()) as mirror:
        service = TrafficService(mirror, spec)
        for i in range(0, 900, 100):
            service.answer([spec.event(j) for j in range(i, i + 100)],
                           now_ms=1_800_000_000_000 + i * 10)
        assert mirror.flush(30) == 0
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "SHADOW_TOPIC_PREFIX": s.topic_prefix, "PYTHONPATH": str(REPO), "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shadow.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300, cwd=REPO)

    rec = tmp_path / "req.jsonl.zst"
    assert cli("record", "--topic", s.topic("requests"), "--from", "beginning", "--to", "end",
               "-o", str(rec)).returncode == 0
    outs = []
    for n in (1, 2):
        run = cli("replay", "--file", str(rec), "--candidate", "shadow.sim.traffic:build_model",
                  "--candidate", "v2=tests.models_for_tests:fraud_seed1", "--window-s", "3",
                  "--device", "cpu", "--json", str(tmp_path / f"r{n}.json"),
                  "--report", str(tmp_path / f"r{n}.html"))
        assert run.returncode == 0, run.stderr
        outs.append((tmp_path / f"r{n}.json").read_bytes())
    assert outs[0] == outs[1]
    report = orjson.loads(outs[0])
    overall = report["candidates"]["build_model"]["models"]["fraud-scorer"]["overall"]
    assert overall["pairs"] == 900
    assert round(overall["disagreement_rate"] * 900) == sum(
        spec.event(i).disagree for i in range(900))
    assert "v2" in report["candidates"] and "build_model" in run.stdout
    # The verdict gates on it: 10 % disagreement is critical by default (ROLLBACK, exit 2),
    # HOLD (exit 1) when configured not critical, PROMOTE (exit 0) under a looser limit.
    report_path = str(tmp_path / "r1.json")
    rollback = cli("verdict", "--replay", report_path, "--candidate", "build_model")
    assert rollback.returncode == 2, rollback.stdout + rollback.stderr
    assert "ROLLBACK" in rollback.stdout and "disagreement_rate" in rollback.stdout
    for limit, critical, code in (("0.05", "false", 1), ("0.2", "true", 0)):
        cfg = tmp_path / f"v{code}.toml"
        cfg.write_text(f'[[metrics]]\nmetric = "disagreement_rate"\nlimit = {limit}\n'
                       f"critical = {critical}\n")
        got = cli("verdict", "--replay", report_path, "--candidate", "build_model",
                  "--config", str(cfg), "--json")
        assert got.returncode == code, got.stdout + got.stderr
        assert orjson.loads(got.stdout)["decision"] == ["PROMOTE", "HOLD"][code]
    several = cli("verdict", "--replay", report_path)
    assert several.returncode == 3 and "choose with --model and --candidate" in several.stderr
    # Re-published for the live pipeline, at a controlled rate, the same bytes.
    from confluent_kafka.admin import NewTopic

    from schemas import MirroredRequest
    from schemas.codec import events_of
    from shadow import clients
    from tests.helpers import consume_events, murmur2_partition

    target = f"{s.topic_prefix}.again"
    admin.create_topics([NewTopic(target, 3, 1)])[target].result(timeout=30)
    t0 = time.monotonic()
    again = cli("replay", "--file", str(rec), "--to-topic", target, "--rate", "1500")
    assert again.returncode == 0 and "re-published 900 events" in again.stderr, again.stderr
    assert time.monotonic() - t0 >= 900 / 1500
    copied = consume_events(lambda g: clients.consumer(s, stack.kafka_bootstrap, g), target,
                            MirroredRequest, 900, 60)
    recorded = [e for m in read_recording(rec) for e in events_of(m.value)[0]]
    assert sorted(r.model_dump_json() for r, _ in copied) == sorted(
        MirroredRequest.model_validate(e).model_dump_json() for e in recorded)
    # Batched or not, each event is on its request id's partition of the target.
    assert all(msg.partition() == murmur2_partition(r.request_id.encode(), 3)
               for r, msg in copied)
    # The topic can be replayed directly too; a range with nothing in it is an error.
    direct = cli("replay", "--topic", s.topic("requests"), "--from", "beginning", "--to", "end",
                 "--candidate", "shadow.sim.traffic:build_model", "--window-s", "3",
                 "--device", "cpu", "--json", str(tmp_path / "d.json"))
    assert direct.returncode == 0, direct.stderr
    direct_report = orjson.loads((tmp_path / "d.json").read_bytes())
    assert direct_report["candidates"]["build_model"] == report["candidates"]["build_model"]
    empty = cli("replay", "--topic", s.topic("requests"), "--from", "@1", "--to", "@2",
                "--candidate", "shadow.sim.traffic:build_model")
    assert empty.returncode == 1 and "no messages" in empty.stderr
