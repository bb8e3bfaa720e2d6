"""Topic roles and names: one place for what every producer and consumer calls a topic.

A deployment's topics are ``<prefix>.<role>``; the prefix is ``shadow`` unless
``SHADOW_TOPIC_PREFIX`` says otherwise (services embedding the mirror read the same variable
as the pipeline's own processes).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np

__all__ = ["DEFAULT_PREFIX", "JOIN_TABLE", "MERGE_TABLE", "PARTITIONER", "ROLES", "TopicRole",
           "env_prefix", "join_app_id", "join_changelog", "join_partials", "partition_of",
           "partitions_of", "topic_name"]

PARTITIONER = "murmur2_random"
"""librdkafka's name for the Java client's partitioner, which every producer of the pipeline
uses: whatever its language or library, a request id lands on the same partition."""

TopicRole = Literal["requests", "outputs", "pairs", "windows", "deadletter"]
ROLES: tuple[TopicRole, ...] = ("requests", "outputs", "pairs", "windows", "deadletter")
DEFAULT_PREFIX = "shadow"
PREFIX_ENV = "SHADOW_TOPIC_PREFIX"


def env_prefix() -> str:
    """The topic prefix from the environment (``SHADOW_TOPIC_PREFIX``), else ``shadow``."""
    return os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX


def topic_name(prefix: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown topic role {role!r}; known: {', '.join(ROLES)}")
    return f"{prefix}.{role}"


JOIN_TABLE = "entries"
"""The join's table: with the app id it names the changelog, so it never changes."""


def join_app_id(prefix: str) -> str:
    """The join's Faust app id: its consumer group and the prefix of its own topics."""
    return f"{prefix}-join"


def join_changelog(prefix: str) -> str:
    """The changelog topic Faust keeps the join's table in."""
    return f"{join_app_id(prefix)}-{JOIN_TABLE}-changelog"


MERGE_TABLE = "merge"
"""The merge stage's table (``shadow join --scale-out``)."""


def join_partials(prefix: str) -> str:
    """The topic join workers send closed windows' parts and progress to, for the merge
    stage (``shadow join --scale-out``); as many partitions as the inputs."""
    return f"{join_app_id(prefix)}-partials"


def partition_of(key: bytes, partitions: int) -> int:
    """The partition murmur2 gives a key (Java's ``Utils.toPositive(murmur2(key)) % n``):
    where a batch of events must go for the join to find each event's request there."""
    m, r = 0x5BD1E995, 24
    length = len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = (int.from_bytes(key[i:i + 4], "little") * m) & 0xFFFFFFFF
        k ^= k >> r
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = key[length - length % 4:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


_M = np.uint64(0x5BD1E995)
_MASK = np.uint64(0xFFFFFFFF)


def partitions_of(keys: list[bytes], partitions: int) -> list[int]:
    """``partition_of`` for many keys at once, column-wise with numpy (a fraction of a
    microsecond a key, where the loop above takes several)."""
    n = len(keys)
    if n == 0:
        return []
    lens = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    width = int(lens.max()) // 4 * 4 + 4
    buf = np.zeros((n, width), dtype=np.uint8)
    total = int(lens.sum())
    if total:
        starts = np.cumsum(lens) - lens
        rows = np.repeat(np.arange(n), lens)
        cols = np.arange(total) - np.repeat(starts, lens)
        buf[rows, cols] = np.frombuffer(b"".join(keys), dtype=np.uint8)
    words = buf.view("<u4").astype(np.uint64)
    h = (np.uint64(0x9747B28C) ^ lens.astype(np.uint64)) & _MASK
    whole = lens // 4
    for j in range(width // 4 - 1 if width > 4 else 0):
        k = (words[:, j] * _M) & _MASK
        k ^= k >> np.uint64(24)
        k = (k * _M) & _MASK
        h = np.where(whole > j, ((h * _M) & _MASK) ^ k, h)
    rest, at = lens % 4, whole * 4
    row = np.arange(n)
    t = [buf[row, np.minimum(at + i, width - 1)].astype(np.uint64) for i in range(3)]
    h = np.where(rest >= 3, h ^ (t[2] << np.uint64(16)), h)
    h = np.where(rest >= 2, h ^ (t[1] << np.uint64(8)), h)
    h = np.where(rest >= 1, ((h ^ t[0]) * _M) & _MASK, h)
    h ^= h >> np.uint64(13)
    h = (h * _M) & _MASK
    h ^= h >> np.uint64(15)
    return ((h & np.uint64(0x7FFFFFFF)) % np.uint64(partitions)).astype(np.int64).tolist()
