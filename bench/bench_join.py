"""Join throughput: joined pairs per second for one app worker, against same-run references.

N mirrored requests and N shadow outputs (one candidate) are written to a local Kafka first,
compressed with lz4 like the mirror does, in three shapes, each under its own topic prefix:

- ``single``: every request and every output a record of its own (the references run here);
- ``clients``: as the product's own clients write them: requests published through the
  mirror client (``producers.Mirror``, its default batches of up to 100 events per partition)
  and the worker's batches of outputs, one record per partition and batch (``batch/1``, 100
  events);
- ``foreign``: every request a record of its own, as any Kafka client would write it (the
  console producer), and the worker's batches of outputs.

Then, in the same run:

Every measurement is taken ``--rounds`` times (default 3), interleaved, and medians quoted.

- references on ``single``: a bare aiokafka consumer of both topics that does nothing with the
  records (quoted as pairs/s, two records a pair), and a do-nothing Faust agent (Faust's own
  cost per record, the issue's yardstick: its records/s);
- restart: a join killed with -9 a third of the way through ``clients`` and started again
  at once: seconds until it pairs again (Kafka must first give its partitions back);
- app: ``shadow join`` (one worker, its default RocksDB store) on ``clients`` and on
  ``foreign``; the rate is taken from its /metrics (shadow_join_pairs_total) between 5 and
  100 percent of N, so the app's start-up is not counted.

Run: python -m bench.bench_join [--pairs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._common import TARGETS, machine, verdict
from schemas.builders import shadow_output
from schemas.codec import encode_batch
from schemas.topics import partitions_of
from shadow import clients
from shadow.settings import Settings
from shadow.sim.traffic import TrafficSpec
from shadow.stack import Stack
from shadow.stack.procs import free_port
from shadow.topics import create_topics, topic_specs

REPO = Path(__file__).resolve().parents[1]


BATCH = 100  # events per batch record, as the clients write them


def fill(settings: Settings, bootstrap: str, n: int, shape: str) -> None:
    """N requests and N answers in the given shape (see the module's docstring)."""
    spec = TrafficSpec(seed=3)
    producer = clients.producer(settings, bootstrap, **{"compression.type": "lz4",
                                                        "linger.ms": 20})
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    requests, outputs = [], []
    for i in range(n):
        e = spec.event(i)
        ts = t0 + i // 10  # ten requests a millisecond: windows of 60 s hold 600k
        p = 0.3 + (i % 7) / 20
        requests.append({"schema": "mirror.request/1", "request_id": e.request_id,
                         "model": "fraud-scorer", "ts": ts, "inputs": e.inputs,
                         "live": {"version": "v1", "latency_ms": 1.5,
                                  "output": {"kind": "probs", "value": [p, 1 - p]}},
                         "attrs": {"segment": e.segment}})
        outputs.append(shadow_output(e.request_id, "fraud-scorer", ts, "c1",
                                     {"kind": "probs",
                                      "value": [1 - p, p] if e.disagree else [p, 1 - p]}, 0.8))
    batched = {"single": (), "clients": ("requests", "outputs"), "foreign": ("outputs",)}
    for role, docs in (("requests", requests), ("outputs", outputs)):
        topic = settings.topic(role)
        if role == "requests" and shape == "clients":
            _publish(bootstrap, topic, docs)
        elif role in batched[shape]:
            _produce_batches(producer, topic, docs, settings.partitions)
        else:
            for doc in docs:
                _produce(producer, topic, orjson.dumps(doc), doc["request_id"].encode())
    if producer.flush(60):
        raise RuntimeError("could not write the benchmark's records")


def _publish(bootstrap: str, topic: str, docs: list[dict[str, Any]]) -> None:
    """The requests as a service publishes them: through the mirror client."""
    from prometheus_client import CollectorRegistry

    from producers import Mirror, MirrorConfig

    config = MirrorConfig(bootstrap=bootstrap, topic=topic, model="fraud-scorer",
                          live_version="v1", output_kind="probs",
                          max_queue_messages=max(100_000, len(docs)))
    with Mirror(config, CollectorRegistry()) as mirror:
        for d in docs:
            mirror.publish(d["request_id"], d["inputs"], d["live"]["output"],
                           latency_ms=d["live"]["latency_ms"], ts=d["ts"],
                           segment=d["attrs"]["segment"])
        if mirror.flush(120):
            raise RuntimeError("the mirror could not write the benchmark's requests")
    counts = mirror.metrics.snapshot()
    if counts.published != len(docs):
        raise RuntimeError(f"the mirror published {counts.published} of {len(docs)}")


def _produce_batches(producer: Any, topic: str, docs: list[dict[str, Any]],
                     partitions: int) -> None:
    """Batches of up to BATCH events, each on the partition murmur2 gives its request ids."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    keys = [d["request_id"].encode() for d in docs]
    for doc, p in zip(docs, partitions_of(keys, partitions), strict=True):
        by_partition.setdefault(p, []).append(doc)
    for p, group in sorted(by_partition.items()):
        for i in range(0, len(group), BATCH):
            chunk = group[i:i + BATCH]
            _produce(producer, topic, encode_batch(chunk), chunk[0]["request_id"].encode(), p)


def _produce(producer: Any, topic: str, value: bytes, key: bytes, partition: int = -1) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.1)


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


def start_join(settings: Settings, bootstrap: str, workdir: Path, port: int
               ) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": bootstrap,
           "SHADOW_TOPIC_PREFIX": settings.topic_prefix,
           "SHADOW_PARTITIONS": str(settings.partitions), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "shadow.cli", "join", "--data-dir", str(workdir / "join"),
           "--web-port", str(port), "--idle-close-s", "30", "--no-redis"]
    log = (workdir / "join.log").open("ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def restart_s(settings: Settings, bootstrap: str, n: int, workdir: Path) -> float:
    """kill -9 of a join a third of the way through, then a restart at once: seconds from
    the restart until it pairs again (its own count of new pairs leaves zero)."""
    port = free_port()
    first = start_join(settings, bootstrap, workdir, port)
    try:
        deadline = time.monotonic() + 300
        while pairs_metric(port) < n / 3:
            if time.monotonic() > deadline or first.poll() is not None:
                raise RuntimeError("the join did not get a third of the way")
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(30)
    t0 = time.perf_counter()
    second = start_join(settings, bootstrap, workdir, port)
    try:
        while pairs_metric(port) <= 0:
            if time.perf_counter() - t0 > 300 or second.poll() is not None:
                raise RuntimeError("the restarted join did not pair again in 5 minutes")
            time.sleep(0.05)
        return time.perf_counter() - t0
    finally:
        second.terminate()
        second.wait(60)


def app_rate(settings: Settings, bootstrap: str, n: int, workdir: Path) -> float:
    port = free_port()
    log = workdir / "join.log"
    proc = start_join(settings, bootstrap, workdir, port)
    try:
        t_start = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the join app exited: {log.read_text()[-2000:]}")
            done = pairs_metric(port)
            if t_start is None and done >= 0.05 * n:
                if done > 0.5 * n:  # it was past half-way before /metrics answered
                    raise RuntimeError(f"{n} pairs are too few to measure this join's rate: "
                                       "give a larger --pairs")
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every measurement; medians are quoted")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shadow-bench-join-"))
    base = Settings(state_dir=workdir / "state", topic_prefix="benchj",
                    partitions=args.partitions)
    # The app commits its offsets under an id of its topic prefix: each round of the app
    # reads topics of its own.
    shapes = {(shape, r): base.model_copy(update={"topic_prefix": f"benchj-{shape}-{r}"})
              for shape in ("clients", "foreign") for r in range(args.rounds)}
    shapes["single", 0] = base.model_copy(update={"topic_prefix": "benchj-single"})
    shapes["restart", 0] = base.model_copy(update={"topic_prefix": "benchj-restart"})
    stack = Stack(base)
    try:
        bootstrap = stack.up().kafka_bootstrap
        print(f"machine: {machine()}")
        for (shape, r), s in shapes.items():
            create_topics(clients.admin(s, bootstrap), topic_specs(s))
            t0 = time.perf_counter()
            fill(s, bootstrap, args.pairs, "clients" if shape == "restart" else shape)
            print(f"{shape} ({r}): wrote {args.pairs:,} requests + {args.pairs:,} outputs in "
                  f"{time.perf_counter() - t0:.1f} s")
        single = shapes["single", 0]
        runs: dict[str, list[float]] = {"raw": [], "noop": [], "clients": [], "foreign": []}
        for r in range(args.rounds):  # interleaved, so that a slow spell hits every figure
            runs["raw"].append(asyncio.run(raw_consume(single, bootstrap, 2 * args.pairs)) / 2)
            runs["noop"].append(faust_noop(single, bootstrap, 2 * args.pairs, table=False))
            for shape in ("clients", "foreign"):
                runs[shape].append(app_rate(shapes[shape, r], bootstrap, args.pairs,
                                            workdir / f"{shape}-{r}"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in runs.items()))
        med = {k: statistics.median(v) for k, v in runs.items()}
        ref, noop_records = med["raw"], med["noop"]
        print(f"medians of {args.rounds} rounds, {args.pairs:,} pairs each:")
        print(f"raw aiokafka consumer (single records): {ref:,.0f} pairs/s")
        print(f"Faust agent doing nothing (single records): {noop_records:,.0f} records/s")
        for shape in ("clients", "foreign"):
            rate = med[shape]
            print(f"join app, one worker, {shape}: {rate:,.0f} pairs/s; ratio to the do-nothing "
                  f"Faust agent's records/s {rate / noop_records:.2f}, to raw {rate / ref:.3f}")
        restart = restart_s(shapes["restart", 0], bootstrap, args.pairs, workdir / "restart")
        print(f"join killed with -9 and restarted: pairs again after {restart:.1f} s")
        target = TARGETS["join"]
        print(verdict("join pairs/s per no-op record/s, clients' batches",
                      med["clients"] / noop_records, target["ratio_to_noop_clients_min"],
                      lower_is_better=False))
        print(verdict("join pairs/s per no-op record/s, single requests",
                      med["foreign"] / noop_records, target["ratio_to_noop_foreign_min"],
                      lower_is_better=False))
        print(verdict("seconds from a restart after kill -9 to pairs again", restart,
                      target["restart_s_max"]))
    finally:
        stack.down()


if __name__ == "__main__":
    main()
