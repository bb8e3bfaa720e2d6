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

from shadow.exceptions import ShadowstreamError
from shadow.recording import Position, read_recording, record
from shadow.settings import Settings
from shadow.stack import Endpoints

REPO = Path(__file__).resolve().parents[2]


def fill(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
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
