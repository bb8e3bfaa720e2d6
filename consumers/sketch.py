"""A mergeable quantile sketch with a relative-error guarantee (DDSketch, Masson et al. 2019).

Values fall in logarithmic buckets ``(gamma**(i-1), gamma**i]`` with ``gamma = (1+a)/(1-a)``;
a quantile is answered with its bucket's centre ``2 gamma**i / (gamma+1)``. Bound, tested
against numpy: for non-negative values, ``|sketch.quantile(q) - x_q| <= a * x_q`` where ``x_q``
is the exact lower quantile (``numpy.quantile(x, q, method="lower")``); values at or below
``ZERO`` are kept exactly in a zero bucket. Merging adds bucket counts, so a merged sketch is
bucket for bucket the sketch of the concatenated data (partitions, workers and windows merge
exactly). Pure code: used by the join's windows and by offline replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["QuantileSketch"]

ZERO = 1e-9


class QuantileSketch:
    """Non-negative values (latencies, divergences); ``relative_accuracy`` is ``a`` above."""

    __slots__ = ("_gamma_log", "accuracy", "buckets", "count", "max", "min", "sum", "zeros")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be in (0, 1)")
        self.accuracy = relative_accuracy
        self._gamma_log = math.log((1 + relative_accuracy) / (1 - relative_accuracy))
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"QuantileSketch takes non-negative values, got {value!r}")
        self.count += 1
        self.sum += value
        if value < self.min:  # comparisons, not min()/max(): this runs for every pair
            self.min = value
        if value > self.max:
            self.max = value
        if value <= ZERO:
            self.zeros += 1
        else:
            i = math.ceil(math.log(value) / self._gamma_log)
            self.buckets[i] = self.buckets.get(i, 0) + 1

    def extend(self, values: Iterable[float]) -> QuantileSketch:
        """``add`` each value, in order (the same sum to the bit), in one loop: a window's
        aggregate sketches its values this way."""
        count, total, lo, hi, zeros = self.count, self.sum, self.min, self.max, self.zeros
        buckets, gamma_log, log, ceil = self.buckets, self._gamma_log, math.log, math.ceil
        try:
            for value in values:
                if not value >= 0:  # also refuses NaN
                    raise ValueError(f"QuantileSketch takes non-negative values, got {value!r}")
                count += 1
                total += value
                if value < lo:
                    lo = value
                if value > hi:
                    hi = value
                if value <= ZERO:
                    zeros += 1
                else:
                    i = ceil(log(value) / gamma_log)
                    buckets[i] = buckets.get(i, 0) + 1
        finally:  # what was added before a bad value stays added, as with add
            self.count, self.sum, self.min, self.max, self.zeros = count, total, lo, hi, zeros
        return self

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Add ``other`` into this sketch (same accuracy required)."""
        if other.accuracy != self.accuracy:
            raise ValueError("cannot merge sketches of different accuracy")
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> float | None:
        """The q-quantile within the relative accuracy; None when empty."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))
        if rank < self.zeros:
            return self.min if self.min <= ZERO else 0.0
        seen = self.zeros
        gamma = math.exp(self._gamma_log)
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                # The extremes are known exactly: never answer outside them.
                return min(self.max, max(self.min, 2 * gamma**i / (gamma + 1)))
        return self.max  # pragma: no cover - counts always add up

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.accuracy, "n": self.count, "z": self.zeros, "s": self.sum,
                "lo": self.min if self.count else None, "hi": self.max if self.count else None,
                "b": {str(i): n for i, n in sorted(self.buckets.items())}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> QuantileSketch:
        sketch = cls(doc["a"])
        sketch.count, sketch.zeros, sketch.sum = doc["n"], doc["z"], doc["s"]
        if sketch.count:
            sketch.min, sketch.max = doc["lo"], doc["hi"]
        sketch.buckets = {int(i): n for i, n in doc["b"].items()}
        return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantileSketch) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
