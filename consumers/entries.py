"""The join's storage format and what its core hands back. No Kafka here.

The join keeps one *entry* per in-flight request; its durable copy lives in Faust's table,
whose changelog topic outlives any one release. So the entry's shape is a storage format:
short keys (there is one entry per in-flight request, and each is written to the changelog),
typed here, and versioned by ``ENTRY_VERSION``, which each input partition records in the
table (``~format:<partition>``). A join that finds a newer version than it reads stops with
one line instead of computing wrong windows from keys it does not know. Renaming a key is a
new version.

An entry, keyed by model and request id (``entry_key``)::

    {"m": model, "ts": event time, "seg": segment,
     "live": {"lat", "err", "o": output, "f": features,
              "src": [topic, partition, offset(, index in a batch)]},
     "p": input partition (requests and outputs are co-partitioned by request id),
     "c": {candidate: {"lat", "err", "f", "src", "o" (until compared),
                       "r": {"k", "s", "d", "m"} (comparison) | "dl": reason}},
     "dl": reason}   # the request itself could not be decoded

Table keys besides the entries (``~`` sorts them apart): per input partition, the windows
closed and the offsets at close (``~meta:``), the alert machines' states (``~alerts:``), alerts
not yet in their sink (``~outbox:``), the entries one record changed in one window
(``~e:<partition>:<window start>:<seq>``); per model, the drift reference (``~profile:``).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from schemas.exceptions import ShadowstreamError

__all__ = ["ENTRY_VERSION", "CandidateAnswer", "Comparison", "Entry", "FormatError",
           "LiveAnswer", "Outgoing", "Role", "check_format", "drop_at", "entry_key", "put_at",
           "request_of"]

ENTRY_VERSION = 1
"""The version of the entry format above (and of the table keys) this code writes and reads."""

META_KEY = "~meta:"  # + the input partition it is written from
ALERTS_KEY = "~alerts:"  # + the input partition: the alert machines' states
OUTBOX_KEY = "~outbox:"  # + the input partition: alerts not yet in their sink
PROFILE_KEY = "~profile:"
DEAD_KEY = "~dl:"
DELTA_KEY = "~e:"  # + <partition>:<window start>:<seq>: entries one record changed
FORMAT_KEY = "~format:"  # + the input partition: {"entry_version": ENTRY_VERSION}


class Comparison(TypedDict):
    k: str  # the output kind compared
    s: float  # the divergence score
    d: bool  # disagree
    m: dict[str, float]  # the comparator's metrics


class LiveAnswer(TypedDict):
    lat: float
    err: str | None
    o: Any  # the live output document
    f: dict[str, float | str]  # the request's drift features
    src: list[Any]  # topic, partition, offset(, index in a batch)


class CandidateAnswer(TypedDict):
    lat: float
    err: str | None
    f: dict[str, float | str]
    src: list[Any]
    o: NotRequired[Any]  # the output, until it is compared
    r: NotRequired[Comparison | None]  # None: an error on either side, paired uncompared
    dl: NotRequired[str]  # the comparison failed: dead-lettered with this reason


class Entry(TypedDict):
    m: str
    ts: int
    p: int
    c: dict[str, CandidateAnswer]
    live: NotRequired[LiveAnswer]
    seg: NotRequired[str]
    dl: NotRequired[str]


class FormatError(ShadowstreamError):
    """The table holds entries of a format this code does not read."""

    def __init__(self, partition: int, found: int) -> None:
        self.partition, self.found = partition, found
        super().__init__(
            f"the join's table (input partition {partition}) was written in entry format "
            f"{found}; this version reads up to {ENTRY_VERSION}: run the newer shadowstream, "
            "or start from a fresh store and topic prefix")


def check_format(key: str, value: Any) -> None:
    """FormatError when ``~format:<partition>`` names a version newer than ENTRY_VERSION."""
    found = value.get("entry_version", 1) if isinstance(value, dict) else 1
    if found > ENTRY_VERSION:
        raise FormatError(int(key.removeprefix(FORMAT_KEY)), found)


class Role(StrEnum):
    """Where an ``Outgoing`` goes: a topic of the prefix, or the alert sinks."""

    PAIRS = "pairs"
    WINDOWS = "windows"
    DEADLETTER = "deadletter"
    ALERTS = "alerts"  # to the alert sinks (Redis), not to Kafka
    EXEMPLARS = "exemplars"  # likewise
    PARTIALS = "partials"  # a window's part, to the merge stage's topic
    PROGRESS = "progress"  # a progress marker, to every partition of that topic


@dataclass(frozen=True)
class Outgoing:
    """One record the core asks its caller to send: where (``role``), key and value."""

    role: Role
    key: bytes | None
    value: bytes
    window: int | None = None
    """For a window summary: the window's start, to report its delivery with ``delivered``."""
    record: Any = None
    """What ``value`` encodes (the record or document), for callers in this process that
    would otherwise decode it again (the alert sinks, replay)."""
    broadcast: bool = False
    """Send a copy to every partition of the topic (the progress markers of partials)."""


def entry_key(model: str, request_id: str) -> str:
    """An entry's table key: request ids are unique within a model, not across models (two
    services may both number their requests)."""
    return f"{model}\x1f{request_id}"


def request_of(key: str) -> str:
    return key.partition("\x1f")[2] or key


def put_at(table: MutableMapping[str, Any], partition: int, key: str, value: Any) -> None:
    """Write ``key`` from ``partition`` when the table places its writes (``at``, the Faust
    app's: its changelog partition), else plainly."""
    at = getattr(table, "at", None)
    if at is None:
        table[key] = value
    else:
        with at(partition):
            table[key] = value


def drop_at(table: MutableMapping[str, Any], partition: int, key: str) -> None:
    """Delete ``key`` (if there) from ``partition``, as ``put_at`` writes it."""
    at = getattr(table, "at", None)
    if at is None:
        table.pop(key, None)
    else:
        with at(partition):
            table.pop(key, None)
