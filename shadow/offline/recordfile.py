"""The recording file: what ``shadow record`` writes and replay reads. No Kafka here.

A sequence of zstd frames of JSON lines. The first line names the format and the order; each
further line is one message, exact to the byte::

    {"recording": "shadow.recording/2", "order": "time", "topic": ...}
    {"topic": ..., "partition": 0, "offset": 42, "timestamp": 1763798400000,
     "key_b64": "...", "value_b64": "..."}

Messages are in ``time_order`` across partitions (each partition in offset order), which is
the order replay needs: windows close by event time, so a file written partition after
partition would make the later partitions' events arrive after their windows closed. Files
without the header (older recordings) are merged into that order when read.
"""

from __future__ import annotations

import base64
import heapq
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

from shadow.exceptions import ShadowstreamError

__all__ = ["FORMAT", "RecordedMessage", "count_messages", "encode_line", "header",
           "read_recording", "time_order"]

FORMAT = "shadow.recording/2"


@dataclass(frozen=True)
class RecordedMessage:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


def time_order(m: RecordedMessage) -> tuple[int, int, int]:
    """The order in which replay reads the partitions of a topic: the next message of the
    partition whose next message is oldest goes first (as Kafka Streams picks the record with
    the lowest timestamp), ties by partition. Each partition stays in offset order."""
    return (m.timestamp, m.partition, m.offset)


def header(topic: str) -> bytes:
    """The first line of a recording of ``topic``."""
    return orjson.dumps({"recording": FORMAT, "order": "time", "topic": topic}) + b"\n"


def read_recording(path: Path) -> Iterator[RecordedMessage]:
    """The messages of a recording in ``time_order``.

    Recordings made by ``record`` are written in that order (their first line says so) and
    are read straight through. Others (older recordings, written partition after partition)
    are split by partition into temporary files first and merged from there, so that memory
    stays bounded whatever the file's size.
    """
    if _header(path).get("order") == "time":
        yield from _file_order(path)
        return
    with tempfile.TemporaryDirectory(prefix="shadow-replay-") as tmp:
        spills: dict[tuple[str, int], Any] = {}
        try:
            for m in _file_order(path):
                fh = spills.get((m.topic, m.partition))
                if fh is None:
                    fh = spills[(m.topic, m.partition)] = open(  # noqa: SIM115
                        Path(tmp) / f"{len(spills)}.jsonl", "w+b")
                fh.write(encode_line(m))
            for fh in spills.values():
                fh.seek(0)
            yield from heapq.merge(*(_spilled(fh) for fh in spills.values()), key=time_order)
        finally:
            for fh in spills.values():
                fh.close()


def count_messages(path: Path) -> int:
    """How many messages a recording holds, by counting its lines (decompressing, not
    parsing: a fraction of what replaying them costs), for a progress bar with an end."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ShadowstreamError(f"{path}: {exc.strerror}") from None
    lines, last = 0, b"\n"
    with fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        try:
            while chunk := reader.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        except zstandard.ZstdError as exc:
            raise ShadowstreamError(f"{path}: not a zstd recording ({exc})") from None
    lines += last != b"\n"  # a last line without its newline
    return max(0, lines - bool(_header(path)))


def encode_line(m: RecordedMessage) -> bytes:
    return orjson.dumps({
        "topic": m.topic, "partition": m.partition, "offset": m.offset,
        "timestamp": m.timestamp,
        "key_b64": None if m.key is None else base64.b64encode(m.key).decode(),
        "value_b64": base64.b64encode(m.value).decode()}) + b"\n"


def _spilled(fh: Any) -> Iterator[RecordedMessage]:
    for line in fh:
        yield _message(orjson.loads(line))


def _header(path: Path) -> dict[str, Any]:
    """The recording's first line when it is a header (``{"recording": ...}``), else {}."""
    for doc in _documents(path):
        return doc if "recording" in doc else {}
    return {}


def _file_order(path: Path) -> Iterator[RecordedMessage]:
    """The messages of a recording in the order they were written."""
    n = 0
    for n, doc in enumerate(_documents(path), 1):
        if "recording" in doc:
            continue
        try:
            message = _message(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise ShadowstreamError(f"{path}: line {n} is not a recorded message "
                                    f"({exc})") from None
        yield message


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ShadowstreamError(f"{path}: {exc.strerror}") from None
    with fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        lines = io.BufferedReader(reader)
        n = 0
        try:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                doc = orjson.loads(line)
                if not isinstance(doc, dict):
                    raise ShadowstreamError(f"{path}: line {n} is not a recorded message")
                yield doc
        except zstandard.ZstdError as exc:
            raise ShadowstreamError(f"{path}: not a zstd recording ({exc})") from None
        except orjson.JSONDecodeError as exc:
            raise ShadowstreamError(f"{path}: line {n + 1} is not a recorded message "
                                    f"({exc})") from None


def _message(doc: dict[str, Any]) -> RecordedMessage:
    return RecordedMessage(
        doc["topic"], doc["partition"], doc["offset"], doc["timestamp"],
        None if doc["key_b64"] is None else base64.b64decode(doc["key_b64"]),
        base64.b64decode(doc["value_b64"]))
