from __future__ import annotations

import pytest

from shadow.exceptions import TopicMismatchError
from shadow.settings import Settings
from shadow.topics import plan_topics, topic_specs


def test_specs_share_the_partition_count_of_requests_and_outputs() -> None:
    specs = {s.name: s for s in topic_specs(Settings(topic_prefix="p"), partitions=8)}
    assert set(specs) == {"p.requests", "p.outputs", "p.pairs", "p.windows", "p.deadletter"}
    assert specs["p.requests"].partitions == specs["p.outputs"].partitions == 8
    assert specs["p.windows"].partitions == 1
    assert int(specs["p.requests"].config["retention.ms"]) == 7 * 24 * 3600 * 1000
    assert int(specs["p.windows"].config["retention.ms"]) > int(
        specs["p.requests"].config["retention.ms"])


def test_plan_creates_only_what_is_missing() -> None:
    specs = topic_specs(Settings(topic_prefix="p"), partitions=4)
    plan = plan_topics(specs, {"p.requests": 4, "p.windows": 1, "other": 99})
    assert [s.name for s in plan.create] == ["p.outputs", "p.pairs", "p.deadletter"]
    assert plan.existing == ["p.requests", "p.windows"]
    assert plan_topics(specs, {s.name: s.partitions for s in specs}).create == []


def test_plan_refuses_disagreeing_partition_counts_with_an_explanation() -> None:
    specs = topic_specs(Settings(topic_prefix="p"), partitions=4)
    with pytest.raises(TopicMismatchError) as info:
        plan_topics(specs, {"p.requests": 4, "p.outputs": 2})
    assert info.value.problems == ["existing p.outputs has 2 partitions, expected 4"]
    assert "same partition count" in str(info.value)


def test_the_partitioner_is_kafkas_murmur2_one_key_or_many() -> None:
    import random

    from schemas.topics import partition_of, partitions_of
    from tests.helpers import murmur2_partition  # Kafka's vectors: test_helpers

    rnd = random.Random(7)
    for _ in range(200):
        keys = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 41)))
                for _ in range(rnd.randint(1, 40))]
        n = rnd.randint(1, 64)
        want = [murmur2_partition(k, n) for k in keys]
        assert [partition_of(k, n) for k in keys] == want
        assert partitions_of(keys, n) == want
    assert partitions_of([], 6) == []
