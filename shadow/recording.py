"""``shadow record``: a time or offset range of a topic into a zstd JSON-lines file.

Each line is one message, exact to the byte::

    {"topic": ..., "partition": 0, "offset": 42, "timestamp": 1763798400000,
     "key_b64": "...", "value_b64": "..."}

The file is a sequence of zstd frames. Every ``checkpoint_every`` messages a frame is closed,
the file synced and ``FILE.progress.json`` rewritten with the next offset of each partition and
the file's size; an interrupted run started again with the same arguments cuts the file back
to the last checkpoint and goes on from there, so no message is lost or written twice. The
progress file is removed when the recording is complete.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zstandard
from confluent_kafka import Consumer, KafkaError, TopicPartition

from shadow import clients
from shadow.exceptions import EmptyRangeError, ShadowstreamError
from shadow.settings import Settings

__all__ = ["Position", "RecordedMessage", "RecordingStats", "parse_position", "parse_time",
           "read_range", "read_recording", "record"]


def parse_time(text: str) -> int:
    """Epoch milliseconds from an ISO 8601 time (UTC when no zone is given) or epoch ms."""
    if text.isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ShadowstreamError(f"{text!r} is neither an ISO time nor epoch ms") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


@dataclass(frozen=True)
class Position:
    """Where a range starts or ends: an offset (every partition), a time (epoch ms), or the
    beginning or end of each partition."""

    kind: str  # "offset" | "time" | "beginning" | "end"
    value: int = 0


def parse_position(text: str) -> Position:
    """``beginning``, ``end``, an offset (``1234``), epoch ms (``@1763798400000``) or an ISO
    time (``2026-11-22T10:00:00Z``)."""
    t = text.strip()
    if t in ("beginning", "end"):
        return Position(t)
    if t.isdigit():
        return Position("offset", int(t))
    if t.startswith("@") and t[1:].isdigit():
        return Position("time", int(t[1:]))
    return Position("time", parse_time(t))


@dataclass(frozen=True)
class RecordedMessage:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


@dataclass
class RecordingStats:
    records: int = 0
    total: int = 0
    resumed_from: int = 0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> [start, end)


def record(settings: Settings, bootstrap: str, topic: str, start: Position, end: Position,
           path: Path, *, partitions: list[int] | None = None, force: bool = False,
           checkpoint_every: int = 5000, progress: Callable[[int, int], None] | None = None,
           stop_after: int | None = None, timeout_s: float = 30.0) -> RecordingStats:
    """Record [start, end) of each partition; resumes an interrupted recording of the same
    range. ``stop_after`` stops after that many messages (as an interruption would)."""
    progress_path = path.with_name(path.name + ".progress.json")
    consumer = clients.consumer(settings, bootstrap, "shadow-record",
                                **{"enable.partition.eof": True})
    try:
        ranges = _ranges(consumer, topic, start, end, partitions, timeout_s)
        stats = RecordingStats(partitions=ranges)
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
        elif path.exists() and not force:
            raise ShadowstreamError(f"{path} exists (use --force to overwrite)")
        else:
            path.write_bytes(b"")
        stats.total = sum(hi - lo for lo, hi in ranges.values())
        if stats.total == 0:
            progress_path.unlink(missing_ok=True)
            raise EmptyRangeError(f"no messages in {topic} in that range")
        _copy(consumer, topic, nexts, ranges, path, progress_path, stats, checkpoint_every,
              progress, stop_after)
    finally:
        consumer.close()
    return stats


def _ranges(consumer: Consumer, topic: str, start: Position, end: Position,
            partitions: list[int] | None, timeout_s: float) -> dict[int, tuple[int, int]]:
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ShadowstreamError(f"topic {topic} does not exist")
    wanted = sorted(meta.partitions) if partitions is None else partitions
    unknown = set(wanted) - set(meta.partitions)
    if unknown:
        raise ShadowstreamError(f"{topic} has no partition {sorted(unknown)}")
    ranges = {}
    for p in wanted:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        lo = _resolve(consumer, topic, p, start, low, high, timeout_s)
        hi = _resolve(consumer, topic, p, end, low, high, timeout_s)
        ranges[p] = (lo, max(lo, hi))
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
            writer.write(orjson.dumps({
                "topic": topic, "partition": m.partition, "offset": m.offset,
                "timestamp": m.timestamp,
                "key_b64": None if m.key is None else base64.b64encode(m.key).decode(),
                "value_b64": base64.b64encode(m.value).decode()}) + b"\n")
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
    """The messages of [nexts[p], end) of each partition, in the order they come; ``nexts``
    is kept up to date (what a checkpoint records)."""
    open_parts = {p for p, o in nexts.items() if o < ranges[p][1]}
    consumer.assign([TopicPartition(topic, p, nexts[p]) for p in sorted(open_parts)])
    while open_parts:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                open_parts.discard(msg.partition())
                continue
            raise ShadowstreamError(f"reading {topic}: {err.str()}")
        p, offset = msg.partition(), msg.offset()
        if p not in open_parts or offset < nexts[p]:
            continue
        if offset >= ranges[p][1]:
            open_parts.discard(p)
            continue
        nexts[p] = offset + 1
        if nexts[p] >= ranges[p][1]:
            open_parts.discard(p)
        yield RecordedMessage(topic, p, offset, msg.timestamp()[1], msg.key(),
                              msg.value() or b"")


def read_range(settings: Settings, bootstrap: str, topic: str, start: Position,
               end: Position, *, partitions: list[int] | None = None,
               timeout_s: float = 30.0) -> Iterator[RecordedMessage]:
    """The messages of [start, end) of a topic, read straight from Kafka (what ``record``
    writes, without the file). An empty range is an error, raised here, not when iterated."""
    consumer = clients.consumer(settings, bootstrap, "shadow-read-range",
                                **{"enable.partition.eof": True})
    try:
        ranges = _ranges(consumer, topic, start, end, partitions, timeout_s)
        if not any(hi > lo for lo, hi in ranges.values()):
            raise EmptyRangeError(f"no messages in {topic} in that range")
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


def read_recording(path: Path) -> Iterator[RecordedMessage]:
    """The messages of a recording, in the order they were written."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ShadowstreamError(f"{path}: {exc.strerror}") from None
    with fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        lines = io.TextIOWrapper(io.BufferedReader(reader), "utf-8")
        try:
            yield from _messages(path, lines)
        except (zstandard.ZstdError, UnicodeDecodeError) as exc:
            raise ShadowstreamError(f"{path}: not a zstd recording ({exc})") from None


def _messages(path: Path, lines: io.TextIOWrapper) -> Iterator[RecordedMessage]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc: dict[str, Any] = orjson.loads(line)
            message = RecordedMessage(
                doc["topic"], doc["partition"], doc["offset"], doc["timestamp"],
                None if doc["key_b64"] is None else base64.b64decode(doc["key_b64"]),
                base64.b64decode(doc["value_b64"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ShadowstreamError(f"{path}: line {n} is not a recorded message "
                                    f"({exc})") from None
        yield message
