"""The shadowstream runtime and tools: the ``shadow`` command line (``cli``), the local stack
(``stack``), shared settings, clients and topics, the worker and engine (``runtime``),
offline tools (``offline``) and simulation (``sim``).

The names below are imported when first used (torch is large, and most commands never
need it).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Adapter": "shadow.runtime.models",
    "ModelCard": "shadow.runtime.models",
    "load_candidate": "shadow.runtime.models",
    "InferenceEngine": "shadow.runtime.engine",
    "replay": "shadow.offline.replay",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'shadow' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
