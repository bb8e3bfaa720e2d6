"""Worker throughput end to end through Kafka, and engine throughput, against the raw model.

The model is an MLP over the traffic generator's eight features, sized so that one batch takes
about a millisecond on this CPU. The reference is the raw model: ``model(x)`` under
inference_mode on a ready tensor of the same batch size, same device, same torch threads,
measured in the same run.

- engine: ``InferenceEngine.map`` over lists of event inputs (collate + forward + answers),
  for several batch sizes, against the raw model at each size;
- worker: a ShadowWorker (in-process) drains N mirrored requests from a local Kafka and
  produces N outputs, delivered and committed, against the raw model at --max-batch.

Run: python -m bench.bench_worker [--threads N] [--events N] [--batch B]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry
from torch import nn

from bench._common import TARGETS, machine, verdict
from producers import Mirror, MirrorConfig
from shadow import clients
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import Candidate, CardAdapter, ModelCard
from shadow.runtime.worker import ShadowWorker, WorkerConfig, WorkerStats
from shadow.settings import Settings
from shadow.sim.traffic import MODEL_CARD, N_FEATURES, TrafficSpec, featurize
from shadow.stack import Stack
from shadow.topics import create_topics, topic_specs

SPEC = TrafficSpec(seed=11)
DEADLINE_S = 300.0  # a stage that has not finished by then will not: say so, do not hang


def mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, 2), nn.Softmax(dim=-1)).eval()


def raw_rows_per_s(model: nn.Module, batch: int, seconds: float = 1.0) -> float:
    """The reference: forward passes on a ready tensor, rows per second (median of 5)."""
    x = torch.tensor([featurize(SPEC.event(i).inputs) for i in range(batch)])
    rates = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 5:
                model(x)
                n += 1
            rates.append(n * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def pick_hidden(batch: int, target_ms: float = 1.0) -> int:
    """The hidden width whose batch takes closest to target_ms here."""
    best, best_gap = 64, float("inf")
    for hidden in (128, 256, 384, 512, 768, 1024, 1536):
        ms = batch / raw_rows_per_s(mlp(hidden), batch, 0.3) * 1000
        if abs(ms - target_ms) < best_gap:
            best, best_gap = hidden, abs(ms - target_ms)
    return best


def candidate(model: nn.Module) -> Candidate:
    return Candidate("bench-mlp", model, CardAdapter(ModelCard.model_validate(MODEL_CARD)))


def engine_rows_per_s(model: nn.Module, batch: int, rows: int) -> float:
    engine = InferenceEngine(candidate(model), device="cpu", max_batch=batch)
    inputs = [SPEC.event(i).inputs for i in range(rows)]
    batches = [inputs[i:i + batch] for i in range(0, rows, batch)]
    list(engine.map(batches[:3]))  # warm up
    t0 = time.perf_counter()
    n = sum(len(r) for r in engine.map(batches))
    return n / (time.perf_counter() - t0)


def passthrough_rows_per_s(settings: Settings, bootstrap: str, batch: int,
                           events: int) -> float:
    """The floor of any worker in Python: consume the requests in batches and produce each
    value unchanged to the outputs topic, in its partition, then flush; no decoding, no
    model, no encoding. Counted from the first message, as the worker is. The mirror ships
    records of up to 100 events: the floor reads every record the topic holds (its end
    offsets) and is the events they carry per second."""
    consumer = clients.consumer(settings, bootstrap, f"{settings.topic_prefix}.passthrough",
                                **{"enable.partition.eof": False, "fetch.wait.max.ms": 50})
    producer = clients.producer(settings, bootstrap, **{"delivery.report.only.error": True})
    topic = settings.topic("requests")
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    records = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                  for p in meta.partitions)
    consumer.subscribe([topic])
    outputs, n, t0 = settings.topic("outputs"), 0, 0.0
    deadline = time.monotonic() + DEADLINE_S
    try:
        while n < records:
            if time.monotonic() > deadline:
                raise SystemExit(f"passthrough: {n} of {records} records read in "
                                 f"{DEADLINE_S:.0f} s")
            messages = consumer.consume(batch, 0.005)
            if messages and not t0:
                t0 = time.perf_counter()
            for msg in messages:
                producer.produce(outputs, msg.value(), msg.key(), partition=msg.partition())
            n += len(messages)
            producer.poll(0)
        producer.flush(60)
        return events / (time.perf_counter() - t0)
    finally:
        consumer.close()


def worker_rows_per_s(models: dict[str, nn.Module], batch: int, events: int
                      ) -> tuple[dict[str, float], float]:
    """Requests/s of a worker end to end for each model (each its own consumer group over
    the same requests), and of the passthrough floor on that topic."""
    settings = Settings(state_dir=tempfile.mkdtemp(prefix="shadow-bench-"),
                        topic_prefix="benchw")
    stack = Stack(settings)
    try:
        endpoints = stack.up()
        bootstrap = endpoints.kafka_bootstrap
        create_topics(clients.admin(settings, bootstrap), topic_specs(settings, partitions=6))
        cfg = MirrorConfig(bootstrap=bootstrap, model="fraud-scorer",
                           topic=settings.topic("requests"), output_kind="probs",
                           max_queue_messages=events + 1)
        with Mirror(cfg, CollectorRegistry()) as mirror:
            for i in range(events):
                e = SPEC.event(i)
                mirror.publish(e.request_id, e.inputs, [0.5, 0.5], latency_ms=1.0)
            assert mirror.flush(120) == 0
        floor = passthrough_rows_per_s(settings, bootstrap, batch, events)
        return {name: _one_worker(settings, bootstrap, name, model, batch, events)
                for name, model in models.items()}, floor
    finally:
        stack.down()


def _one_worker(settings: Settings, bootstrap: str, name: str, model: nn.Module, batch: int,
                events: int) -> float:
    engine = InferenceEngine(candidate(model), device="cpu", max_batch=batch)
    config = WorkerConfig(candidate_id=f"bench-{name}", max_batch=batch, max_wait_ms=5)
    worker = ShadowWorker(settings, bootstrap, config, engine)
    started: list[tuple[float, int]] = []
    deadline = time.monotonic() + DEADLINE_S

    def until(stats: WorkerStats) -> bool:
        # The clock starts with the first batch, not with the group join before it.
        if not started and stats.handled:
            started.append((time.perf_counter(), stats.handled))
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {name}: {stats.handled} of {events} requests handled in "
                             f"{DEADLINE_S:.0f} s ({stats})")
        return stats.handled >= events

    worker.run(until=until)  # returns once the outputs are delivered and committed
    t0, first = started[0]
    elapsed = time.perf_counter() - t0
    assert worker.stats.answered == events, worker.stats
    return (events - first) / elapsed


def linear() -> nn.Module:
    """A near-free model: what is left is the worker's own cost."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 2), nn.Softmax(dim=-1)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=64, help="the worker's --max-batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hidden = pick_hidden(args.batch)
    model = mlp(hidden)
    ms = args.batch / raw_rows_per_s(model, args.batch, 0.5) * 1000
    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} intra-op threads")
    print(f"model: MLP 8-{hidden}-{hidden}-2, {ms:.2f} ms per batch of {args.batch} (raw)")

    print("engine (no Kafka), rows/s:")
    for b in (1, 8, 32, 64, 128, 512):
        raw = raw_rows_per_s(model, b)
        eng = engine_rows_per_s(model, b, rows=max(2_000, 40 * b))
        print(f"  batch {b:4}  engine {eng:10,.0f}  raw {raw:10,.0f}  ratio {eng / raw:.2f}")

    raw = raw_rows_per_s(model, args.batch)
    rates, floor = worker_rows_per_s({"linear": linear(), "mlp": model}, args.batch,
                                     args.events)
    raw_after = raw_rows_per_s(model, args.batch)
    ref = statistics.median([raw, raw_after])
    rate = rates["mlp"]
    # What any Python worker could reach here: Kafka in and out alone (the floor), then the
    # floor and the model one after the other (serial): the physical limit on two cores
    # shared with the broker.
    serial = 1 / (1 / floor + 1 / ref)
    own_us = max(0.0, 1e6 / rates["linear"] - 1e6 / floor)
    print(f"passthrough floor (consume + produce, no decode, no model): {floor:,.0f} "
          f"requests/s; raw model at batch {args.batch}: {ref:,.0f} rows/s (before "
          f"{raw:,.0f}, after {raw_after:,.0f}); floor and model serial: {serial:,.0f}/s")
    print(f"worker, near-free model (Linear 8-2): {rates['linear']:,.0f} requests/s, "
          f"{rates['linear'] / floor:.2f} of the floor; the worker's own cost about "
          f"{own_us:.1f} us a request above the floor's")
    print(f"worker, 1 ms model: {rate:,.0f} requests/s, {rate / serial:.2f} of floor and model "
          f"serial, {rate / ref:.2f} of the raw model")
    t = TARGETS["worker"]
    print(verdict("worker (near-free model) / floor", rates["linear"] / floor,
                  t["ratio_to_floor_near_free_min"], lower_is_better=False))
    print(verdict("worker (1 ms model) / floor and model serial", rate / serial,
                  t["ratio_to_serial_min"], lower_is_better=False))
    print(verdict("worker (1 ms model) / raw model", rate / ref, t["ratio_to_raw_model_min"],
                  lower_is_better=False))

if __name__ == "__main__":
    main()
