"""Several join workers (`shadow join --scale-out`) on six partitions, against the broker.

The first window's traffic is in Kafka before the workers start (the first to start reads it
alone, and hands partitions over as the others join); the rest comes, requests in steps and
answered as they come, once all of them share the partitions. Windows, pairs and alerts must
be those of the traffic generator's ground truth, exactly once per window (the merge stage
emits whole windows), also when one of three workers is killed with -9 while it holds
requests whose answers have not come yet.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from shadow.settings import Settings
from shadow.sim.traffic import TrafficSpec
from shadow.stack import Endpoints
from shadow.stack.procs import free_port
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
from tests.integration.test_join import _alerts, _worker

PARTITIONS = 6


def _reading(port: int) -> float | None:
    """Input partitions the worker reads now (None until it serves its metrics)."""
    return metric(port, "shadow_join_input_partitions")


def _requests(port: int) -> float:
    return metric(port, 'shadow_join_events_total{kind="request"}') or 0.0


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_n_join_workers_give_the_windows_and_alerts_of_one_even_when_one_is_killed(
        workers: int, settings_factory, admin: AdminClient, stack: Endpoints,
        tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    from shadow.topics import create_topics, topic_specs

    s: Settings = settings_factory(partitions=PARTITIONS)
    create_topics(admin, topic_specs(s))
    spec = TrafficSpec(seed=0, disagree=0.1)
    t0 = first_window_start()
    first = N // 3  # the first window
    send(s, stack.kafka_bootstrap, spec, t0, 0, first)
    _worker(s, stack.kafka_bootstrap, first)
    env = cli_env(s, stack.kafka_bootstrap, stack.redis_url)
    profile = tmp_path / "profile.json"
    built = subprocess.run([sys.executable, "-m", "shadow.cli", "profile", "build", "--from",
                            "beginning", "--to", "end", "-o", str(profile)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    ports, logs = [], []
    for w in range(workers):
        ports.append(free_port())
        logs.append(tmp_path / f"join{w}.log")
        # -v: Faust's own lines too (rebalances, recovery), for a failure to be read.
        args = ["-v", *join_args(tmp_path / f"join{w}", ports[w]), "--scale-out",
                "--profile", str(profile)]
        procs.append(spawn_cli(args, env, logs[w]))
    share = PARTITIONS // workers
    deadline = time.monotonic() + 120
    while [_reading(port) for port in ports] != [share] * workers:
        assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
        assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
        time.sleep(0.5)
    # The rest comes as live traffic would: requests in steps, answered as they come.
    answering = threading.Thread(target=_worker, args=(s, stack.kafka_bootstrap, N - first + 1))
    answering.start()
    time.sleep(3)  # the shadow worker has joined its group
    step = 200
    for lo in range(first, N, step):
        send(s, stack.kafka_bootstrap, spec, t0, lo, min(N, lo + step))
        time.sleep(0.3)
        if workers == 3 and lo - first == (N - first) // 2:  # mid-stream
            # every worker has its share; this one holds entries, some still unanswered
            assert all(_requests(port) > 0 for port in ports)
            procs[2].send_signal(signal.SIGKILL)
            procs[2].wait(10)
    poison(s, stack.kafka_bootstrap, t0 + SPAN_MS - 1)  # in the last window
    answering.join(120)
    assert not answering.is_alive()
    truth = ground_truth(spec, t0)
    found = windows(s, stack.kafka_bootstrap, set(truth), timeout_s=150)
    try:
        check_against_truth(found, truth, t0 + SPAN_MS - WINDOW_MS)
    except AssertionError as exc:  # seen once under a loaded machine: say what each did
        tails = [f"join{w} (closed {metric(port, 'shadow_join_windows_closed_total')} "
                 f"windows): {logs[w].read_text()[-1500:]}" for w, port in enumerate(ports)]
        raise AssertionError(f"{exc}; got windows {sorted({k[1] for k in found})} of "
                             f"{sorted(truth)}; " + " | ".join(tails)) from None
    for (_, start, segment), copies in found.items():
        assert len(copies) == 1, f"window {start} {segment} emitted {len(copies)} times"
        assert segment is not None or "inputs.amount" in copies[0].drift
    alerts = _alerts(s, stack, "disagreement", 2)  # once each, on whole windows
    assert [(a.state, a.window_start) for a in alerts] == [("pending", min(truth)),
                                                           ("firing", min(truth) + WINDOW_MS)]
    if workers == 2:  # mistakes, each refused in one line while the two run
        mistakes = {
            "another --window-s": ([*join_args(tmp_path / "j9", free_port()), "--scale-out",
                                    "--profile", str(profile), "--window-s", "8"],
                                   "close windows of 4 s, this one 8 s: start it with "
                                   "--window-s 4"),
            "a store in use": ([*join_args(tmp_path / "join0", free_port()), "--scale-out",
                                "--profile", str(profile)], "in use by another join"),
            "no --scale-out": (join_args(tmp_path / "j8", free_port()),
                               "start this one with --scale-out too"),
        }
        for what, (args, reason) in mistakes.items():
            got = subprocess.run([sys.executable, "-m", "shadow.cli", *args], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert got.returncode == 1 and reason in got.stderr, (what, got.stderr)
            assert "Traceback" not in got.stderr and len(got.stderr.strip().splitlines()) == 1
        assert all(p.poll() is None for p in procs)  # the running workers carry on
    for p, log in zip(procs, logs, strict=True):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, log.read_text()[-3000:]
