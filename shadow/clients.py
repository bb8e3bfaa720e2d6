"""Kafka and Redis clients built from the settings, with the project's fixed choices."""

from __future__ import annotations

import logging
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata

from schemas.topics import PARTITIONER
from shadow.exceptions import KafkaUnreachableError
from shadow.settings import Settings

# librdkafka logs through Python logging, not straight to stderr.
KAFKA_LOG = logging.getLogger("shadowstream.kafka")


def admin(settings: Settings, bootstrap: str) -> AdminClient:
    return AdminClient({**settings.confluent_config(bootstrap), "logger": KAFKA_LOG})


def producer(settings: Settings, bootstrap: str, **overrides: Any) -> Producer:
    conf: dict[str, Any] = {
        **settings.confluent_config(bootstrap),
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "logger": KAFKA_LOG,
    }
    conf.update(overrides)
    return Producer(conf)


def consumer(settings: Settings, bootstrap: str, group: str, **overrides: Any) -> Consumer:
    conf: dict[str, Any] = {
        **settings.confluent_config(bootstrap),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "logger": KAFKA_LOG,
    }
    conf.update(overrides)
    return Consumer(conf)


def redis_client(url: str, timeout_s: float = 2.0) -> redis.Redis:
    # Every call has a timeout: a stuck Redis must never stall the stream.
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def probe_kafka(settings: Settings, bootstrap: str, timeout_s: float | None = None
                ) -> ClusterMetadata:
    """The cluster's metadata, or KafkaUnreachableError once ``kafka_timeout_s`` has passed
    without an answer (librdkafka would otherwise retry, and log, for ever)."""
    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    client = admin(settings, bootstrap)
    try:
        return client.list_topics(timeout=timeout)
    except KafkaException as exc:
        client.poll(0)  # hands librdkafka's queued log lines to the logger (shown with -v)
        raise KafkaUnreachableError(bootstrap, timeout, exc.args[0].str()) from None
