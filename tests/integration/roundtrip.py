"""`shadow demo`: the stack up, the topics created, and events through the pipeline.

For now it sends mirrored requests through Kafka and reads them back with the project's codec,
and keeps a tally in Redis; the full pipeline (worker, join, alerts) grows in here.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import asdict, dataclass

from confluent_kafka import KafkaError, TopicPartition

from schemas import MirroredRequest, encode
from schemas.codec import events_of, from_dict
from shadow import clients
from shadow.exceptions import ShadowstreamError
from shadow.settings import Settings
from shadow.stack import Endpoints
from shadow.topics import create_topics, topic_specs


@dataclass(frozen=True)
class RoundTrip:
    sent: int
    received: int
    topic: str
    partitions_used: int
    seconds: float
    redis_key: str
    redis_count: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_request(rng: random.Random, i: int) -> MirroredRequest:
    amount = round(rng.lognormvariate(3, 1), 2)
    p = min(0.99, amount / 500)
    return MirroredRequest.model_validate({
        "request_id": f"demo-{uuid.UUID(int=rng.getrandbits(128))}",
        "model": "fraud-scorer",
        "ts": int(time.time() * 1000),
        "inputs": {"amount": amount, "country": rng.choice(["DE", "FR", "US"]), "seq": i},
        "live": {"version": "v1", "latency_ms": round(rng.uniform(1, 5), 3),
                 "output": {"kind": "probs", "value": [1 - p, p], "labels": ["legit", "fraud"]}},
        "attrs": {"segment": rng.choice(["eu", "us"])},
    })


def round_trip(settings: Settings, endpoints: Endpoints, count: int = 100,
               seed: int = 7, timeout_s: float = 30.0) -> RoundTrip:
    """Publish ``count`` requests, read them back by offset, and tally them in Redis."""
    t0 = time.monotonic()
    create_topics(clients.admin(settings, endpoints.kafka_bootstrap), topic_specs(settings))
    topic = settings.topic("requests")
    rng = random.Random(seed)
    sent = [sample_request(rng, i) for i in range(count)]
    delivered: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))

    prod = clients.producer(settings, endpoints.kafka_bootstrap)
    for req in sent:
        prod.produce(topic, encode(req), key=req.request_id.encode(), on_delivery=on_delivery)
        prod.poll(0)
    if prod.flush(timeout_s) or errors:
        raise ShadowstreamError(f"demo: delivery failed: {errors[:1] or 'flush timed out'}")

    # Read back exactly what was delivered: from the first offset per partition.
    starts: dict[int, int] = {}
    for part, off in delivered:
        starts[part] = min(off, starts.get(part, off))
    cons = clients.consumer(settings, endpoints.kafka_bootstrap, f"demo-{uuid.uuid4()}")
    cons.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    wanted = {r.request_id for r in sent}
    got: dict[str, MirroredRequest] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < len(wanted) and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None or msg.error():
                continue
            for doc in events_of(msg.value())[0]:  # others may write batches there too
                req = from_dict(doc, MirroredRequest)
                if req.request_id in wanted:
                    got[req.request_id] = req
    finally:
        cons.close()
    if [got.get(r.request_id) for r in sent] != sent:
        raise ShadowstreamError(f"demo: sent {len(sent)} requests, read back {len(got)} intact")

    key = f"{settings.topic_prefix}:demo:roundtrips"
    total = int(clients.redis_client(endpoints.redis_url).incrby(key, len(got)))
    return RoundTrip(count, len(got), topic, len(starts), time.monotonic() - t0, key, total)
