"""The shadow worker against the real broker: answers, dead letters, crashes, candidates."""

from __future__ import annotations

import base64
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import torch
from confluent_kafka import Producer, TopicPartition
from prometheus_client import CollectorRegistry

from producers import Mirror, MirrorConfig
from schemas.codec import decode, events_of
from schemas.records import DeadLetter, ShadowOutput
from shadow import clients
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import load_candidate
from shadow.runtime.worker import ShadowWorker, WorkerConfig, WorkerStats
from shadow.settings import Settings
from shadow.sim.traffic import TrafficService, TrafficSpec, build_model, featurize
from shadow.stack import Endpoints
from shadow.stack.procs import free_port
from tests.helpers import consume_all, consume_events, murmur2_partition

REPO = Path(__file__).resolve().parents[2]


def _send(s: Settings, bootstrap: str, n: int, seed: int = 5, start: int = 0,
          pause_s: float = 0.0) -> list[dict]:
    """Mirror n traffic requests, 100 at a time; returns their ids and inputs."""
    spec = TrafficSpec(seed=seed)
    cfg = MirrorConfig(bootstrap=bootstrap, model="fraud-scorer", topic=s.topic("requests"),
                       output_kind="probs")
    with Mirror(cfg, CollectorRegistry()) as mirror:
        service = TrafficService(mirror, spec)
        events = [spec.event(i) for i in range(start, start + n)]
        for i in range(0, n, 100):
            service.answer(events[i:i + 100])
            time.sleep(pause_s)
        assert mirror.flush(30) == 0
    return [{"request_id": e.request_id, "inputs": e.inputs} for e in events]


def _outputs(s: Settings, bootstrap: str, expected: int, timeout_s: float = 60) -> list:
    """The answers (one record per input partition and batch), as (output, its record)."""
    return consume_events(lambda g: clients.consumer(s, bootstrap, g), s.topic("outputs"),
                          ShadowOutput, expected, timeout_s)


def _own(model: torch.nn.Module, rows: list[dict]) -> dict[str, list[float]]:
    with torch.inference_mode():
        out = model(torch.tensor([featurize(r["inputs"]) for r in rows])).tolist()
    return {r["request_id"]: o for r, o in zip(rows, out, strict=True)}


def _start_worker(s: Settings, bootstrap: str, candidate: str, cid: str,
                  until: Callable[[WorkerStats], bool], **kw: object
                  ) -> tuple[ShadowWorker, threading.Thread]:
    engine = InferenceEngine(load_candidate(candidate), device="cpu",
                             max_batch=int(kw.get("max_batch", 32)))  # type: ignore[call-overload]
    config = WorkerConfig(candidate_id=cid, max_wait_ms=20, **kw)  # type: ignore[arg-type]
    worker = ShadowWorker(s, bootstrap, config, engine)
    thread = threading.Thread(target=worker.run, kwargs={"until": until}, daemon=True)
    thread.start()
    return worker, thread


def test_outputs_match_the_models_own_answers_on_the_requests_partition(
        pipeline: Settings, stack: Endpoints) -> None:
    rows = _send(pipeline, stack.kafka_bootstrap, 500)
    port = free_port()
    worker, thread = _start_worker(pipeline, stack.kafka_bootstrap,
                                   "shadow.sim.traffic:build_model", "cand-a",
                                   lambda st: st.handled >= 500, metrics_port=port)
    thread.join(60)
    assert not thread.is_alive() and worker.stats.answered == 500
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    text = metrics.decode()
    assert 'shadow_worker_events_total{candidate="cand-a",outcome="answered"} 500.0' in text
    assert 'shadow_worker_batch_size_count{candidate="cand-a"}' in text
    assert 'shadow_worker_inference_seconds_bucket{candidate="cand-a",le="0.001"}' in text
    # Each batch's latency, consumed to produced, as a histogram with its batches counted.
    [batches] = [float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith('shadow_worker_batch_seconds_count{candidate="cand-a"}')]
    assert batches >= 1
    assert 'shadow_worker_batch_seconds_bucket{candidate="cand-a",le="10.0"}' in text
    assert 'shadow_worker_consumer_lag{candidate="cand-a",partition="0"} 0.0' in text
    assert "shadow_worker_events_per_second" in text
    got = _outputs(pipeline, stack.kafka_bootstrap, 500)
    own = _own(build_model(0), rows)
    assert len(got) == 500
    assert len({(m.partition(), m.offset()) for _, m in got}) < 500  # batches of answers
    for out, msg in got:
        assert out.candidate == "cand-a" and out.model == "fraud-scorer" and out.error is None
        # The join co-partitions: each answer is on the partition of its request.
        assert msg.partition() == murmur2_partition(out.request_id.encode(), 3)
        assert out.output is not None and out.output.kind == "probs"
        assert all(math.isclose(a, b, abs_tol=1e-5)
                   for a, b in zip(out.output.value, own[out.request_id], strict=True))
    assert {out.request_id for out, _ in got} == set(own)
    # Committed past everything it answered: each partition to its end (500 requests came
    # in a few batch records).
    probe = clients.consumer(pipeline, stack.kafka_bootstrap, "probe")
    ends = {p: probe.get_watermark_offsets(TopicPartition(pipeline.topic("requests"), p),
                                           timeout=10)[1] for p in range(3)}
    probe.close()
    assert worker.stats.committed == ends and sum(ends.values()) < 500


