"""``shadow record``: a time or offset range of a topic into a recording file
(``shadow.offline.recordfile``: zstd JSON lines, in ``time_order`` across partitions), and
the ranges (``--from``/``--to``) every command reads.

The file is a sequence of zstd frames. Every ``checkpoint_every`` messages a frame is closed,
the file synced and ``FILE.progress.json`` rewritten with the next offset of each partition and
the file's size; an interrupted run started again with the same arguments cuts the file back
to the last checkpoint and goes on from there, so no message is lost or written twice (the
merge is a function of the partitions' contents, so it goes on in the same order). The
progress file is removed when the recording is complete.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson
import zstandard
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from schemas.topics import ROLES
from shadow import clients
from shadow.exceptions import (
    EmptyRangeError,
    KafkaUnreachableError,
    RangeError,
    ShadowstreamError,
)
from shadow.offline.recordfile import (
    RecordedMessage,
    encode_line,
    header,
    read_recording,
    time_order,
)
from shadow.settings import Settings

__all__ = ["Position", "RecordedMessage", "RecordingStats", "parse_position", "parse_range",
           "parse_time", "read_range", "read_recording", "record", "time_order"]

_MAX_WAITING = 10_000  # messages held per partition while the others catch up


def parse_time(text: str) -> int:
    """Epoch milliseconds from an ISO 8601 time with a zone (``Z``, ``+01:00``).

    A time without a zone is refused rather than read as UTC or as local time: a range an
    hour off would silently record, profile or replay the wrong traffic.
    """
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RangeError(f"{text!r} is not a position: use beginning, end, an offset (1234), "
                         "epoch ms (@1763798400000) or an ISO time with a zone "
                         "(2026-11-22T10:00:00Z)") from None
    if t.tzinfo is None:
        raise RangeError(f"{text!r} has no time zone: add Z for UTC "
                         f"({text.strip()}Z) or an offset (+01:00)")
    return int(t.timestamp() * 1000)


PositionKind = Literal["offset", "time", "beginning", "end"]


@dataclass(frozen=True)
class Position:
    """Where a range starts or ends: an offset (every partition), a time (epoch ms), or the
    beginning or end of each partition."""

    kind: PositionKind
    value: int = 0

    def __str__(self) -> str:
        if self.kind == "offset":
            return f"offset {self.value}"
        if self.kind == "time":
            when = dt.datetime.fromtimestamp(self.value / 1000, dt.UTC)
            return f"{when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"
        return self.kind


def parse_position(text: str) -> Position:
    """``beginning``, ``end``, an offset (``1234``), epoch ms (``@1763798400000``) or an ISO
    time with a zone (``2026-11-22T10:00:00Z``). The one parser of every command's range."""
    t = text.strip()
    if t in ("beginning", "end"):
        return Position(t)  # type: ignore[arg-type]
    if t.isdigit():
        return Position("offset", int(t))
    if t.startswith("@") and t[1:].isdigit():
        return Position("time", int(t[1:]))
    return Position("time", parse_time(t))


def parse_range(start: str, end: str) -> tuple[Position, Position]:
    """``--from`` and ``--to`` of any command, checked against each other where their kinds
    allow it before anything is read (mixed kinds are checked per partition later)."""
    lo, hi = parse_position(start), parse_position(end)
    if lo.kind == "end" or hi.kind == "beginning":
        raise RangeError(f"--from {start} --to {end} is empty: --from 'end' or --to "
                         "'beginning' leaves nothing to read")
    if lo.kind == hi.kind and lo.kind in ("offset", "time") and hi.value <= lo.value:
        raise RangeError(f"--to ({hi}) must be after --from ({lo})")
    return lo, hi


@dataclass
class RecordingStats:
    records: int = 0
    total: int = 0
    resumed_from: int = 0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> [start, end)


