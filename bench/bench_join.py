"""Join throughput: joined pairs per second for one app worker, against a raw aiokafka consumer.

N mirrored requests and N shadow outputs (one candidate) are written to a local Kafka first,
compressed with lz4 like the mirror does. Then, in the same run:

- reference: a bare aiokafka consumer reads both topics (all partitions) and does nothing
  with the records; its rate is quoted as pairs/s (two records a pair);
- Faust's ceiling: a do-nothing Faust agent over the same topics, and one that writes a table
  key per event (the join writes one entry per event), to show what Faust itself costs;
- app: ``shadow join`` (one worker, memory store) reads the same records; the rate is taken
  from its /metrics (shadow_join_pairs_total) between 5 percent and 100 percent of N, so the
  app's start-up is not counted.

Run: python -m bench.bench_join [--pairs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._common import TARGETS, machine, verdict
from producers.traffic import TrafficSpec
from shadow import clients
from shadow.settings import Settings
from shadow.stack import Stack
from shadow.stack.procs import free_port
from shadow.topics import create_topics, topic_specs

REPO = Path(__file__).resolve().parents[1]


def fill(settings: Settings, bootstrap: str, n: int) -> None:
    spec = TrafficSpec(seed=3)
    producer = clients.producer(settings, bootstrap, **{"compression.type": "lz4",
                                                        "linger.ms": 20})
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    for i in range(n):
        e = spec.event(i)
        ts = t0 + i // 10  # ten requests a millisecond: windows of 60 s hold 600k
        p = 0.3 + (i % 7) / 20
        key = e.request_id.encode()
        request = {"schema": "mirror.request/1", "request_id": e.request_id,
                   "model": "fraud-scorer", "ts": ts, "inputs": e.inputs,
                   "live": {"version": "v1", "latency_ms": 1.5,
                            "output": {"kind": "probs", "value": [p, 1 - p]}},
                   "attrs": {"segment": e.segment}}
        output = {"schema": "shadow.output/1", "request_id": e.request_id,
                  "model": "fraud-scorer", "ts": ts, "candidate": "c1", "latency_ms": 0.8,
                  "output": {"kind": "probs", "value": [1 - p, p] if e.disagree else [p, 1 - p]}}
        for topic, doc in ((settings.topic("requests"), request),
                           (settings.topic("outputs"), output)):
            while True:
                try:
                    producer.produce(topic, orjson.dumps(doc), key)
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("could not write the benchmark's records")


async def raw_consume(settings: Settings, bootstrap: str, n_records: int) -> float:
    """Records per second of a bare aiokafka consumer over both topics."""
    topics = [settings.topic("requests"), settings.topic("outputs")]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, t0 = 0, None
        while seen < n_records:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if t0 is None and batches:
                t0 = time.perf_counter()
            seen += sum(len(b) for b in batches.values())
        assert t0 is not None
        return seen / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def pairs_metric(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    for line in text.decode().splitlines():
        if line.startswith("shadow_join_pairs_total "):
            return float(line.split()[1])
    return 0.0


def app_rate(settings: Settings, bootstrap: str, n: int, workdir: Path) -> float:
    port = free_port()
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": bootstrap,
           "SHADOW_TOPIC_PREFIX": settings.topic_prefix,
           "SHADOW_PARTITIONS": str(settings.partitions), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "shadow.cli", "join", "--data-dir", str(workdir / "join"),
           "--web-port", str(port), "--idle-close-s", "30", "--no-redis"]
    log = workdir / "join.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        t_start = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the join app exited: {log.read_text()[-2000:]}")
            done = pairs_metric(port)
            if t_start is None and done >= 0.05 * n:
                t_start, start_count = time.perf_counter(), done
            if done >= n:
                assert t_start is not None
                return (done - start_count) / (time.perf_counter() - t_start)
            time.sleep(0.05)
        raise RuntimeError("the join app did not finish in 10 minutes")
    finally:
        proc.terminate()
        proc.wait(60)


def faust_noop(settings: Settings, bootstrap: str, n_records: int, table: bool) -> float:
    """Events per second of a do-nothing Faust agent (optionally one table write each)."""
    cmd = [sys.executable, "-m", "bench._faust_noop", bootstrap, settings.topic_prefix,
           str(settings.partitions), str(n_records), *(["table"] if table else [])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    for line in run.stderr.splitlines():
        if line.startswith("RATE "):
            return float(line.split()[1])
    raise RuntimeError(f"the Faust baseline failed: {run.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shadow-bench-join-"))
    settings = Settings(state_dir=workdir / "state", topic_prefix="benchj",
                        partitions=args.partitions)
    stack = Stack(settings)
    try:
        bootstrap = stack.up().kafka_bootstrap
        create_topics(clients.admin(settings, bootstrap), topic_specs(settings))
        t0 = time.perf_counter()
        fill(settings, bootstrap, args.pairs)
        print(f"machine: {machine()}")
        print(f"wrote {args.pairs:,} requests + {args.pairs:,} outputs in "
              f"{time.perf_counter() - t0:.1f} s")
        raw = asyncio.run(raw_consume(settings, bootstrap, 2 * args.pairs)) / 2
        app = app_rate(settings, bootstrap, args.pairs, workdir)
        raw_after = asyncio.run(raw_consume(settings, bootstrap, 2 * args.pairs)) / 2
        noop = faust_noop(settings, bootstrap, 2 * args.pairs, table=False) / 2
        noop_table = faust_noop(settings, bootstrap, 2 * args.pairs, table=True) / 2
        ref = (raw + raw_after) / 2
        print(f"raw aiokafka consumer: {ref:,.0f} pairs/s (before {raw:,.0f}, "
              f"after {raw_after:,.0f})")
        print(f"Faust agent doing nothing: {noop:,.0f} pairs/s; with one table write an event: "
              f"{noop_table:,.0f} pairs/s (Faust's ceiling on this machine)")
        print(f"join app, one worker:  {app:,.0f} pairs/s; ratio to raw {app / ref:.3f}, "
              f"to the do-nothing Faust agent {app / noop:.2f}, to the one with a table write "
              f"{app / noop_table:.2f}")
        print(verdict("join pairs/s", app, TARGETS["join"]["pairs_per_s_min"],
                      lower_is_better=False))
    finally:
        stack.down()


if __name__ == "__main__":
    main()
