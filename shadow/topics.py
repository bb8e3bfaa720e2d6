"""The pipeline's topics: names, partition counts, retention, creation and deletion.

``plan_topics`` is pure (it decides from what exists); ``create_topics`` applies the plan
with the Kafka admin client. The join app adds topics of its own (its table's changelog,
Faust's assignor topic), named after its app id ``<prefix>-join``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import join_app_id
from shadow.exceptions import ShadowstreamError, TopicMismatchError
from shadow.settings import TOPIC_NAMES, Settings

DAY_MS = 24 * 3600 * 1000

# Retention suits each topic's use: requests are kept long enough to record and replay them,
# windows (small) for trend views, dead letters for someone to look at them.
RETENTION_DAYS = {"requests": 7, "outputs": 7, "pairs": 7, "windows": 30, "deadletter": 14}
# Partition counts that must equal the requests topic's (Faust co-partitioning: the join reads
# a request and its shadow outputs from the same partition number).
CO_PARTITIONED = ("requests", "outputs")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicPlan:
    create: list[TopicSpec]
    existing: list[str]


def topic_specs(settings: Settings, partitions: int | None = None) -> list[TopicSpec]:
    n = partitions or settings.partitions
    specs = []
    for name in TOPIC_NAMES:
        count = 1 if name == "windows" else n  # one totally ordered series of closed windows
        config = {
            "retention.ms": str(RETENTION_DAYS[name] * DAY_MS),
            "cleanup.policy": "delete",
            "compression.type": "producer",
        }
        specs.append(TopicSpec(settings.topic(name), count, config))
    return specs


def plan_topics(specs: list[TopicSpec], existing: dict[str, int]) -> TopicPlan:
    """Decide what to create; refuse when existing partition counts disagree with ``specs``."""
    problems = [
        f"existing {s.name} has {existing[s.name]} partitions, expected {s.partitions}"
        for s in specs
        if s.name in existing and existing[s.name] != s.partitions
    ]
    if problems:
        raise TopicMismatchError(problems)
    return TopicPlan(
        create=[s for s in specs if s.name not in existing],
        existing=[s.name for s in specs if s.name in existing],
    )


def owned(name: str, prefix: str) -> bool:
    """Whether a topic belongs to the pipeline of ``prefix`` (its five, or the join's)."""
    return name.startswith(f"{prefix}.") or name.startswith(f"{join_app_id(prefix)}-")


def input_partitions(existing: dict[str, int], settings: Settings) -> int:
    """The partition count the join and the workers must use: that of the requests and
    outputs topics, which must exist and agree."""
    req, out = settings.topic("requests"), settings.topic("outputs")
    missing = [t for t in (req, out) if t not in existing]
    if missing:
        raise TopicMismatchError([f"{t} does not exist" for t in missing],
                                 f"Run `shadow topics create` (SHADOW_TOPIC_PREFIX is "
                                 f"{settings.topic_prefix!r})")
    if existing[req] != existing[out]:
        raise TopicMismatchError([f"{out} has {existing[out]} partitions, {req} has "
                                  f"{existing[req]}"], "Requests and outputs must have the "
                                 "same count: delete and recreate the topics of this prefix "
                                 "(`shadow topics delete --yes`), or use another prefix")
    return existing[req]


def delete_topics(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    futures = admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise ShadowstreamError(f"cannot delete {name}: {err.str()}") from None
    deadline = time.monotonic() + timeout_s
    while set(names) & set(existing_partitions(admin)):
        if time.monotonic() > deadline:
            raise ShadowstreamError(f"topics still listed after {timeout_s:.0f}s: {names}")
        time.sleep(0.1)


def existing_partitions(admin: AdminClient, timeout_s: float = 10.0) -> dict[str, int]:
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ShadowstreamError(f"cannot list topics: {exc.args[0]}") from None
    return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}


def create_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30.0
) -> TopicPlan:
    """Create what is missing, idempotently; returns what was created and what already was."""
    plan = plan_topics(specs, existing_partitions(admin))
    if not plan.create:
        return plan
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config)
         for s in plan.create],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    raced = []
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ShadowstreamError(f"cannot create {name}: {err.str()}") from None
            raced.append(name)
    if raced:
        # Someone created it between our look and our create: it must still agree with us.
        plan_topics([s for s in specs if s.name in raced], existing_partitions(admin))
    _await_ready(admin, plan.create, timeout_s)
    return TopicPlan(create=[s for s in plan.create if s.name not in raced],
                     existing=plan.existing + raced)


def _await_ready(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    """Return once the metadata shows every topic with all its partitions led, twice in a
    row. A test saw the first record sent to one partition of a topic created a moment
    before go missing (17 of its first 50 requests) while the mirror had nothing pending.
    The likely cause: librdkafka's idempotent producer forgets a partition's sequence
    numbers when the metadata briefly shows it missing, and the broker then drops the first
    batch sent again as a duplicate (librdkafka issue 3712). Producers that start only once
    the metadata has settled do not meet that race."""
    deadline = time.monotonic() + timeout_s
    wanted = {s.name: s.partitions for s in specs}
    ready_before = False
    while True:
        try:
            topics = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        except KafkaException:
            topics = {}
        not_ready = sorted(
            name for name, n in wanted.items()
            if (t := topics.get(name)) is None or t.error is not None or len(t.partitions) != n
            or any(pm.leader < 0 or pm.error is not None for pm in t.partitions.values()))
        if not not_ready:
            if ready_before:
                return
            ready_before = True
        else:
            ready_before = False
        if time.monotonic() > deadline:
            raise ShadowstreamError(f"topics not ready (all partitions led) after "
                                    f"{timeout_s:.0f}s: {not_ready}")
        time.sleep(0.1)
