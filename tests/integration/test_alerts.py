"""Alerts into a real Redis: once per id, in order, and waiting while Redis is down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from consumers.alerting import alert_id
from consumers.faust.sinks import RedisAlertSink
from schemas import Alert
from shadow import clients
from shadow.stack import procs
from shadow.stack import redis as redis_server


def alert(i: int, state: str = "firing") -> Alert:
    return Alert.model_validate({
        "schema": "alert/1", "alert_id": alert_id("m", "c", "r", i, state), "model": "m",
        "candidate": "c", "ts": i, "rule": "r", "severity": "warning", "state": state,
        "previous_state": "ok", "metric": "disagreement_rate", "value": 0.1, "threshold": 0.05,
        "window_start": i, "window_end": i + 60_000})


@pytest.fixture
def own_redis(tmp_path: Path):
    """A Redis of this test's own: it gets stopped and started again."""
    pid, port = redis_server.start(tmp_path / "redis")
    state = {"pid": pid, "port": port}
    yield state
    procs.stop(state["pid"], None)


def test_alerts_wait_while_redis_is_down_and_go_out_in_order(own_redis: dict,
                                                             tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{own_redis['port']}/0"
    client = clients.redis_client(url, timeout_s=0.5)
    sink = RedisAlertSink(client, "t", retry_s=0.2)
    sink.publish([alert(1), alert(2)])
    sink.publish([alert(2)])  # the same alert again (a window evaluated twice)
    assert (sink.delivered, sink.duplicates) == (2, 1)
    assert [a.window_start for a in sink.recent()] == [1, 2]
    state = client.hgetall("t:alert:m:c:r")
    assert state[b"state"] == b"firing" and state[b"alert_id"] == alert(2).alert_id.encode()

    procs.stop(own_redis["pid"], None)
    t0 = time.monotonic()
    for i in range(3, 8):
        sink.publish([alert(i)])  # never raises, never waits long
    assert time.monotonic() - t0 < 3.0
    assert len(sink.outbox) == 5 and sink.failures >= 1

    own_redis["pid"], _ = redis_server.start(tmp_path / "redis2", port=own_redis["port"])
    deadline = time.monotonic() + 10
    while sink.outbox:
        assert time.monotonic() < deadline, "the outbox did not drain"
        sink.flush()
        time.sleep(0.1)
    # This Redis keeps nothing across restarts: the stream holds what came after, in order.
    assert [a.window_start for a in sink.recent()] == [3, 4, 5, 6, 7]


def test_a_full_outbox_drops_the_oldest_and_counts_them() -> None:
    client = clients.redis_client(f"redis://127.0.0.1:{procs.free_port()}/0", timeout_s=0.2)
    sink = RedisAlertSink(client, "t", outbox_max=3, retry_s=60)
    sink.publish([alert(i) for i in range(5)])
    assert sink.dropped == 2 and [a.window_start for a in sink.outbox] == [2, 3, 4]


def test_alerts_list_ack_and_watch_through_the_cli(own_redis: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import threading

    import orjson

    from schemas import WindowSummary

    url = f"redis://127.0.0.1:{own_redis['port']}/0"
    client = clients.redis_client(url)
    sink = RedisAlertSink(client, "ops")
    sink.publish([alert(1, "pending"), alert(2, "firing")])
    sink.record_window(WindowSummary.model_validate({
        "schema": "window.summary/1", "model": "m", "candidate": "c", "ts": 1,
        "window_start": 0, "window_end": 60_000, "requests": 10, "pairs": 10,
        "disagreement_rate": 0.1}))
    repo = Path(__file__).resolve().parents[2]
    # Redis alone is enough for these commands (no Kafka, no local stack).
    env = {**os.environ, "SHADOW_REDIS_URL": url,
           "COLUMNS": "200",
           "SHADOW_TOPIC_PREFIX": "ops", "PYTHONPATH": str(repo)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shadow.cli", "alerts", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=repo)

    listed = orjson.loads(cli("list", "--json").stdout)
    assert [(a["rule"], a["state"], a["acked_at"]) for a in listed] == [("r", "firing", None)]
    assert cli("ack", alert(2).alert_id, "--by", "ops-1").returncode == 0
    listed = orjson.loads(cli("list", "--json").stdout)
    assert listed[0]["acked_by"] == "ops-1" and listed[0]["acked_at"] > 0
    wrong = cli("ack", "nope")
    assert wrong.returncode == 1 and "no current alert has id 'nope'" in wrong.stderr
    # watch redraws when an alert is published meanwhile.
    timer = threading.Timer(1.5, lambda: sink.publish([alert(3, "resolved")]))
    timer.start()
    watched = cli("watch", "--seconds", "4")
    timer.join()
    assert watched.returncode == 0, watched.stderr
    assert "resolved" in watched.stdout and "latest windows" in watched.stdout
