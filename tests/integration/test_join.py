"""The Faust join app against the real broker, with the traffic generator and a real worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from schemas import Alert, DivergencePair, WindowSummary
from shadow import clients
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import load_candidate
from shadow.runtime.worker import ShadowWorker, WorkerConfig
from shadow.settings import Settings
from shadow.sim.traffic import TrafficSpec
from shadow.stack import Endpoints, prometheus_root
from shadow.stack.procs import free_port
from shadow.stack.prometheus import register_target
from tests.helpers import consume_events
from tests.integration.groundtruth import (
    REPO,
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


def _worker(s: Settings, bootstrap: str, until: int) -> ShadowWorker:
    engine = InferenceEngine(load_candidate("shadow.sim.traffic:build_model"), device="cpu")
    worker = ShadowWorker(s, bootstrap, WorkerConfig(candidate_id="c1",
                                                     max_wait_ms=20), engine)
    deadline = time.monotonic() + 120  # a request that never comes fails here, not hangs
    stats = worker.run(until=lambda st: st.handled >= until or time.monotonic() > deadline)
    assert stats.handled >= until, f"the worker handled {stats.handled} of {until} requests"
    return worker


def _join(s: Settings, stack: Endpoints, tmp: Path, port: int, log: Path) -> subprocess.Popen:
    return spawn_cli(join_args(tmp / "join", port),
                     cli_env(s, stack.kafka_bootstrap, stack.redis_url), log)


def _same_as_replay(s: Settings, stack: Endpoints, tmp: Path,
                    found: dict[tuple, list[WindowSummary]]) -> None:
    from consumers.join import JoinConfig
    from shadow.offline.recording import Position, read_recording, record
    from shadow.offline.replay import ReplayCandidate, replay

    path = tmp / "requests.jsonl.zst"
    record(s, stack.kafka_bootstrap, s.topic("requests"), Position("beginning"),
           Position("end"), path)
    engine = InferenceEngine(load_candidate("shadow.sim.traffic:build_model"), device="cpu")
    # The live join's own settings: with a grace of 1 s, windows close while the recording
    # is read, so partitions read one after the other would make the later ones late.
    result = replay(read_recording(path), [ReplayCandidate("c1", engine)],
                    join=JoinConfig(window_ms=WINDOW_MS, grace_ms=1000, reference_size=300),
                    keep_pairs=True)
    assert result.report["dead_lettered"] == 1  # the poison request only
    live = {}
    for p, _ in consume_events(lambda g: clients.consumer(s, stack.kafka_bootstrap, g),
                               s.topic("pairs"), DivergencePair, N, 60):
        live[p.request_id] = (p.disagree, p.kind, p.metrics.get("top1_agree"))
    offline = {p.request_id: (p.disagree, p.kind, p.metrics.get("top1_agree"))
               for p in result.pairs}
    assert offline == live and len(live) == N
    scores = {p.request_id: p.score for p in result.pairs}
    assert all(abs(scores[rid] - sc) < 1e-6 for rid, sc in _live_scores(s, stack).items())
    replayed = {w["window_start"]: w for w in result.report["candidates"]["c1"]["models"][
        "fraud-scorer"]["windows"] if "segment" not in w}
    for (_, start, segment), copies in found.items():
        if segment is None:
            w = copies[0]
            r = replayed[start]
            assert (r["requests"], r["pairs"], r["dead_lettered"], r["disagreement_rate"]) == (
                w.requests, w.pairs, w.dead_lettered, w.disagreement_rate)


def _live_scores(s: Settings, stack: Endpoints) -> dict[str, float]:
    got = consume_events(lambda g: clients.consumer(s, stack.kafka_bootstrap, g),
                         s.topic("pairs"), DivergencePair, N, 60)
    return {p.request_id: p.score for p, _ in got if p.score is not None}


def _prometheus_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=5) as resp:
        return orjson.loads(resp.read())["data"]["alerts"]


def _alerts(s: Settings, stack: Endpoints, rule: str, want: int,
            timeout_s: float = 30) -> list[Alert]:
    """The alerts of one rule in Redis's stream, once ``want`` of them are there."""
    client = clients.redis_client(stack.redis_url)
    deadline = time.monotonic() + timeout_s
    while True:
        rows = client.xrange(f"{s.topic_prefix}:alerts")
        alerts = [a for a in (Alert.model_validate_json(f[b"alert"]) for _, f in rows)
                  if a.rule == rule]
        if len(alerts) >= want or time.monotonic() > deadline:
            time.sleep(1.0)  # and nothing more comes
            rows = client.xrange(f"{s.topic_prefix}:alerts")
            return [a for a in (Alert.model_validate_json(f[b"alert"]) for _, f in rows)
                    if a.rule == rule]
        time.sleep(0.2)