def record(settings: Settings, bootstrap: str, topic: str, start: Position, end: Position,
           path: Path, *, partitions: list[int] | None = None, force: bool = False,
           checkpoint_every: int = 5000, progress: Callable[[int, int], None] | None = None,
           stop_after: int | None = None, timeout_s: float | None = None) -> RecordingStats:
    """Record [start, end) of each partition, in time order across partitions; resumes an
    interrupted recording of the same range. ``stop_after`` stops after that many messages
    (as an interruption would). An empty range raises before any file is written."""
    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    progress_path = path.with_name(path.name + ".progress.json")
    consumer = clients.consumer(settings, bootstrap, "shadow-record",
                                **{"enable.partition.eof": True})
    try:
        ranges = _ranges(consumer, bootstrap, topic, start, end, partitions, timeout)
        stats = RecordingStats(partitions=ranges)
        stats.total = sum(hi - lo for lo, hi in ranges.values())
        nexts = {p: lo for p, (lo, _) in ranges.items()}
        if progress_path.exists():
            state = orjson.loads(progress_path.read_bytes())
            if state["topic"] != topic or {int(p): tuple(r) for p, r in
                                           state["ranges"].items()} != ranges:
                raise ShadowstreamError(f"{progress_path} is the progress of another "
                                        f"recording; remove it or record to another file")
            nexts = {int(p): o for p, o in state["next"].items()}
            with path.open("r+b") as f:  # what came after the last checkpoint is cut off
                f.truncate(state["bytes"])
            stats.resumed_from = stats.records = state["records"]
        elif stats.total == 0:
            raise EmptyRangeError(f"no messages in {topic} from {start} to {end}")
        elif path.exists() and not force:
            raise ShadowstreamError(f"{path} exists (use --force to overwrite)")
        else:
            path.write_bytes(b"")
        _copy(consumer, topic, nexts, ranges, path, progress_path, stats, checkpoint_every,
              progress, stop_after)
    finally:
        consumer.close()
    return stats


def _ranges(consumer: Consumer, bootstrap: str, topic: str, start: Position, end: Position,
            partitions: list[int] | None, timeout_s: float) -> dict[int, tuple[int, int]]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise KafkaUnreachableError(bootstrap, timeout_s, exc.args[0].str()) from None
    if meta is None or meta.error is not None or not meta.partitions:
        role = topic.rpartition(".")[2]
        hint = (f" (--topic {role} names the {role} topic of SHADOW_TOPIC_PREFIX)"
                if role in ROLES else "")
        raise ShadowstreamError(f"topic {topic} does not exist{hint}")
    wanted = sorted(meta.partitions) if partitions is None else partitions
    unknown = set(wanted) - set(meta.partitions)
    if unknown:
        raise ShadowstreamError(f"{topic} has no partition {sorted(unknown)}")
    ranges: dict[int, tuple[int, int]] = {}
    backwards = 0
    try:
        for p in wanted:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=timeout_s)
            lo = _resolve(consumer, topic, p, start, low, high, timeout_s)
            hi = _resolve(consumer, topic, p, end, low, high, timeout_s)
            backwards += hi < lo
            ranges[p] = (lo, max(lo, hi))
    except KafkaException as exc:
        raise KafkaUnreachableError(bootstrap, timeout_s, exc.args[0].str()) from None
    if backwards and all(hi == lo for lo, hi in ranges.values()):
        raise RangeError(f"--to ({end}) is before --from ({start}) in {topic}")
    return ranges


def _resolve(consumer: Consumer, topic: str, p: int, pos: Position, low: int, high: int,
             timeout_s: float) -> int:
    if pos.kind == "beginning":
        return low
    if pos.kind == "end":
        return high
    if pos.kind == "offset":
        return min(max(pos.value, low), high)
    (tp,) = consumer.offsets_for_times([TopicPartition(topic, p, pos.value)], timeout=timeout_s)
    return high if tp.offset < 0 else tp.offset  # -1: nothing at or after that time


