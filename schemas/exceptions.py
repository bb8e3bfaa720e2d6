"""The root of every exception the project raises, and the contract errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Literal


class ShadowstreamError(Exception):
    """Root of all shadowstream errors; catch this to catch ours and nothing else."""


class ContractError(ShadowstreamError, ValueError):
    """An event does not satisfy its contract.

    ``path`` is the dotted field path (``live.output.value``; empty for the whole document),
    ``reason`` says what is wrong there, and ``schema`` is the contract it was checked against
    when known. ``stage`` is "decode" when the bytes are not JSON at all, "validate" when
    the document breaks its contract (a dead letter's stage).
    """

    def __init__(self, reason: str, *, path: str = "", schema: str | None = None,
                 stage: Literal["decode", "validate"] = "validate") -> None:
        self.reason = reason
        self.stage = stage
        self.path = path
        self.schema = schema
        where = f" at {path}" if path else ""
        against = f" ({schema})" if schema else ""
        super().__init__(f"{reason}{where}{against}")


class ConfigError(ShadowstreamError, ValueError):
    """A configuration mistake: a file, environment variable or option that cannot be used.

    ``source`` is where it was read (a file path, ``SHADOW_PARTITIONS``), ``key`` the setting
    (empty for the whole source), ``reason`` what is wrong; ``hint`` the closest valid name
    when the key is unknown.
    """

    def __init__(self, source: str, reason: str, *, key: str = "", hint: str = "") -> None:
        self.source, self.key, self.reason, self.hint = source, key, reason, hint
        where = f"{source}: {key}: " if key else f"{source}: "
        tip = f" (did you mean {hint!r}?)" if hint else ""
        super().__init__(f"{where}{reason}{tip}")


def closest(name: str, choices: Iterable[str]) -> str:
    """The valid name a mistyped one most likely meant, or '' when none is close."""
    found = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else ""


def refuse_unknown(source: str, given: Iterable[str], known: Iterable[str], *,
                   where: str = "") -> None:
    """ConfigError for the first key of ``given`` that is not in ``known``, with the closest
    valid name; ``where`` names the table it is in (``[[rules]] 'slow'``)."""
    valid = set(known)
    for key in given:
        if key not in valid:
            place = f" in {where}" if where else ""
            hint = closest(key, valid)
            listed = "" if hint else f" (known: {', '.join(sorted(valid))})"
            raise ConfigError(source, f"unknown key {key!r}{place}{listed}", hint=hint)
