"""Pure parts of shadow record: positions and reading files."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadow.exceptions import ShadowstreamError
from shadow.recording import Position, parse_position, read_recording


def test_positions_parse() -> None:
    assert parse_position("beginning") == Position("beginning")
    assert parse_position("123") == Position("offset", 123)
    assert parse_position("@1763798400000") == Position("time", 1763798400000)
    assert parse_position("2025-11-22T08:00:00Z") == Position("time", 1763798400000)
    with pytest.raises(ShadowstreamError, match="neither an ISO time"):
        parse_position("yesterday")


def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(ShadowstreamError, match="not a zstd recording"):
        list(read_recording(bad))
