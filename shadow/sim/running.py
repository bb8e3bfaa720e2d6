"""What both demos use to run a pipeline on this machine and watch it: the service's timed
publisher, the join's /metrics, waiting on a condition, the alerts in Redis."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from producers import Mirror
from schemas import Alert
from shadow import clients
from shadow.exceptions import ShadowstreamError

__all__ = ["TimedPublisher", "quantile", "redis_alerts", "scrape", "wait_for"]


class TimedPublisher:
    """The mirror as the service calls it, timing each publish() (production's cost)."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.samples: list[float] = []
        self.dropped = 0

    def publish(self, *args: Any, **kw: Any) -> bool:
        t0 = time.perf_counter_ns()
        ok = self.mirror.publish(*args, **kw)
        self.samples.append((time.perf_counter_ns() - t0) / 1000)
        return ok


def scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str,
              join_proc: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if join_proc.poll() is not None:
            tail = (workdir / "join.log").read_text(errors="replace")[-1500:]
            raise ShadowstreamError(f"the join app exited ({join_proc.returncode}): {tail}")
        if time.monotonic() > deadline:
            raise ShadowstreamError(f"{what} within {timeout_s:.0f} s (logs: {workdir})")
        time.sleep(0.5)


def redis_alerts(redis_url: str, prefix: str) -> list[Alert]:
    try:
        rows = clients.redis_client(redis_url, timeout_s=1.0).xrange(f"{prefix}:alerts")
    except redis.RedisError:  # the live view must not die with Redis
        return []
    return [Alert.model_validate_json(f[b"alert"]) for _, f in rows]


def quantile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
