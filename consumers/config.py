"""The house rule for configuration files: TOML read in one place, every mistake one
``ConfigError`` naming the file, the key and the closest valid name.

A configuration shape (``Tolerances``, ``RuleSet``, ``JudgeConfig``) is a frozen dataclass
with ``from_dict(doc, source)``, which checks and refuses; ``FromToml`` gives it
``from_file``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Self

from schemas.exceptions import ConfigError

__all__ = ["FromToml", "read_toml"]


def read_toml(path: Path) -> dict[str, Any]:
    """The document of a TOML file; ConfigError when it cannot be read or is not TOML."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not TOML: {exc}") from None


class FromToml:
    """``from_file`` for a configuration shape that has ``from_dict(doc, source=...)``."""

    @classmethod
    def from_file(cls, path: Path) -> Self:
        return cls.from_dict(read_toml(path), source=str(path))  # type: ignore[attr-defined,no-any-return]
