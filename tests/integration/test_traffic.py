"""`shadow traffic` against the real broker: what it says it sent is what is in the topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from schemas import MirroredRequest
from shadow import clients
from shadow.settings import Settings
from shadow.stack import Endpoints
from shadow.topics import create_topics, topic_specs
from tests.helpers import consume_events


def test_traffic_command_mirrors_every_request_with_its_ground_truth(
    settings_factory: Callable[..., Settings], stack: Endpoints, consumer_factory: Callable,
    tmp_path: Path,
) -> None:
    s = settings_factory()
    create_topics(clients.admin(s, stack.kafka_bootstrap), topic_specs(s))
    truth_file = tmp_path / "truth.jsonl"
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "SHADOW_REDIS_URL": stack.redis_url, "SHADOW_TOPIC_PREFIX": s.topic_prefix}
    proc = subprocess.run(
        [sys.executable, "-m", "shadow.cli", "traffic", "--rate", "150", "--duration", "2",
         "--disagree", "0.25", "--shift-at", "1", "--seed", "5", "--truth", str(truth_file),
         "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sent"] == summary["published"] == 300
    truth = {t["request_id"]: t for t in map(json.loads, truth_file.read_text().splitlines())}
    assert len(truth) == 300
    assert summary["disagreed"] == sum(t["disagree"] for t in truth.values())
    assert 0 < summary["shifted"] < 300

    got = consume_events(consumer_factory, s.topic("requests"), MirroredRequest, 300)
    events = {r.request_id: r for r, _ in got}
    assert set(events) == set(truth)
    for rid, req in events.items():
        probs = req.live.output.value  # type: ignore[union-attr]
        assert abs(sum(probs) - 1) < 1e-5
        assert req.model == "fraud-scorer" and req.attrs and req.attrs.segment in ("eu", "us")
        assert rid.startswith("fraud-scorer-5-")


def test_traffic_stopped_with_sigterm_flushes_and_sums_up(
    settings_factory: Callable[..., Settings], stack: Endpoints, consumer_factory: Callable,
    tmp_path: Path,
) -> None:
    import signal
    import time

    s = settings_factory()
    create_topics(clients.admin(s, stack.kafka_bootstrap), topic_specs(s))
    truth_file = tmp_path / "truth.jsonl"
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "SHADOW_TOPIC_PREFIX": s.topic_prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadow.cli", "traffic", "--rate", "200", "--duration", "600",
         "--truth", str(truth_file), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # started and sending
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped_early"] and summary["sent"] > 0
    assert summary["published"] == summary["sent"]  # nothing buffered was lost
    assert len(truth_file.read_text().splitlines()) == summary["sent"]
    got = consume_events(consumer_factory, s.topic("requests"), MirroredRequest,
                         summary["sent"])
    assert len({r.request_id for r, _ in got}) == summary["sent"]
