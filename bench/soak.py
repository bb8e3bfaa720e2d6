"""Soak: the whole pipeline at a steady rate for minutes (not a test, not in CI).

A private local stack; `shadow traffic` mirrors requests at --rate for --duration seconds,
`shadow worker` answers them, `shadow join` pairs them. Every --every seconds it samples the
worker's and the join's resident memory and both consumer groups' lag; it reads every pair
and takes its end-to-end latency, mirror to pair: the pair record's Kafka timestamp (when
the join produced it) minus the request's event time (when the service mirrored it).

Reported: pairs/s, latency p50/p99 after warm-up (target: p99 under 2 s), lag over time,
and memory growth from the end of warm-up to the end (target: flat within 10 %).

With --curve R1,R2,... the same pipeline runs one phase per rate, --duration seconds each
(its first quarter left out as warm-up), and prints p99 latency against rate: where the
pipeline stops keeping up.

Run: python -m bench.soak [--rate 1000] [--duration 330] [--warmup 60] [--curve 500,1000,2000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench._common import TARGETS, machine, verdict
from schemas.codec import events_of
from shadow import clients
from shadow.settings import Settings
from shadow.stack import Stack
from shadow.stack.procs import free_port
from shadow.topics import create_topics, topic_specs

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def group_lag(probe: Consumer, group_offsets: Consumer, topics: list[str]) -> int:
    """Messages of ``topics`` not yet committed by the group of ``group_offsets``."""
    lag = 0
    for topic in topics:
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        committed = group_offsets.committed(tps, timeout=10)
        for tp in committed:
            high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                               timeout=10)[1]
            lag += high - max(tp.offset, 0)
    return lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--curve", default=None,
                        help="comma-separated rates: one phase of --duration s each")
    parser.add_argument("--duration", type=float, default=330.0, help="seconds of traffic")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds left out of latency and memory growth")
    parser.add_argument("--every", type=float, default=10.0, help="sampling interval, s")
    args = parser.parse_args()

    # SIGTERM ends the run like Ctrl-C: children and the private stack are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    s = Settings(state_dir=tempfile.mkdtemp(prefix="shadow-soak-"), topic_prefix="soak",
                 partitions=3)
    stack = Stack(s)
    children: list[subprocess.Popen] = []
    try:
        ep = stack.up()
        create_topics(clients.admin(s, ep.kafka_bootstrap), topic_specs(s))
        env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": ep.kafka_bootstrap,
               "SHADOW_REDIS_URL": ep.redis_url, "SHADOW_TOPIC_PREFIX": s.topic_prefix,
               "SHADOW_PARTITIONS": str(s.partitions), "PYTHONPATH": str(REPO)}
        logs = Path(s.state_dir)

        def spawn(*cmd: str) -> subprocess.Popen:
            log = (logs / f"{cmd[0]}.log").open("ab")
            p = subprocess.Popen([sys.executable, "-m", "shadow.cli", *cmd], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            children.append(p)
            return p

        worker = spawn("worker", "--candidate", "shadow.sim.traffic:build_model",
                       "--candidate-id", "c1", "--device", "cpu", "--max-wait-ms", "20")
        join = spawn("join", "--data-dir", str(logs / "join"), "--web-port", str(free_port()),
                     "--window-s", "10", "--grace-s", "2", "--expect", "fraud-scorer=c1")
        time.sleep(8)  # both join their groups before traffic starts
        rates = [float(r) for r in args.curve.split(",")] if args.curve else [args.rate]
        pairs = clients.consumer(s, ep.kafka_bootstrap, "soak-reader")
        pairs.subscribe([s.topic("pairs")])
        probe = clients.consumer(s, ep.kafka_bootstrap, "soak-probe")
        worker_group = clients.consumer(s, ep.kafka_bootstrap, f"{s.topic_prefix}.shadow.c1")
        join_group = clients.consumer(s, ep.kafka_bootstrap, f"{s.topic_prefix}-join")
        phases = []
        for seed, rate in enumerate(rates, start=1):
            traffic = spawn("traffic", "--rate", str(rate), "--duration", str(args.duration),
                            "--disagree", "0.02", "--seed", str(seed))
            t0 = time.time()
            latencies: list[tuple[float, float]] = []  # (seconds since start, ms)
            samples: list[tuple[float, float, float, int, int]] = []
            next_sample = t0
            end = t0 + args.duration + 60  # the tail drains
            while time.time() < end:
                for msg in pairs.consume(500, 0.2):
                    if msg.error() is None:  # one pair, or a batch of them
                        at = msg.timestamp()[1] / 1000
                        for pair in events_of(msg.value())[0]:
                            latencies.append((at - t0, msg.timestamp()[1] - pair["ts"]))
                if time.time() >= next_sample:
                    next_sample += args.every
                    samples.append((time.time() - t0, rss_mib(worker.pid), rss_mib(join.pid),
                                    group_lag(probe, worker_group, [s.topic("requests")]),
                                    group_lag(probe, join_group, [s.topic("requests"),
                                                                  s.topic("outputs")])))
                    w = samples[-1]
                    print(f"rate {rate:.0f} t={w[0]:5.0f}s pairs={len(latencies):7d} worker "
                          f"{w[1]:6.1f} MiB join {w[2]:6.1f} MiB lag worker {w[3]:5d} join "
                          f"{w[4]:5d}", flush=True)
                if traffic.poll() is not None and samples and samples[-1][3] == 0 and \
                        samples[-1][4] == 0 and time.time() > t0 + args.duration:
                    break
            sent = traffic.wait(30)
            assert sent == 0, "the traffic generator failed"
            warmup = args.warmup if len(rates) == 1 else args.duration / 4
            phases.append((rate, warmup, latencies, samples))
    finally:
        for p in children:
            p.terminate()
        for p in children:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.down()

    print(f"machine: {machine()}")
    target = TARGETS["soak"]["latency_p99_ms_max"]
    if len(phases) > 1:
        print("rate/s  pairs/s  p50 ms  p99 ms  max lag (join)")
        for rate, warmup, latencies, samples in phases:
            steady = sorted(ms for at, ms in latencies if at >= warmup)
            span = max(at for at, _ in latencies) - min(at for at, _ in latencies)
            after = [x for x in samples if x[0] >= warmup]
            print(f"{rate:6.0f}  {len(latencies) / span:7.1f}  "
                  f"{statistics.median(steady):6.0f}  {steady[int(len(steady) * 0.99)]:6.0f}  "
                  f"{max(x[4] for x in after):6d}")
        return
    rate, warmup, latencies, samples = phases[0]
    steady = sorted(ms for at, ms in latencies if at >= warmup)
    span = max(at for at, _ in latencies) - min(at for at, _ in latencies)
    after = [x for x in samples if x[0] >= warmup]
    base, last = after[0], after[-1]
    p99 = steady[int(len(steady) * 0.99)]
    print(f"rate {rate:.0f}/s for {args.duration:.0f} s: {len(latencies)} pairs, "
          f"{len(latencies) / span:.1f} pairs/s")
    print(f"latency mirror -> pair after warm-up: p50 {statistics.median(steady):.0f} ms, "
          f"p99 {p99:.0f} ms, max {steady[-1]:.0f} ms")
    print(verdict("latency p99 ms", p99, target))
    print(verdict("rate", rate, TARGETS["soak"]["rate_min"], lower_is_better=False))
    print(f"lag (messages) max after warm-up: worker {max(x[3] for x in after)}, "
          f"join {max(x[4] for x in after)}")
    for name, i in (("worker", 1), ("join", 2)):
        growth = (last[i] - base[i]) / base[i]
        print(f"{name} RSS {base[i]:.1f} -> {last[i]:.1f} MiB")
        print(verdict(f"{name} memory growth", abs(growth), TARGETS["soak"]["memory_growth_max"]))
    if args.duration < TARGETS["soak"]["duration_s_min"]:
        print(f"(a soak counts from {TARGETS['soak']['duration_s_min']} s of traffic)")


if __name__ == "__main__":
    main()
