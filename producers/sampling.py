"""Deterministic sampling: a request is in or out the same way in every process and language.

The decision is ``BLAKE2b-64(request_id) < rate * 2**64``: the first 8 bytes of an unkeyed
BLAKE2b digest of the id's UTF-8 bytes, read big-endian.
"""

from __future__ import annotations

import hashlib

_SPACE = 2**64


def sample_threshold(rate: float) -> int:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"sample rate must be in [0, 1], got {rate}")
    return _SPACE if rate >= 1.0 else int(rate * _SPACE)


def sampled(request_id: str, threshold: int) -> bool:
    """True when the request is in the sample for ``threshold = sample_threshold(rate)``."""
    if threshold >= _SPACE:
        return True
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return h < threshold
