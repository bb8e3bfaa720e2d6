"""PII policy: per field path, keep, drop, or replace with a keyed BLAKE2 hash.

Paths are dotted from the event's root (``inputs.email``, ``inputs.user.address.zip``,
``attrs.tenant``); ``[*]`` walks every item of a list (``inputs.items[*].name``). A hashed value
is stable for a given key, so joins and categorical drift still work on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.exceptions import ConfigError

PiiAction = Literal["keep", "drop", "hash"]
HASH_PREFIX = "h:"


def keyed_hash(value: Any, key: bytes) -> str:
    """``h:`` + 32 hex digits of keyed BLAKE2b over the value's canonical text."""
    text = value if isinstance(value, str) else repr(value)
    digest = hashlib.blake2b(text.encode(), key=key, digest_size=16).hexdigest()
    return HASH_PREFIX + digest


@dataclass(frozen=True)
class PiiPolicy:
    rules: Mapping[str, PiiAction] = field(default_factory=dict)
    key: bytes | str = field(default=b"", repr=False)  # a secret: a known key unmasks hashes
    """The hashing key: bytes, or a str (its UTF-8 bytes are the key)."""

    def __post_init__(self) -> None:
        if isinstance(self.key, str):
            object.__setattr__(self, "key", self.key.encode())
        elif not isinstance(self.key, bytes | bytearray):
            raise ConfigError("PiiPolicy", f"the key must be bytes or a str, got "
                                           f"{type(self.key).__name__}", key="key")
        else:
            object.__setattr__(self, "key", bytes(self.key))
        for path, action in self.rules.items():
            if action not in ("keep", "drop", "hash"):
                raise ValueError(f"PII rule {path!r}: action must be keep, drop or hash")
            if not path or path.startswith(".") or path.endswith("."):
                raise ValueError(f"PII rule {path!r}: not a dotted field path")
        if any(a == "hash" for a in self.rules.values()) and len(self.key) < 16:
            raise ValueError("PII policy: hashing needs a key of at least 16 bytes")
        if len(self.key) > 64:
            raise ValueError("PII policy: BLAKE2b keys are at most 64 bytes")
        # Parsed once: [["inputs", "items", "*", "name"], ...] with their actions.
        object.__setattr__(self, "_parsed", [
            (_split(path), action) for path, action in self.rules.items() if action != "keep"
        ])

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Apply the rules in place (the document is the mirror's own copy) and return it."""
        for parts, action in self._parsed:  # type: ignore[attr-defined]
            _apply(doc, parts, action, self.key)
        return doc


def _split(path: str) -> list[str]:
    return [p for p in path.replace("[*]", ".*").split(".") if p]


def _apply(node: Any, parts: list[str], action: PiiAction, key: bytes) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(node, list):
            for i, item in enumerate(node):
                if rest:
                    _apply(item, rest, action, key)
                elif action == "hash":
                    node[i] = keyed_hash(item, key)
            if not rest and action == "drop":
                node.clear()
        return
    if not isinstance(node, dict) or head not in node:
        return
    if rest:
        _apply(node[head], rest, action, key)
    elif action == "drop":
        del node[head]
    else:
        node[head] = keyed_hash(node[head], key)
