"""Pure parts of shadow record: positions and ranges, and reading files in time order."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
import zstandard

from shadow.exceptions import RangeError, ShadowstreamError
from shadow.offline.recording import (
    Position,
    RecordedMessage,
    parse_position,
    parse_range,
    read_recording,
    time_order,
)


def test_positions_parse() -> None:
    assert parse_position("beginning") == Position("beginning")
    assert parse_position("123") == Position("offset", 123)
    assert parse_position("@1763798400000") == Position("time", 1763798400000)
    assert parse_position("2025-11-22T08:00:00Z") == Position("time", 1763798400000)
    assert parse_position("2025-11-22T09:00:00+01:00") == Position("time", 1763798400000)
    with pytest.raises(RangeError, match="'yesterday' is not a position: use beginning, end"):
        parse_position("yesterday")


def test_a_time_without_a_zone_is_refused_not_read_as_utc() -> None:
    with pytest.raises(RangeError, match=r"has no time zone: add Z for UTC "
                                         r"\(2025-11-22T08:00:00Z\)"):
        parse_position("2025-11-22T08:00:00")


@pytest.mark.parametrize("start,end,message", [
    ("2025-11-22T09:00:00Z", "2025-11-22T08:00:00Z", "--to .* must be after --from"),
    ("@20", "@10", "--to .* must be after --from"),
    ("500", "100", r"--to \(offset 100\) must be after --from \(offset 500\)"),
    ("end", "beginning", "leaves nothing to read"),
    ("10", "10", "must be after"),
])
def test_one_set_of_range_messages_for_every_command(start: str, end: str,
                                                     message: str) -> None:
    with pytest.raises(RangeError, match=message):
        parse_range(start, end)


def test_ranges_of_mixed_kinds_are_left_to_the_partitions() -> None:
    assert parse_range("beginning", "@5") == (Position("beginning"), Position("time", 5))
    assert parse_range("100", "end") == (Position("offset", 100), Position("end"))


def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(ShadowstreamError, match="not a zstd recording"):
        list(read_recording(bad))


def _write(path: Path, messages: list[RecordedMessage], header: dict | None = None) -> None:
    lines = [orjson.dumps(header)] if header else []
    lines += [orjson.dumps({"topic": m.topic, "partition": m.partition, "offset": m.offset,
                            "timestamp": m.timestamp,
                            "key_b64": None if m.key is None else
                            base64.b64encode(m.key).decode(),
                            "value_b64": base64.b64encode(m.value).decode()})
              for m in messages]
    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))


def _partitions(n: int, per: int) -> list[list[RecordedMessage]]:
    # Timestamps interleave across partitions; within one they may step back a little (two
    # producers), which the merge keeps in offset order.
    return [[RecordedMessage("t", p, o, 1000 + o * 10 + p * 3 - (5 if o % 7 == 3 else 0),
                             f"k{p}-{o}".encode(), f"v{p}-{o}".encode())
             for o in range(per)] for p in range(n)]


def test_a_recording_written_partition_after_partition_is_read_in_time_order(
        tmp_path: Path) -> None:
    parts = _partitions(3, 200)
    old = tmp_path / "old.jsonl.zst"
    _write(old, [m for part in parts for m in part])  # the order of older recordings
    got = list(read_recording(old))
    assert sorted(got, key=lambda m: (m.partition, m.offset)) == \
        [m for part in parts for m in part]  # every message, once
    for p in range(3):  # each partition still in offset order
        assert [m.offset for m in got if m.partition == p] == list(range(200))
    # The head-merge: each message is the oldest next message of any partition.
    heads = {p: 0 for p in range(3)}
    for m in got:
        oldest = min((parts[p][i] for p, i in heads.items() if i < 200), key=time_order)
        assert m == oldest
        heads[m.partition] += 1
    # A recording that says it is in time order is read as written, the same order.
    new = tmp_path / "new.jsonl.zst"
    _write(new, got, {"recording": "shadow.recording/2", "order": "time", "topic": "t"})
    assert list(read_recording(new)) == got


def test_a_broken_line_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"topic": "t"}\n'))
    with pytest.raises(ShadowstreamError, match="line 1 is not a recorded message"):
        list(read_recording(path))


def test_the_messages_of_a_recording_are_counted_for_the_progress_bar(tmp_path: Path) -> None:
    from shadow.offline.recordfile import count_messages

    messages = [m for part in _partitions(2, 150) for m in part]
    with_header = tmp_path / "new.jsonl.zst"
    _write(with_header, messages, {"recording": "shadow.recording/2", "order": "time",
                                   "topic": "t"})
    without = tmp_path / "old.jsonl.zst"
    _write(without, messages)
    assert count_messages(with_header) == count_messages(without) == 300
    assert count_messages(with_header) == len(list(read_recording(with_header)))
    unterminated = tmp_path / "last-line.jsonl.zst"  # a last line without its newline
    unterminated.write_bytes(zstandard.ZstdCompressor().compress(
        b'{"recording": "shadow.recording/2", "order": "time", "topic": "t"}\n{}\n{}'))
    assert count_messages(unterminated) == 2
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(ShadowstreamError, match="not a zstd recording"):
        count_messages(bad)
    with pytest.raises(ShadowstreamError, match="No such file"):
        count_messages(tmp_path / "missing.zst")
