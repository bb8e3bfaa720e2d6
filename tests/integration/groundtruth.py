"""The traffic generator as ground truth for tests that run the whole pipeline: what to send,
what each window must then say, and how to read what the join said."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from producers import Mirror, MirrorConfig
from schemas import WindowSummary, decode
from shadow import clients
from shadow.settings import Settings
from shadow.sim.traffic import TrafficService, TrafficSpec

REPO = Path(__file__).resolve().parents[2]
WINDOW_MS = 4_000
N = 2400
SPAN_MS = 3 * WINDOW_MS  # the requests' event times cover three windows


def first_window_start() -> int:
    """Ten windows back: every window of the test lies in the past, so only event time
    closes them."""
    now = time.time_ns() // 1_000_000
    return now - now % WINDOW_MS - 10 * WINDOW_MS


def send(s: Settings, bootstrap: str, spec: TrafficSpec, t0: int, lo: int, hi: int) -> None:
    cfg = MirrorConfig(bootstrap=bootstrap, model="fraud-scorer", topic=s.topic("requests"),
                       output_kind="probs")
    with Mirror(cfg, CollectorRegistry()) as mirror:
        service = TrafficService(mirror, spec)
        for i in range(lo, hi, 50):  # 50 requests share an event time
            service.answer([spec.event(j) for j in range(i, min(hi, i + 50))],
                           now_ms=t0 + i * SPAN_MS // N)
        assert mirror.flush(30) == 0
    # Every event on the broker: a dropped or failed one would leave a test waiting for it.
    counts = mirror.metrics.snapshot()
    assert counts.published == hi - lo, f"the mirror published {counts}"


def ground_truth(spec: TrafficSpec, t0: int) -> dict[int, Counter]:
    """Per window start: requests, disagreements, and the 'eu'/'us' split."""
    out: dict[int, Counter] = {}
    for i in range(N):
        ts = t0 + (i - i % 50) * SPAN_MS // N
        e = spec.event(i)
        c = out.setdefault(ts - ts % WINDOW_MS, Counter())
        c["requests"] += 1
        c["disagree"] += e.disagree
        c[e.segment] += 1
    return out


def metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def windows(s: Settings, bootstrap: str, want: set[int], timeout_s: float = 120,
             ) -> dict[tuple, list[WindowSummary]]:
    """Every summary on <prefix>.windows until each wanted window (all segments) came."""
    consumer = clients.consumer(s, bootstrap, f"read-{time.monotonic_ns()}")
    consumer.subscribe([s.topic("windows")])
    found: dict[tuple, list[WindowSummary]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                w = decode(msg.value(), WindowSummary)
                found.setdefault((w.candidate, w.window_start, w.segment), []).append(w)
            if msg is None and {k[1] for k in found if k[2] is None} >= want:
                break
    finally:
        consumer.close()
    return found


def check_against_truth(found: dict[tuple, list[WindowSummary]],
                         truth: dict[int, Counter], poison_window: int) -> None:
    assert {k[1] for k in found} == set(truth), "a window is missing"
    for (cand, start, segment), copies in found.items():
        # Emitted again after a restart: with the very same numbers.
        first = copies[0].model_dump(exclude={"ts"})
        assert all(c.model_dump(exclude={"ts"}) == first for c in copies[1:])
        w = copies[0]
        assert cand == "c1"
        assert w.requests == w.pairs + w.unmatched_live + w.unmatched_shadow + w.dead_lettered
        want = truth[start]
        extra = int(start == poison_window and segment is None)
        if segment is None:
            assert (w.requests, w.pairs, w.dead_lettered) == (want["requests"] + extra,
                                                              want["requests"], extra)
            assert w.unmatched_live == w.unmatched_shadow == 0
            assert round(w.disagreement_rate * w.pairs) == want["disagree"]
            assert w.window_end - w.window_start == WINDOW_MS
        else:
            assert w.pairs == want[segment]


def poison(s: Settings, bootstrap: str, ts: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    doc = {"schema": "mirror.request/1", "request_id": "poison-1", "model": "fraud-scorer",
           "ts": ts, "live": {"version": "v1", "latency_ms": 1}}  # no inputs: invalid
    producer.produce(s.topic("requests"), orjson.dumps(doc), b"poison-1")
    producer.flush(10)


def cli_env(s: Settings, bootstrap: str, redis_url: str) -> dict[str, str]:
    """The environment of a `shadow` subprocess that works on this pipeline's topics."""
    return {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": bootstrap, "SHADOW_REDIS_URL": redis_url,
            "SHADOW_TOPIC_PREFIX": s.topic_prefix, "SHADOW_PARTITIONS": str(s.partitions),
            "PYTHONPATH": str(REPO)}


def spawn_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m shadow.cli ARGS`` in the background, its output appended to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "shadow.cli", *args], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO)


# A disagreement rule that needs two windows in a row: its state crosses a window (and a
# restart, a crash, a scale-out merge), which the shipped sequential rule, firing on its
# first window at 10 %, would not show.
TWO_WINDOW_RULES = """
[[rules]]
name = "disagreement"
metric = "disagreement_rate"
threshold = 0.05
clear_threshold = 0.03
for_windows = 2
min_samples = 100
"""


def join_args(data_dir: Path, port: int, idle_close_s: float = 2) -> list[str]:
    """`shadow join` over this module's windows, expecting candidate c1 of fraud-scorer, with
    the disagreement rule of ``TWO_WINDOW_RULES`` (pending, then firing)."""
    rules = data_dir.parent / f"{data_dir.name}.rules.toml"
    rules.write_text(TWO_WINDOW_RULES)
    return ["join", "--data-dir", str(data_dir), "--web-port", str(port),
            "--window-s", str(WINDOW_MS / 1000), "--grace-s", "1",
            "--idle-close-s", str(idle_close_s), "--reference-size", "300",
            "--expect", "fraud-scorer=c1", "--rules", str(rules)]
