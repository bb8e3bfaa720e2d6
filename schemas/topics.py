"""Topic roles and names: one place for what every producer and consumer calls a topic.

A deployment's topics are ``<prefix>.<role>``; the prefix is ``shadow`` unless
``SHADOW_TOPIC_PREFIX`` says otherwise (services embedding the mirror read the same variable
as the pipeline's own processes).
"""

from __future__ import annotations

import os
from typing import Literal

__all__ = ["DEFAULT_PREFIX", "JOIN_TABLE", "ROLES", "TopicRole", "env_prefix", "join_app_id",
           "join_changelog", "topic_name"]

TopicRole = Literal["requests", "outputs", "pairs", "windows", "deadletter"]
ROLES: tuple[TopicRole, ...] = ("requests", "outputs", "pairs", "windows", "deadletter")
DEFAULT_PREFIX = "shadow"
PREFIX_ENV = "SHADOW_TOPIC_PREFIX"


def env_prefix() -> str:
    """The topic prefix from the environment (``SHADOW_TOPIC_PREFIX``), else ``shadow``."""
    return os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX


def topic_name(prefix: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown topic role {role!r}; known: {', '.join(ROLES)}")
    return f"{prefix}.{role}"


JOIN_TABLE = "entries"
"""The join's table: with the app id it names the changelog, so it never changes."""


def join_app_id(prefix: str) -> str:
    """The join's Faust app id: its consumer group and the prefix of its own topics."""
    return f"{prefix}-join"


def join_changelog(prefix: str) -> str:
    """The changelog topic Faust keeps the join's table in."""
    return f"{join_app_id(prefix)}-{JOIN_TABLE}-changelog"
