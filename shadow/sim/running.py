"""What both demos use to run a pipeline on this machine and watch it: the servers, fresh
topics and a working folder (``DemoRun``), the join app as a process, the service's timed
publisher, the join's /metrics, waiting on a condition, the alerts in Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from producers import Mirror
from schemas import Alert
from shadow import clients
from shadow.exceptions import ShadowstreamError
from shadow.settings import Settings
from shadow.stack import Endpoints, Stack
from shadow.topics import create_topics, topic_specs

__all__ = ["DemoRun", "TimedPublisher", "quantile", "redis_alerts", "scrape", "wait_for"]


@dataclass
class DemoRun:
    """One demo's servers (started when not running), its fresh topics (3 partitions) and
    working folder, and its join app; ``close`` stops the join, and the servers it started
    with ``stop_stack``."""

    stack: Stack
    endpoints: Endpoints
    started_here: set[str]
    settings: Settings
    """The demo's: its own topic prefix."""
    workdir: Path
    join: subprocess.Popen | None = None

    @classmethod
    def start(cls, settings: Settings, name: str = "") -> DemoRun:
        stack = Stack(settings)
        already = {s.name for s in stack.status() if s.state in ("running", "external")}
        endpoints = stack.up(with_prometheus=True)
        label = f"demo-{name}-" if name else "demo-"
        prefix = f"{label}{time.strftime('%H%M%S')}-{os.getpid() % 1000}"
        s = settings.model_copy(update={"topic_prefix": prefix, "partitions": 3})
        return cls(stack, endpoints, {"kafka", "redis", "prometheus"} - already, s,
                   Path(tempfile.mkdtemp(prefix=f"shadow-{label}")))

    def create_topics(self) -> None:
        create_topics(clients.admin(self.settings, self.endpoints.kafka_bootstrap),
                      topic_specs(self.settings))

    def start_join(self, port: int, window_s: float, rate: float, *args: str) -> None:
        """``shadow join`` on the demo's topics (small windows, a quick idle close), its log
        in the working folder; ``args`` are more options."""
        env = {**os.environ, "SHADOW_KAFKA_BOOTSTRAP": self.endpoints.kafka_bootstrap,
               "SHADOW_REDIS_URL": self.endpoints.redis_url,
               "SHADOW_TOPIC_PREFIX": self.settings.topic_prefix,
               "SHADOW_PARTITIONS": str(self.settings.partitions)}
        cmd = [sys.executable, "-m", "shadow.cli", "join", "--data-dir",
               str(self.workdir / "join"), "--web-port", str(port), "--window-s", str(window_s),
               "--grace-s", "2", "--idle-close-s", "3", "--reference-size",
               str(int(rate * window_s)), *args]
        log = (self.workdir / "join.log").open("wb")
        self.join = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        assert self.join is not None
        wait_for(cond, timeout_s, what, self.join, self.workdir)

    def close(self, stop_stack: bool) -> None:
        if self.join is not None and self.join.poll() is None:
            self.join.send_signal(signal.SIGTERM)
            try:
                self.join.wait(30)
            except subprocess.TimeoutExpired:
                self.join.kill()
        if stop_stack and self.started_here:
            self.stack.down(only=self.started_here)


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