def test_poison_events_go_to_dead_letter_while_the_rest_flows(
        pipeline: Settings, stack: Endpoints) -> None:
    rows = _send(pipeline, stack.kafka_bootstrap, 100)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    def request(rid: str, model: str, inputs: dict) -> bytes:
        return orjson.dumps({"schema": "mirror.request/1", "request_id": rid, "model": model,
                             "ts": 1, "inputs": inputs,
                             "live": {"version": "v1", "latency_ms": 1}})

    good_inputs = TrafficSpec(seed=5).event(0).inputs
    poison = [(b"p-1", b"\xff\xfe not json"),
              (b"p-2", orjson.dumps({"schema": "mirror.request/1", "request_id": "p-2"})),
              (b"p-3", request("p-3", "no-such-model", good_inputs)),
              # Valid for the contract, but history has 2 values where the card wants 3.
              (b"p-4", request("p-4", "fraud-scorer", {**good_inputs, "history": [0.1, 0.2]}))]
    for key, value in poison:
        producer.produce(pipeline.topic("requests"), value, key)
    producer.flush(10)
    rows += _send(pipeline, stack.kafka_bootstrap, 100, start=100)
    worker, thread = _start_worker(pipeline, stack.kafka_bootstrap,
                                   "shadow.sim.traffic:build_model", "cand-p",
                                   lambda st: st.handled >= 204, models=("fraud-scorer",))
    thread.join(60)
    assert (worker.stats.answered, worker.stats.errors, worker.stats.dead_lettered) == (200, 1, 3)
    outputs = _outputs(pipeline, stack.kafka_bootstrap, 201)
    assert len(outputs) == 201
    dead = consume_all(lambda g: clients.consumer(pipeline, stack.kafka_bootstrap, g),
                       pipeline.topic("deadletter"), 4, 30)
    records = {d.request_id: d for d in (decode(m.value(), DeadLetter) for m in dead)}
    assert set(records) == {"p-1", "p-2", "p-3", "p-4"}
    assert records["p-1"].stage == "decode" and "malformed JSON" in records["p-1"].reason
    assert records["p-2"].stage == "validate" and "missing required field" in records["p-2"].reason
    assert records["p-3"].stage == "validate" and "unknown model 'no-such-model'" in \
        records["p-3"].reason
    assert records["p-4"].stage == "model" and "history has 2 values, expected 3" in \
        records["p-4"].reason
    errors = {e.labels["kind"]: e.value for e in worker.registry.collect()
              for e in e.samples if e.name == "shadow_worker_errors_total"}
    assert errors == {"decode": 2, "unknown_model": 1, "input": 1}
    # Its counters say what it wrote: four dead letters (p-4 answered with its error too),
    # and why requests failed, most frequent first.
    assert worker.stats.dead_letters == len(records) == 4
    written = {e.labels["stage"]: e.value for e in worker.registry.collect()
               for e in e.samples if e.name == "shadow_worker_dead_letters_total"}
    assert written == {"decode": 1, "validate": 2, "model": 1}
    reasons = dict(worker.stats.reasons)
    assert any("inputs.history has # values, expected #" in r for r in reasons), reasons
    assert any("unknown model 'no-such-model'" in r for r in reasons), reasons
    for key, value in poison:
        rec = records[key.decode()]
        assert base64.b64decode(rec.value_b64 or "") == value
        assert rec.source is not None and rec.source.topic == pipeline.topic("requests")
        assert rec.source.offset >= 0


