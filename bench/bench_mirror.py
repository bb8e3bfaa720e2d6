"""publish() cost and throughput, against a bare confluent-kafka produce() of the same bytes.

The reference is ``produce(topic, value, key, headers) + poll(0)`` on a producer with the
mirror's own settings (idempotent, acks=all, lz4, linger 5 ms), measured in the same run,
interleaved in rounds so that noise hits both alike. Broker up (a private local stack, or
SHADOW_KAFKA_BOOTSTRAP) and broker down (a closed port).

Run: python -m bench.bench_mirror
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import orjson
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from bench._common import TARGETS, machine, verdict
from producers import Mirror, MirrorConfig
from shadow import clients
from shadow.settings import Settings
from shadow.stack import Stack, procs
from shadow.topics import create_topics, topic_specs

ROUNDS, PER_ROUND = 6, 10_000
THROUGHPUT_RUNS = 3
INPUTS = {"amount": 129.5, "hour": 14, "country": "DE", "history": [0.1234, 0.4321, 0.0]}
OUTPUT = [0.912345, 0.087655]


def _sample(ts: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The bytes and headers publish() sends for one bench event."""
    value = orjson.dumps({"schema": "mirror.request/1", "request_id": "r-000000000",
                          "model": "bench", "ts": ts, "inputs": INPUTS,
                          "live": {"version": "live", "latency_ms": 1.25,
                                   "output": {"kind": "probs", "value": OUTPUT}}})
    return value, [("schema", b"mirror.request/1"), ("model", b"bench")]


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def _timed(fn: Callable[[int], None], n: int, out: list[float]) -> None:
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append((clock() - t0) / 1000)


def latency(bootstrap: str, topic: str) -> dict[str, float]:
    cfg = MirrorConfig(bootstrap=bootstrap, topic=topic, model="bench", output_kind="probs",
                       max_queue_messages=2_000_000, max_queue_kbytes=1_048_576,
                       message_timeout_ms=600_000)
    mirror = Mirror(cfg, CollectorRegistry())
    ref = Producer({**cfg.producer_config(), "client.id": "bench-reference"})
    ts = time.time_ns() // 1_000_000
    sample, headers = _sample(ts)

    def bare(i: int) -> None:
        ref.produce(topic, sample, f"r-{i:09d}".encode(), headers=headers)
        ref.poll(0)

    def publish(i: int) -> None:
        mirror.publish(f"r-{i:09d}", INPUTS, OUTPUT, latency_ms=1.25, ts=ts)

    pub: list[float] = []
    raw: list[float] = []
    for r in range(ROUNDS):
        _timed(bare, PER_ROUND, raw)
        _timed(lambda i, r=r: publish(r * PER_ROUND + i), PER_ROUND, pub)
    mirror.close(timeout_s=0)
    ref.purge()
    pub.sort()
    raw.sort()
    return {"bytes": len(sample), "p50": _pct(pub, 0.5), "p99": _pct(pub, 0.99),
            "p999": _pct(pub, 0.999), "ref_p50": _pct(raw, 0.5), "ref_p99": _pct(raw, 0.99),
            "ref_p999": _pct(raw, 0.999)}


def throughput(bootstrap: str, topic: str, n: int = 200_000) -> tuple[float, float, float]:
    """Events/s through publish() (queued and acknowledged); through bare produce() of the
    same bytes with the same headers (then poll(0), as a careful caller would); and the floor
    of any mirror written in Python: build the event, orjson it and produce() it on one
    thread, with no hand-off, no checks and no accounting."""
    cfg = MirrorConfig(bootstrap=bootstrap, topic=topic, model="bench", output_kind="probs",
                       max_queue_messages=1_000_000, max_queue_kbytes=1_048_576)
    ts = time.time_ns() // 1_000_000
    with Mirror(cfg, CollectorRegistry()) as mirror:
        t0 = time.perf_counter()
        for i in range(n):
            mirror.publish(f"t-{i:09d}", INPUTS, OUTPUT, latency_ms=1.25, ts=ts)
        mirror.flush(60)
        pub_rate = n / (time.perf_counter() - t0)
        assert mirror.metrics.snapshot().published == n, mirror.metrics.snapshot()
    ref = Producer({**cfg.producer_config(), "client.id": "bench-reference"})
    value, headers = _sample(ts)
    t0 = time.perf_counter()
    for i in range(n):
        ref.produce(topic, value, f"t-{i:09d}".encode(), headers=headers)
        ref.poll(0)
    ref.flush(60)
    ref_rate = n / (time.perf_counter() - t0)
    floor = Producer({**cfg.producer_config(), "client.id": "bench-floor"})
    t0 = time.perf_counter()
    for i in range(n):
        request_id = f"f-{i:09d}"
        doc = {"schema": "mirror.request/1", "request_id": request_id, "model": "bench",
               "ts": ts, "inputs": dict(INPUTS),
               "live": {"version": "live", "latency_ms": 1.25,
                        "output": {"kind": "probs", "value": OUTPUT}}}
        floor.produce(topic, orjson.dumps(doc), request_id.encode(), headers=headers)
        if i % 1024 == 0:
            floor.poll(0)
    floor.flush(60)
    return pub_rate, ref_rate, n / (time.perf_counter() - t0)


def main() -> None:
    settings = Settings(state_dir=tempfile.mkdtemp(prefix="shadow-bench-"),
                        topic_prefix="bench")
    stack = Stack(settings)
    try:
        endpoints = stack.up()
        create_topics(clients.admin(settings, endpoints.kafka_bootstrap),
                      topic_specs(settings, partitions=6))
        topic = settings.topic("requests")
        up = latency(endpoints.kafka_bootstrap, topic)
        down = latency(f"127.0.0.1:{procs.free_port()}", topic)
        rates = [throughput(endpoints.kafka_bootstrap, topic) for _ in range(THROUGHPUT_RUNS)]
        rate, ref_rate, floor_rate = (statistics.median(r[i] for r in rates) for i in range(3))
    finally:
        stack.down()

    t = TARGETS["mirror"]
    print(f"machine: {machine()}")
    print(f"event: {up['bytes']} bytes; {ROUNDS} rounds x {PER_ROUND} calls each, interleaved")
    for name, r in (("broker up", up), ("broker down", down)):
        print(f"{name:11}  publish()  p50 {r['p50']:6.2f}  p99 {r['p99']:6.2f}  "
              f"p99.9 {r['p999']:7.2f} us")
        print(f"{'':11}  bare ref   p50 {r['ref_p50']:6.2f}  p99 {r['ref_p99']:6.2f}  "
              f"p99.9 {r['ref_p999']:7.2f} us   ratio p50 {r['p50'] / r['ref_p50']:.2f}  "
              f"p99 {r['p99'] / r['ref_p99']:.2f}")
    print(f"throughput (median of {THROUGHPUT_RUNS} runs): publish() {rate:,.0f} events/s "
          f"(acknowledged), bare produce() {ref_rate:,.0f} events/s (ratio "
          f"{ref_rate / rate:.2f}), serialize + produce on one thread {floor_rate:,.0f} "
          f"events/s (publish() at {rate / floor_rate:.2f} of it)")
    for name, r in (("broker up", up), ("broker down", down)):
        print(verdict(f"{name} p99 us", r["p99"], t["publish_p99_us"]))
        print(verdict(f"{name} p50 ratio", r["p50"] / r["ref_p50"],
                      t["ratio_to_bare_produce_max"]))
    print(verdict("throughput events/s", rate, t["throughput_events_per_s_min"],
                  lower_is_better=False))


if __name__ == "__main__":
    main()
