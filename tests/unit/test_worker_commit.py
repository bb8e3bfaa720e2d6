"""The worker's commit under group and coordinator errors (no broker needed: the consumer is
replaced by a stand-in whose commit fails the way librdkafka's does)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import load_candidate
from shadow.runtime.worker import ShadowWorker, WorkerConfig, WorkerError
from shadow.settings import Settings


class Consumer:
    def __init__(self, errors: list[KafkaError]) -> None:
        self.errors = errors
        self.committed: list[dict[int, int]] = []

    def commit(self, offsets: list, asynchronous: bool) -> None:
        if self.errors:
            raise KafkaException(self.errors.pop(0))
        self.committed.append({tp.partition: tp.offset for tp in offsets})


@pytest.fixture
def worker() -> ShadowWorker:
    engine = InferenceEngine(load_candidate("shadow.sim.traffic:build_model"), device="cpu")
    w = ShadowWorker(Settings(), "127.0.0.1:1", WorkerConfig(candidate_id="c"), engine,
                     CollectorRegistry())
    w._consumer.close()
    return w


def _errors(w: ShadowWorker) -> float:
    return w.registry.get_sample_value("shadow_worker_errors_total",
                                       {"candidate": "c", "kind": "commit"}) or 0.0


def test_a_commit_the_group_refuses_is_retried_not_fatal(worker: ShadowWorker) -> None:
    # A broker restart made the group forget this member: seen on Kafka 4.1.1, where the
    # worker died of it mid-stream (make test-faults).
    stand_in = Consumer([KafkaError(KafkaError.UNKNOWN_MEMBER_ID),
                         KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)])
    worker._consumer = stand_in  # type: ignore[assignment]
    worker._done = {0: 10, 1: 4}
    worker._commit()
    worker._commit()
    assert worker.stats.committed == {} and _errors(worker) == 4
    worker._commit()  # the same offsets, once the group answers again
    assert stand_in.committed == [{0: 10, 1: 4}]
    assert worker.stats.committed == {0: 10, 1: 4}


def test_a_fatal_commit_error_stops_the_worker(worker: ShadowWorker) -> None:
    worker._consumer = Consumer([KafkaError(KafkaError._FENCED, "fenced",  # type: ignore[assignment]
                                            fatal=True)])
    worker._done = {0: 1}
    with pytest.raises(WorkerError, match="fatal Kafka error on commit"):
        worker._commit()
