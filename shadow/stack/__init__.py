"""The local dev stack: real Kafka, Redis and Prometheus servers without Docker.

``Stack(settings).up()`` starts what is not configured elsewhere (SHADOW_KAFKA_BOOTSTRAP,
SHADOW_REDIS_URL, SHADOW_PROMETHEUS_URL point at existing servers instead), records the processes
in ``<state_dir>/stack/stack.json`` and is idempotent; ``down()`` stops them all. The test
fixtures use this same code with a temporary state dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from shadow.exceptions import StackNotRunningError
from shadow.settings import Settings, redact_url
from shadow.stack import kafka, procs, prometheus, redis, secure

__all__ = ["Endpoints", "ServerStatus", "Stack", "local_prometheus", "prometheus_root",
           "resolve_endpoints", "resolve_kafka", "resolve_redis"]

ServerName = Literal["kafka", "redis", "prometheus"]
SERVERS: tuple[ServerName, ...] = ("kafka", "redis", "prometheus")


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    redis_url: str = field(repr=False)  # may carry a password: as_dict() and repr hide it
    prometheus_url: str | None
    kafka_sasl_ssl: str | None = None
    """The SASL_SSL listener of a secured local stack (SHADOW_STACK_SECURE)."""
    credentials_dir: str | None = None
    """Where a secured local stack keeps its CA, users and password files (mode 0600)."""

    def as_dict(self) -> dict[str, str | None]:
        return {**asdict(self), "redis_url": redact_url(self.redis_url)}


@dataclass(frozen=True)
class ServerStatus:
    """What ``shadow stack status`` shows: its URL has no password (see Endpoints for one)."""

    name: str
    state: Literal["running", "stopped", "dead", "external"]
    url: str | None = None
    pid: int | None = None
    log: str | None = None


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "stack"

    # -- public face -------------------------------------------------------------------------

    def up(self, *, with_prometheus: bool = False) -> Endpoints:
        """Start what is neither running nor external; returns where everything is."""
        with self._locked():
            state = self._load()
            wanted: list[ServerName] = ["kafka", "redis"] + (
                ["prometheus"] if with_prometheus else []
            )
            for name in wanted:
                if self._external(name) or self._running(state.get(name)):
                    continue
                state[name] = self._start(name)
                self._save(state)
            return self._endpoints(state)

    def status(self) -> list[ServerStatus]:
        state = self._load()
        out: list[ServerStatus] = []
        for name in SERVERS:
            ext = self._external(name)
            rec = state.get(name)
            if ext:
                out.append(ServerStatus(name, "external", redact_url(ext)))
            elif rec is None:
                out.append(ServerStatus(name, "stopped"))
            else:
                st = "running" if self._running(rec) else "dead"
                out.append(ServerStatus(name, st, redact_url(rec["url"]), rec["pid"],
                                        rec["log"]))
        return out

    def down(self, only: Iterable[str] | None = None) -> list[str]:
        """Stop every server this stack started (or ``only`` those) and delete their data
        (with Kafka's, the join stores in ``<state dir>/join``); returns their names."""
        wanted = set(SERVERS if only is None else only)
        with self._locked():
            state = self._load()
            stopped = []
            # Kafka last-in-first-out is not needed; Prometheus first so it logs no scrape errors.
            for name in reversed(SERVERS):
                rec = state.pop(name, None) if name in wanted else None
                if rec is not None:
                    procs.stop(rec["pid"], rec.get("started"))
                    stopped.append(name)
            self._save(state)
            for name in stopped:
                shutil.rmtree(self.root / name, ignore_errors=True)
            if "kafka" in stopped:
                # The joins' table stores cache changelogs this broker kept: gone with it.
                shutil.rmtree(self.settings.state_dir / "join", ignore_errors=True)
            return stopped

    def endpoints(self) -> Endpoints:
        return self._endpoints(self._load())

    # -- internals ---------------------------------------------------------------------------

    def _external(self, name: ServerName) -> str | None:
        s = self.settings
        return {"kafka": s.kafka_bootstrap, "redis": s.redis_url,
                "prometheus": s.prometheus_url}[name]

    def _running(self, rec: dict | None) -> bool:
        return rec is not None and procs.alive(rec["pid"], rec.get("started"))

    def _start(self, name: ServerName) -> dict:
        rec = self._spawn(name)
        rec["started"] = procs.start_time(rec["pid"])
        return rec

    def _spawn(self, name: ServerName) -> dict:
        root = self.root / name
        creds = secure.ensure(self.root / "secure") if self.settings.stack_secure else None
        if name == "kafka":
            listener = (None if creds is None
                        else kafka.SecureListener(procs.free_port(), creds))
            pid, port, cport = kafka.start(root, self.settings.cache_dir,
                                           self.settings.kafka_version, secure=listener)
            rec = {"pid": pid, "port": port, "controller_port": cport,
                   "url": f"127.0.0.1:{port}", "log": str(kafka.KafkaLayout(root).log)}
            if listener is not None:
                rec["sasl_ssl"] = f"127.0.0.1:{listener.port}"
            return rec
        if name == "redis":
            acl = None if creds is None else (creds.redis_user, creds.redis_password)
            pid, port = redis.start(root, acl_user=acl)
            auth = "" if acl is None else f"{acl[0]}:{acl[1]}@"
            return {"pid": pid, "port": port, "url": f"redis://{auth}127.0.0.1:{port}/0",
                    "log": str(root / "redis.log")}
        pid, port = prometheus.start(root)
        prometheus.register_target(root, "prometheus", f"127.0.0.1:{port}")
        return {"pid": pid, "port": port, "url": f"http://127.0.0.1:{port}",
                "log": str(root / "prometheus.log")}

    def _endpoints(self, state: dict) -> Endpoints:
        def url(name: ServerName) -> str | None:
            ext = self._external(name)
            if ext:
                return ext
            rec = state.get(name)
            return rec["url"] if self._running(rec) else None

        kafka_url, redis_url = url("kafka"), url("redis")
        if kafka_url is None:
            raise StackNotRunningError(
                "no Kafka: run `shadow stack up`, or set SHADOW_KAFKA_BOOTSTRAP")
        if redis_url is None:
            raise StackNotRunningError("no Redis: run `shadow stack up`, or set SHADOW_REDIS_URL")
        kafka_rec = state.get("kafka") or {}
        secured = kafka_rec.get("sasl_ssl") if not self._external("kafka") else None
        return Endpoints(kafka_url, redis_url, url("prometheus"), secured,
                         str(self.root / "secure") if secured else None)

    @property
    def _state_file(self) -> Path:
        return self.root / "stack.json"

    def _load(self) -> dict:
        try:
            return orjson.loads(self._state_file.read_bytes())
        except FileNotFoundError:
            return {}

    def _save(self, state: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.touch(mode=0o600)  # a secured stack's Redis URL carries its password
        tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        tmp.rename(self._state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Where Kafka, Redis and Prometheus are: configured ones first, else the local stack."""
    return Stack(settings).endpoints()


def resolve_kafka(settings: Settings) -> str:
    """Where Kafka is, for commands that need nothing else (no Redis required)."""
    return _resolve_one(settings, "kafka", settings.kafka_bootstrap, "SHADOW_KAFKA_BOOTSTRAP")


def resolve_redis(settings: Settings) -> str:
    """Where Redis is, for commands that need nothing else (no Kafka required)."""
    return _resolve_one(settings, "redis", settings.redis_url, "SHADOW_REDIS_URL")


def _resolve_one(settings: Settings, name: ServerName, configured: str | None,
                 env: str) -> str:
    if configured:
        return configured
    stack = Stack(settings)
    rec = stack._load().get(name)
    if not stack._running(rec):
        raise StackNotRunningError(f"no {name.capitalize()}: run `shadow stack up`, or set "
                                   f"{env}")
    return rec["url"]  # type: ignore[index]



def prometheus_root(settings: Settings) -> Path:
    """Where the local Prometheus reads its target files from."""
    return Stack(settings).root / "prometheus"


def local_prometheus(settings: Settings) -> Path | None:
    """The target directory of the stack's own Prometheus when it runs (processes register
    their /metrics there), else None (an external Prometheus finds targets its own way)."""
    if settings.prometheus_url:
        return None
    stack = Stack(settings)
    return prometheus_root(settings) if stack._running(stack._load().get("prometheus")) \
        else None