def test_two_candidates_each_answer_every_request_and_workers_split_partitions(
        pipeline: Settings, stack: Endpoints, tmp_path: Path) -> None:
    # Candidate a: two workers in one group split the three partitions.
    group_a: list[ShadowWorker] = []
    threads = []
    for _ in range(2):
        w, t = _start_worker(pipeline, stack.kafka_bootstrap, "shadow.sim.traffic:build_model",
                             "cand-a", lambda st: sum(x.stats.answered for x in group_a) >= 300)
        group_a.append(w)
        threads.append(t)
    deadline = time.monotonic() + 60
    while not (all(w.assigned for w in group_a)
               and group_a[0].assigned | group_a[1].assigned == {0, 1, 2}):
        assert time.monotonic() < deadline, [w.assigned for w in group_a]
        time.sleep(0.1)
    assert not group_a[0].assigned & group_a[1].assigned
    rows = _send(pipeline, stack.kafka_bootstrap, 300)
    _, tb = _start_worker(pipeline, stack.kafka_bootstrap,
                           "tests.models_for_tests:fraud_seed1", "cand-b",
                           lambda st: st.answered >= 300)
    for t in [*threads, tb]:
        t.join(90)
        assert not t.is_alive()
    got = _outputs(pipeline, stack.kafka_bootstrap, 600, 60)
    by_cand: dict[str, set[str]] = {"cand-a": set(), "cand-b": set()}
    for out, _ in got:
        by_cand[out.candidate].add(out.request_id)
    ids = {r["request_id"] for r in rows}
    assert by_cand["cand-a"] == ids and by_cand["cand-b"] == ids
    assert all(w.stats.answered > 0 for w in group_a), "one worker got no partition"


def _cli_worker(s: Settings, bootstrap: str, cid: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": bootstrap,
           "SHADOW_REDIS_URL": "redis://127.0.0.1:1/0", "SHADOW_TOPIC_PREFIX": s.topic_prefix,
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "shadow.cli", "worker",
           "--candidate", "shadow.sim.traffic:build_model", "--candidate-id", cid,
           "--device", "cpu", "--max-batch", "16", "--max-wait-ms", "5",
           "--session-timeout-ms", "6000"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=REPO)


def test_kill_9_mid_stream_loses_nothing_and_sigterm_commits(
        pipeline: Settings, stack: Endpoints, tmp_path: Path,
        procs: list[subprocess.Popen]) -> None:
    n = 3000
    log = tmp_path / "worker.log"
    first = _cli_worker(pipeline, stack.kafka_bootstrap, "cand-k", log)
    procs.append(first)
    # Sent over about six seconds, so that the kill lands while requests still flow in.
    rows = [{"request_id": TrafficSpec(seed=5).event(i).request_id} for i in range(n)]
    sender = threading.Thread(target=_send, args=(pipeline, stack.kafka_bootstrap, n),
                              kwargs={"pause_s": 0.2})
    sender.start()
    reader = clients.consumer(pipeline, stack.kafka_bootstrap, "k9-reader")
    reader.subscribe([pipeline.topic("outputs")])
    seen: dict[str, int] = {}

    def read_until(count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(seen) < count and time.monotonic() < deadline:
            msg = reader.poll(0.2)
            if msg is not None and not msg.error():
                for event in events_of(msg.value())[0]:
                    rid = event["request_id"]
                    seen[rid] = seen.get(rid, 0) + 1

    try:
        read_until(n // 3, 120)
        assert len(seen) >= n // 3, f"worker too slow; log:\n{log.read_text()[-3000:]}"
        assert sender.is_alive(), "the kill should land mid-stream"
        first.send_signal(signal.SIGKILL)  # no drain, no commit
        first.wait(10)
        second = _cli_worker(pipeline, stack.kafka_bootstrap, "cand-k", log)
        procs.append(second)
        read_until(n, 180)
        missing = {r["request_id"] for r in rows} - set(seen)
        assert not missing, f"{len(missing)} never answered; log:\n{log.read_text()[-3000:]}"

        second.send_signal(signal.SIGTERM)  # drains, delivers, commits, exits 0
        assert second.wait(60) == 0, log.read_text()[-3000:]
    finally:
        reader.close()
        sender.join(60)
    print(f"answered twice after the kill: {sum(c > 1 for c in seen.values())}")
    # Everything is committed: the group's offsets are at the end of every partition.
    group = f"{pipeline.topic_prefix}.shadow.cand-k"
    check = clients.consumer(pipeline, stack.kafka_bootstrap, group)
    topic = pipeline.topic("requests")
    tps = [TopicPartition(topic, p) for p in range(3)]
    committed = {tp.partition: tp.offset for tp in check.committed(tps, timeout=10)}
    ends = {p: check.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)}
    check.close()
    assert committed == ends
    assert "stopped after" in log.read_text()
