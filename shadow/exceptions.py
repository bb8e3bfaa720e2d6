"""Errors of the shadow CLI, the worker and the local stack. All derive from ShadowstreamError."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.exceptions import ShadowstreamError

__all__ = [
    "EmptyRangeError",
    "KafkaUnreachableError",
    "MissingToolError",
    "ModelLoadError",
    "RangeError",
    "ServerStartError",
    "ShadowstreamError",
    "StackNotRunningError",
    "TopicMismatchError",
    "reason_key",
]


class MissingToolError(ShadowstreamError):
    """A program the stack needs is not installed."""

    def __init__(self, tool: str, install: str) -> None:
        self.tool = tool
        self.install = install
        super().__init__(f"{tool} not found on PATH: install it with `{install}`")


class ServerStartError(ShadowstreamError):
    """A server of the local stack did not become ready; carries the end of its log."""

    def __init__(self, server: str, reason: str, log: Path | None = None, tail: str = "") -> None:
        self.server = server
        self.reason = reason
        self.log = log
        self.tail = tail
        where = f" (log: {log})" if log else ""
        last = f"\n--- last lines of the log ---\n{tail}" if tail else ""
        super().__init__(f"{server} did not start: {reason}{where}{last}")


class StackNotRunningError(ShadowstreamError):
    """No server is configured or running for something a command needs."""


class TopicMismatchError(ShadowstreamError):
    """Existing topics disagree with the partition counts the pipeline needs."""

    def __init__(self, problems: list[str], advice: str | None = None) -> None:
        self.problems = problems
        if advice is None:
            advice = ("The join needs <prefix>.requests and <prefix>.outputs to have the same "
                      "partition count (Kafka cannot reduce partitions): pass --partitions "
                      "with the existing count, or delete the topics, or use another "
                      "SHADOW_TOPIC_PREFIX.")
        super().__init__("; ".join(problems) + (f". {advice}" if advice else ""))


class ModelLoadError(ShadowstreamError):
    """A candidate model (or its weights, card or adapter) cannot be loaded."""

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"cannot load {self.source}: {reason}")


class RangeError(ShadowstreamError):
    """A --from/--to range that cannot be read (a bad position, --to before --from)."""


class EmptyRangeError(RangeError):
    """A time or offset range of a topic holds no message."""


class KafkaUnreachableError(ShadowstreamError):
    """No answer from the Kafka bootstrap servers within the configured time."""

    def __init__(self, bootstrap: str, timeout_s: float, detail: str = "") -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.detail = detail
        why = f" ({detail})" if detail else ""
        super().__init__(f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s{why}: "
                         "is it running? (SHADOW_KAFKA_BOOTSTRAP, SHADOW_KAFKA_TIMEOUT_S; "
                         "`shadow stack up` for a local one)")


def reason_key(text: str) -> str:
    """A reason to count: the message without what differs from one request to the next
    (ids, offsets, values), so that the same failure adds up under one line."""
    return _VARYING.sub("#", text.split("\n", 1)[0])[:160]


_VARYING = re.compile(r"(?<![A-Za-z_\d.])\d+(?:\.\d+)?")  # numbers, not names (mat1, 8x32)