def _copy(consumer: Consumer, topic: str, nexts: dict[int, int],
          ranges: dict[int, tuple[int, int]], path: Path, progress_path: Path,
          stats: RecordingStats, checkpoint_every: int,
          progress: Callable[[int, int], None] | None, stop_after: int | None) -> None:
    cctx = zstandard.ZstdCompressor(level=3)
    since_checkpoint = 0
    with path.open("ab") as f:
        writer = cctx.stream_writer(f, closefd=False)
        if f.tell() == 0:
            writer.write(header(topic))

        def checkpoint(final: bool = False) -> None:
            writer.flush(zstandard.FLUSH_FRAME)
            f.flush()
            os.fsync(f.fileno())
            if final:
                progress_path.unlink(missing_ok=True)
                return
            state = {"topic": topic, "ranges": ranges, "next": nexts, "bytes": f.tell(),
                     "records": stats.records}
            tmp = progress_path.with_name(progress_path.name + ".tmp")
            tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS))
            tmp.replace(progress_path)

        for m in _fetch(consumer, topic, nexts, ranges):
            writer.write(encode_line(m))
            stats.records += 1
            since_checkpoint += 1
            if since_checkpoint >= checkpoint_every:
                checkpoint()
                since_checkpoint = 0
                if progress:
                    progress(stats.records, stats.total)
            if stop_after is not None and stats.records - stats.resumed_from >= stop_after:
                checkpoint()
                return
        checkpoint(final=True)
        if progress:
            progress(stats.records, stats.total)


def _fetch(consumer: Consumer, topic: str, nexts: dict[int, int],
           ranges: dict[int, tuple[int, int]]) -> Iterator[RecordedMessage]:
    """The messages of [nexts[p], end) of each partition, merged in ``time_order``. A message
    is given only once every partition still to be read has one waiting, so the order is the
    same whatever the broker's fetches; ``nexts`` is kept at the next message to give (what a
    checkpoint records)."""
    fetching = {p for p, o in nexts.items() if o < ranges[p][1]}
    waiting: dict[int, deque[RecordedMessage]] = {p: deque() for p in fetching}
    paused: set[int] = set()
    consumer.assign([TopicPartition(topic, p, nexts[p]) for p in sorted(fetching)])
    while fetching or any(waiting.values()):
        while all(waiting[p] for p in fetching):
            heads = [q[0] for q in waiting.values() if q]
            if not heads:
                break
            m = min(heads, key=time_order)
            waiting[m.partition].popleft()
            nexts[m.partition] = m.offset + 1
            if m.partition in paused and len(waiting[m.partition]) < _MAX_WAITING // 2:
                consumer.resume([TopicPartition(topic, m.partition)])
                paused.discard(m.partition)
            yield m
        if not fetching:
            continue
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                fetching.discard(msg.partition())
                continue
            raise ShadowstreamError(f"reading {topic}: {err.str()}")
        p, offset = msg.partition(), msg.offset()
        queue = waiting.get(p)
        if p not in fetching or queue is None or offset < (queue[-1].offset + 1 if queue
                                                           else nexts[p]):
            continue
        if offset >= ranges[p][1]:
            fetching.discard(p)
            continue
        queue.append(RecordedMessage(topic, p, offset, msg.timestamp()[1], msg.key(),
                                     msg.value() or b""))
        if offset + 1 >= ranges[p][1]:
            fetching.discard(p)
        elif len(queue) >= _MAX_WAITING and p not in paused:
            consumer.pause([TopicPartition(topic, p)])  # memory stays bounded
            paused.add(p)


def read_range(settings: Settings, bootstrap: str, topic: str, start: Position,
               end: Position, *, partitions: list[int] | None = None,
               timeout_s: float | None = None) -> Iterator[RecordedMessage]:
    """The messages of [start, end) of a topic, read straight from Kafka in ``time_order``
    (what ``record`` writes, without the file). An empty range is an error, raised here,
    not when iterated."""
    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    consumer = clients.consumer(settings, bootstrap, "shadow-read-range",
                                **{"enable.partition.eof": True})
    try:
        ranges = _ranges(consumer, bootstrap, topic, start, end, partitions, timeout)
        if not any(hi > lo for lo, hi in ranges.values()):
            raise EmptyRangeError(f"no messages in {topic} from {start} to {end}")
    except BaseException:
        consumer.close()
        raise

    def messages() -> Iterator[RecordedMessage]:
        try:
            yield from _fetch(consumer, topic, {p: lo for p, (lo, _) in ranges.items()},
                              ranges)
        finally:
            consumer.close()

    return messages()


