"""Faults through the whole pipeline, with the traffic generator as ground truth (slow: run by
`make test-faults`, not by `make test`; kill -9 of the worker and of the join are in
test_worker.py and test_join.py and run in `make test`).

A private Kafka and a private Redis (not the session's) carry the traffic generator's
requests through a `shadow worker` and a `shadow join`, both subprocesses. Mid-stream the
broker is killed with SIGKILL and started again on the same port and data; then Redis is
stopped for 30 seconds while windows close and alerts fire, and the join is killed with
SIGKILL while its alerts wait for Redis. After the drain every window
must conserve its requests exactly and equal the ground truth, and each alert must be in
Redis once: none lost, none repeated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from schemas import Alert
from shadow import clients
from shadow.settings import Settings
from shadow.sim.traffic import TrafficSpec
from shadow.stack import kafka
from shadow.stack import procs as stack_procs
from shadow.stack import redis as redis_server
from shadow.topics import create_topics, topic_specs
from tests.integration.groundtruth import (
    SPAN_MS,
    WINDOW_MS,
    N,
    check_against_truth,
    cli_env,
    first_window_start,
    ground_truth,
    join_args,
    metric,
    poison,
    send,
    spawn_cli,
    windows,
)

pytestmark = pytest.mark.faults

REDIS_DOWN_S = 30


class PrivateStack:
    """A broker and a Redis of this test's own, to kill and start again."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings, self.root = settings, root
        self.kafka_port, self.redis_port = stack_procs.free_port(), stack_procs.free_port()
        self.kafka_pid: int | None = None
        self.redis_pid: int | None = None
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"

    def start_kafka(self) -> None:
        self.kafka_pid, _, _ = kafka.start(self.root / "kafka", self.settings.cache_dir,
                                           self.settings.kafka_version, port=self.kafka_port)

    def kill_kafka(self) -> None:
        assert self.kafka_pid is not None
        os.kill(self.kafka_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while stack_procs.alive(self.kafka_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kafka_pid = None

    def start_redis(self) -> None:
        self.redis_pid, _ = redis_server.start(self.root / "redis", port=self.redis_port)

    def stop_redis(self) -> None:
        assert self.redis_pid is not None
        stack_procs.stop(self.redis_pid, None)
        self.redis_pid = None

    def down(self) -> None:
        for pid in (self.kafka_pid, self.redis_pid):
            if pid is not None:
                stack_procs.stop(pid, None)


@pytest.fixture
def private(settings: Settings, tmp_path: Path) -> Iterator[PrivateStack]:
    stack = PrivateStack(settings, tmp_path / "private")
    try:
        stack.start_kafka()
        stack.start_redis()
        yield stack
    finally:
        stack.down()


def _wait(what: str, ok, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in logs)
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{tails}")
        time.sleep(0.3)


def test_broker_restart_redis_down_30s_and_join_killed_meanwhile_lose_and_repeat_nothing(
        settings: Settings, private: PrivateStack, tmp_path: Path,
        procs: list[subprocess.Popen]) -> None:
    s = settings.model_copy(update={"topic_prefix": f"faults{time.monotonic_ns() % 10**8}"})
    create_topics(AdminClient({"bootstrap.servers": private.bootstrap}), topic_specs(s))
    env = cli_env(s, private.bootstrap, private.redis_url)
    worker_log, join_log = tmp_path / "worker.log", tmp_path / "join.log"
    logs = [worker_log, join_log]
    port = stack_procs.free_port()
    procs.append(spawn_cli(["worker", "--candidate", "shadow.sim.traffic:build_model",
                         "--candidate-id", "c1", "--device", "cpu", "--max-wait-ms", "20",
                         "--session-timeout-ms", "6000"], env, worker_log))
    # Idle close after 8 s: shorter than the broker's absence (kill, 5 s, restart), so a
    # join that took a silent broker for an idle input would close windows early.
    join_cmd = join_args(tmp_path / "join", port, idle_close_s=8)
    procs.append(spawn_cli(join_cmd, env, join_log))
    spec = TrafficSpec(seed=0, disagree=0.1)
    t0 = first_window_start()
    third = N // 3

    # 1. A first third flows through; then the broker dies while the second third is sent
    #    (the mirror holds it), and comes back on the same port and data.
    send(s, private.bootstrap, spec, t0, 0, third)
    _wait("pairs of the first third", lambda: (metric(port, "shadow_join_pairs_total") or 0)
          >= third // 2, 180, logs)
    private.kill_kafka()
    sender = threading.Thread(target=send, args=(s, private.bootstrap, spec, t0, third,
                                                  2 * third))
    sender.start()  # into the mirror, which holds the events while the broker is away
    time.sleep(5)
    private.start_kafka()
    sender.join(60)
    _wait("pairs of the second third", lambda: (metric(port, "shadow_join_pairs_total") or 0)
          >= 2 * third, 240, logs)

    # 2. Redis stops for 30 s while the last third arrives and windows close: alerts fire
    #    into the join's outbox and go out once Redis is back.
    private.stop_redis()
    down_at = time.monotonic()
    send(s, private.bootstrap, spec, t0, 2 * third, N)
    poison(s, private.bootstrap, t0 + SPAN_MS - 1)
    # The second window is closed and recorded (its alert states persisted): its firing
    # alert exists only in the outbox now, and would not be evaluated again.
    _wait("the second window recorded closed and its alerts waiting",
          lambda: (metric(port, "shadow_join_windows_closed_total") or 0) >= 2
          and (metric(port, "shadow_alerts_outbox") or 0) >= 1, 120, logs)
    # 3. And the join is killed while they wait: they were kept in its table, and the
    #    restarted join sends them again once Redis is back.
    procs[-1].send_signal(signal.SIGKILL)
    procs[-1].wait(10)
    procs.append(spawn_cli(join_cmd, env, join_log))
    _wait("the restarted join", lambda: metric(port, "shadow_alerts_outbox") is not None,
          120, logs)
    time.sleep(max(0.0, REDIS_DOWN_S - (time.monotonic() - down_at)))
    private.start_redis()

    truth = ground_truth(spec, t0)
    found = windows(s, private.bootstrap, set(truth), timeout_s=240)
    check_against_truth(found, truth, t0 + SPAN_MS - WINDOW_MS)

    client = clients.redis_client(private.redis_url)

    def alerts() -> list[Alert]:
        rows = client.xrange(f"{s.topic_prefix}:alerts")
        return [Alert.model_validate_json(f[b"alert"]) for _, f in rows]

    _wait("both alerts in Redis", lambda: len([a for a in alerts()
                                               if a.rule == "disagreement"]) >= 2, 120, logs)
    time.sleep(2)  # and nothing more comes
    got = [(a.state, a.window_start) for a in alerts() if a.rule == "disagreement"]
    assert got == [("pending", min(truth)), ("firing", min(truth) + WINDOW_MS)]
    ids = [a.alert_id for a in alerts()]
    assert len(ids) == len(set(ids)), "an alert was written twice"
    worker, join = procs[0], procs[-1]
    assert worker.poll() is None and join.poll() is None, "a process died during the faults"
