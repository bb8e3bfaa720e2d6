"""``shadow alerts``: what ops see of the alerts the join keeps in Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import redis
from rich.console import Group
from rich.table import Table

from shadow.exceptions import ShadowstreamError

__all__ = ["acknowledge", "current_alerts", "latest_windows", "render", "watch"]

_ORDER = {"firing": 0, "pending": 1, "resolved": 2, "ok": 3}


def _scan(client: redis.Redis, pattern: str) -> Iterator[bytes]:
    try:
        yield from client.scan_iter(match=pattern, count=500)
    except redis.RedisError as exc:
        raise ShadowstreamError(f"Redis: {exc}") from None


def current_alerts(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The state of every rule that ever changed, firing first."""
    out = []
    for key in _scan(client, f"{prefix}:alert:*"):
        fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        if "alert" not in fields:
            continue
        doc = orjson.loads(fields["alert"])
        doc["acked_at"] = int(fields["acked_at"]) if "acked_at" in fields else None
        doc["acked_by"] = fields.get("acked_by")
        out.append(doc)
    return sorted(out, key=lambda a: (_ORDER.get(a["state"], 9), a["model"], a["candidate"],
                                      a["rule"]))


def latest_windows(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    docs = []
    for key in _scan(client, f"{prefix}:window:*"):
        raw = client.get(key)
        if raw:
            docs.append(orjson.loads(raw))
    return sorted(docs, key=lambda w: (w["model"], w["candidate"]))


def acknowledge(client: redis.Redis, prefix: str, alert_id: str, who: str) -> dict[str, Any]:
    """Mark the alert with this id acknowledged (it must be a rule's current alert)."""
    for key in _scan(client, f"{prefix}:alert:*"):
        if client.hget(key, "alert_id") == alert_id.encode():
            now = time.time_ns() // 1_000_000
            client.hset(key, mapping={"acked_at": now, "acked_by": who})
            return orjson.loads(client.hget(key, "alert") or b"{}")
    raise ShadowstreamError(f"no current alert has id {alert_id!r} "
                            f"(see `shadow alerts list`)")


def render(alerts: list[dict[str, Any]], windows: list[dict[str, Any]]) -> Group:
    table = Table("state", "severity", "model", "candidate", "rule", "value", "threshold",
                  "window end", "id", "acked", title="alerts", title_justify="left")
    for a in alerts:
        if a["state"] == "ok":
            continue
        style = {"firing": "bold red", "pending": "yellow"}.get(a["state"], "green")
        table.add_row(f"[{style}]{a['state']}[/]", a["severity"], a["model"], a["candidate"],
                      a["rule"], _num(a.get("value")), _num(a["threshold"]),
                      _time(a["window_end"]), a["alert_id"], "yes" if a.get("acked_at") else "")
    wins = Table("model", "candidate", "window end", "requests", "pairs", "coverage",
                 "disagree", "div p99", "max PSI", title="latest windows", title_justify="left")
    for w in windows:
        psi = max((d.get("psi", 0.0) for d in w.get("drift", {}).values()), default=None)
        wins.add_row(w["model"], w["candidate"], _time(w["window_end"]), str(w["requests"]),
                     str(w["pairs"]), _num(w.get("coverage")), _num(w.get("disagreement_rate")),
                     _num(w.get("divergence", {}).get("p99")), _num(psi))
    return Group(table, wins)


def watch(client: redis.Redis, prefix: str, seconds: float | None, console: Any) -> None:
    """A live view: redrawn on every alert or window published by the join."""
    from rich.live import Live

    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(f"{prefix}:alerts", f"{prefix}:windows")
    except redis.RedisError as exc:
        raise ShadowstreamError(f"Redis: {exc}") from None
    end = None if seconds is None else time.monotonic() + seconds
    with Live(render(current_alerts(client, prefix), latest_windows(client, prefix)),
              console=console, refresh_per_second=4) as live:
        while end is None or time.monotonic() < end:
            try:
                msg = pubsub.get_message(timeout=0.5)
            except redis.RedisError:
                time.sleep(1.0)  # Redis went away: keep showing the last view, retry
                continue
            if msg is not None:
                live.update(render(current_alerts(client, prefix),
                                   latest_windows(client, prefix)))
    pubsub.close()


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def _time(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000))