def test_windows_conserve_and_equal_the_injected_ground_truth(
        pipeline: Settings, stack: Endpoints, tmp_path: Path,
        procs: list[subprocess.Popen]) -> None:
    spec = TrafficSpec(seed=0, disagree=0.1)
    t0 = first_window_start()
    send(pipeline, stack.kafka_bootstrap, spec, t0, 0, N)
    poison(pipeline, stack.kafka_bootstrap, t0 + SPAN_MS - 1)  # in the last window
    _worker(pipeline, stack.kafka_bootstrap, N + 1)
    port = free_port()
    procs.append(_join(pipeline, stack, tmp_path, port, tmp_path / "join.log"))
    truth = ground_truth(spec, t0)
    found = windows(pipeline, stack.kafka_bootstrap, set(truth))
    check_against_truth(found, truth, t0 + SPAN_MS - WINDOW_MS)
    assert sum(c["disagree"] for c in truth.values()) > 150  # the test can see a miscount
    # Drift is measured against the first 300 requests; the app's metrics say what it did.
    last = found[("c1", max(truth), None)][0]
    assert "inputs.amount" in last.drift and "output.confidence" in last.drift
    assert metric(port, "shadow_join_pairs_total") == N
    assert metric(port, "shadow_join_dead_lettered_total") == 1
    # 10 % disagreement breaks the two-window rule (5 %, TWO_WINDOW_RULES): pending, then firing.
    alerts = _alerts(pipeline, stack, "disagreement", 2)
    assert [(a.state, a.window_start) for a in alerts] == [("pending", min(truth)),
                                                           ("firing", min(truth) + WINDOW_MS)]
    state = clients.redis_client(stack.redis_url).hgetall(
        f"{pipeline.topic_prefix}:alert:fraud-scorer:c1:disagreement")
    assert state[b"state"] == b"firing" and state[b"alert_id"] == alerts[1].alert_id.encode()
    exemplars = clients.redis_client(stack.redis_url).zrevrange(
        f"{pipeline.topic_prefix}:exemplars:fraud-scorer:c1", 0, -1, withscores=True)
    assert len(exemplars) == 30 and exemplars[0][1] >= exemplars[-1][1] > 0  # 10 a window
    deadline = time.monotonic() + 10
    while metric(port, 'shadow_alert_active{candidate="c1",model="fraud-scorer",'
                        'rule="disagreement",severity="warning"}') != 1.0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Offline replay of the same requests gives the same pairs and the same windows.
    _same_as_replay(pipeline, stack, tmp_path, found)
    # The verdict on the live windows: 10 % disagreement rolls back (exit 2).
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "SHADOW_TOPIC_PREFIX": pipeline.topic_prefix, "PYTHONPATH": str(REPO)}
    verdict = subprocess.run([sys.executable, "-m", "shadow.cli", "verdict", "--live", "--json"],
                             env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert verdict.returncode == 2, verdict.stdout + verdict.stderr
    assert orjson.loads(verdict.stdout)["windows"] == 3
    # A real Prometheus scrapes the app and its rule (prometheus/alerts.yml) fires.
    register_target(prometheus_root(pipeline), "join", f"127.0.0.1:{port}",
                    {"prefix": pipeline.topic_prefix})
    deadline = time.monotonic() + 60
    while not [a for a in _prometheus_alerts(stack.prometheus_url)
               if a["labels"].get("alertname") == "ShadowRuleFiring"
               and a["labels"].get("prefix") == pipeline.topic_prefix
               and a["labels"].get("rule") == "disagreement" and a["state"] == "firing"]:
        assert time.monotonic() < deadline, "Prometheus never fired ShadowRuleFiring"
        time.sleep(1)


def test_kill_9_mid_stream_changes_no_number(
        pipeline: Settings, stack: Endpoints, tmp_path: Path,
        procs: list[subprocess.Popen]) -> None:
    spec = TrafficSpec(seed=0, disagree=0.1)
    t0 = first_window_start()
    send(pipeline, stack.kafka_bootstrap, spec, t0, 0, N // 2)
    poison(pipeline, stack.kafka_bootstrap, t0 + SPAN_MS - 1)  # in the last window
    _worker(pipeline, stack.kafka_bootstrap, N // 2 + 1)
    port, log = free_port(), tmp_path / "join.log"
    first = _join(pipeline, stack, tmp_path, port, log)
    procs.append(first)
    deadline = time.monotonic() + 90
    while (metric(port, "shadow_join_pairs_total") or 0) < N // 4:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        assert first.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(1.5)  # past a commit or two: the restart replays some, not all
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    send(pipeline, stack.kafka_bootstrap, spec, t0, N // 2, N)
    _worker(pipeline, stack.kafka_bootstrap, N // 2)
    second = _join(pipeline, stack, tmp_path, port, log)
    procs.append(second)
    truth = ground_truth(spec, t0)
    found = windows(pipeline, stack.kafka_bootstrap, set(truth))
    check_against_truth(found, truth, t0 + SPAN_MS - WINDOW_MS)
    alerts = _alerts(pipeline, stack, "disagreement", 2)  # once each, despite the crash
    assert [a.state for a in alerts] == ["pending", "firing"]
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0, log.read_text()[-3000:]


def test_a_join_restarted_with_nothing_left_to_read_closes_its_recovered_windows(
        pipeline: Settings, stack: Endpoints, tmp_path: Path,
        procs: list[subprocess.Popen]) -> None:
    """Killed after it read everything, before the idle close: the restarted join recovers
    the last window's entries, has nothing to read, and must still close it when idle."""
    spec = TrafficSpec(seed=1, disagree=0.1)
    t0 = first_window_start()
    send(pipeline, stack.kafka_bootstrap, spec, t0, 0, N)  # requests only: no worker needed
    env = cli_env(pipeline, stack.kafka_bootstrap, stack.redis_url)
    port, log = free_port(), tmp_path / "join.log"
    first = spawn_cli(join_args(tmp_path / "join", port, idle_close_s=6), env, log)
    procs.append(first)
    deadline = time.monotonic() + 90
    while metric(port, 'shadow_join_events_total{kind="request"}') != N:
        assert time.monotonic() < deadline and first.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(2)  # past a commit, not yet idle for 6 s
    assert (metric(port, "shadow_join_windows_closed_total") or 0) < 3
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    second = spawn_cli(join_args(tmp_path / "join", port, idle_close_s=6), env, log)
    procs.append(second)
    truth = ground_truth(spec, t0)
    found = windows(pipeline, stack.kafka_bootstrap, set(truth), timeout_s=60)
    assert {k[1] for k in found if k[2] is None} == set(truth), log.read_text()[-3000:]
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0


def test_profile_build_reads_a_time_range_of_the_requests(
        pipeline: Settings, stack: Endpoints, tmp_path: Path) -> None:
    from consumers.drift import Profile
    from shadow.offline.profiles import build_profiles
    from shadow.offline.recording import Position

    spec = TrafficSpec(seed=2)
    # A range of time is of the records' timestamps: the mirror stamps each record with its
    # (first) event's time, so the range is of event time.
    t0 = first_window_start()
    send(pipeline, stack.kafka_bootstrap, spec, t0, 0, 600)
    send(pipeline, stack.kafka_bootstrap, spec, t0 + 60_000, 600, 700)  # later: left out
    before, after = t0 - 1, t0 + 600 * SPAN_MS // N + 1
    result = build_profiles(pipeline, stack.kafka_bootstrap, Position("time", before),
                            Position("time", after), bins=20)
    assert result.requests == 600 and set(result.profiles) == {"fraud-scorer"}
    profile = Profile.from_dict(result.to_dict()["models"]["fraud-scorer"])
    amount = profile.features["inputs.amount"]
    assert amount.kind == "numeric" and amount.reference.total == 600
    assert len(amount.edges) <= 19
    assert profile.features["inputs.country"].kind == "categorical"
    assert "output.confidence" in profile.features and "output.top1" in profile.features
    # The CLI writes the same profile; an empty range is an error that says so.
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "SHADOW_TOPIC_PREFIX": pipeline.topic_prefix, "PYTHONPATH": str(REPO)}
    out = tmp_path / "ref.json"
    run = subprocess.run([sys.executable, "-m", "shadow.cli", "profile", "build", "--from",
                          f"@{before}", "--to", f"@{after}", "-o", str(out), "--bins", "20"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert orjson.loads(out.read_bytes())["models"]["fraud-scorer"] == \
        result.to_dict()["models"]["fraud-scorer"]
    empty = subprocess.run([sys.executable, "-m", "shadow.cli", "profile", "build", "--from",
                            "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z", "-o",
                            str(tmp_path / "none.json")],
                           env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert empty.returncode == 1 and "no messages" in empty.stderr
