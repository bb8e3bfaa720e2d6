"""Shared helpers for the benchmarks: timing by repeated batches, medians, targets."""

from __future__ import annotations

import os
import platform
import statistics
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

TARGETS = tomllib.loads((Path(__file__).parent / "targets.toml").read_text())


def per_call_us(fn: Callable[[], object], calls: int = 2_000, batches: int = 25) -> list[float]:
    """Microseconds per call, one figure per batch (so noise shows as spread, not as bias)."""
    for _ in range(calls // 10):
        fn()  # warm up
    out = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter_ns() - t0) / calls / 1000)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    return (f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
            f"Python {platform.python_version()}")


def verdict(name: str, value: float, target: float, *, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    sign = "<=" if lower_is_better else ">="
    return f"{name}: {value:.2f} (target {sign} {target}) {'MET' if ok else 'MISSED'}"
