"""The root of every exception the project raises, and the contract errors."""

from __future__ import annotations


class ShadowstreamError(Exception):
    """Root of all shadowstream errors; catch this to catch ours and nothing else."""


class ContractError(ShadowstreamError, ValueError):
    """An event does not satisfy its contract.

    ``path`` is the dotted field path (``live.output.value``; empty for the whole document),
    ``reason`` says what is wrong there, and ``schema`` is the contract it was checked against
    when known.
    """

    def __init__(self, reason: str, *, path: str = "", schema: str | None = None) -> None:
        self.reason = reason
        self.path = path
        self.schema = schema
        where = f" at {path}" if path else ""
        against = f" ({schema})" if schema else ""
        super().__init__(f"{reason}{where}{against}")
