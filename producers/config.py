"""The mirror client's configuration: one frozen, validated object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from producers.pii import PiiPolicy
from schemas.records import OutputKind
from schemas.topics import PARTITIONER, env_prefix, topic_name

DropPolicy = Literal["drop", "pause"]
Compression = Literal["lz4", "zstd"]


def _secret_key(key: str) -> bool:
    return "password" in key or "secret" in key or key.endswith((".pem", ".key"))


class MirrorConfig(BaseModel):
    """How a service mirrors its requests. Only ``bootstrap`` and ``model`` are required."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    bootstrap: str
    """Kafka bootstrap servers."""
    model: str = Field(min_length=1)
    """Logical model name; events and metrics carry it."""
    live_version: str = "live"
    """Version of the production model, recorded with each answer."""
    output_kind: OutputKind = "scalar"
    """How the model's answers are compared: scalar, vector, probs, scores, embedding, text,
    json."""
    topic: str = Field(default_factory=lambda: topic_name(env_prefix(), "requests"))
    """The requests topic: ``<SHADOW_TOPIC_PREFIX>.requests`` (``shadow.requests`` when the
    variable is unset), as the pipeline's own processes name it."""
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of requests mirrored, decided from a hash of the request id."""
    pii: PiiPolicy = Field(default_factory=PiiPolicy)
    drop_policy: DropPolicy = "drop"
    """When the buffer is full: drop the new event ("drop"), or drop everything for
    ``pause_ms`` so that Kafka can catch up ("pause")."""
    pause_ms: int = Field(1000, ge=1)
    max_queue_messages: int = Field(100_000, ge=1)
    """Bound on events waiting in memory: publish()'s hand-off buffer holds at most this
    many, and librdkafka's queue as many again."""
    max_queue_kbytes: int = Field(64 * 1024, ge=1)
    """Bound on the memory they take (KiB)."""
    max_event_bytes: int = Field(1_000_000, ge=256)
    """Larger events are dropped (reason "too_large") rather than sent."""
    batch_events: int = Field(100, ge=1, le=100_000)
    """Most events in one Kafka record: the shipper sends the events of one partition as a
    ``batch/1`` record (1: one event per record, as any other producer may write them)."""
    linger_ms: int = Field(5, ge=0)
    compression: Compression = "lz4"
    message_timeout_ms: int = Field(30_000, ge=1)
    """How long an event may wait for a broker before it counts as delivery_failed."""
    close_timeout_s: float = Field(5.0, ge=0)
    """close() waits at most this long for outstanding events."""
    log_interval_s: float = Field(30.0, ge=0)
    """At most one log line per failure reason per interval."""
    kafka: dict[str, Any] = Field(default_factory=dict)
    """Extra librdkafka settings (security.protocol, sasl.*, ssl.*), passed through."""

    def __repr_args__(self) -> Any:
        # Passwords passed through to librdkafka stay out of reprs and logs.
        for name, value in super().__repr_args__():
            if name == "kafka":
                value = {k: "***" if _secret_key(k) else v for k, v in value.items()}
            yield name, value

    def producer_config(self) -> dict[str, Any]:
        return {
            **self.kafka,
            "bootstrap.servers": self.bootstrap,
            "partitioner": PARTITIONER,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "queue.buffering.max.messages": self.max_queue_messages,
            "queue.buffering.max.kbytes": self.max_queue_kbytes,
            "message.max.bytes": max(self.max_event_bytes + 4096, 1_000_000),
            "message.timeout.ms": self.message_timeout_ms,
            "client.id": f"shadowstream-mirror-{self.model}",
        }
