"""``shadow demo --scenario text|json``: generative and JSON answers, judged against a control.

A service answers with its live model and mirrors each request (a text, or a JSON document).
Three workers shadow it: a control (a second copy of the live model), a candidate with the
live model's weights, whose answers differ from live by sampling alone, and a retrained one.
The join compares the answers with the model's tolerances and reports each candidate beside
the control. The demo then checks what a release gate would conclude: the candidate equal to
live is promoted although its answers differ from live on many requests, the retrained one
is rolled back and alerted on, and the control raises no divergence alert of its own.
"""

from __future__ import annotations

import itertools
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from consumers.verdict import JudgeConfig, judge
from producers import Mirror, MirrorConfig
from shadow.offline.windows import read_windows
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import load_candidate
from shadow.runtime.worker import ShadowWorker, WorkerConfig
from shadow.settings import Settings, redact_url
from shadow.sim import chat, quotes
from shadow.sim.pipeline import DemoPlan, DemoSummary
from shadow.sim.running import DemoRun, TimedPublisher, quantile, redis_alerts, scrape
from shadow.stack import Endpoints
from shadow.stack.procs import free_port

__all__ = ["SCENARIOS", "VERDICT", "VERDICT_TOML", "run_scenario"]

VERDICT_TOML = """\
# The gate of `shadow demo --scenario text|json` (shadow verdict --config FILE).
[[metrics]]
metric = "disagreement_rate"
limit = 0.05            # a sampled model's excess over the control: 2 % needs many more pairs
[[metrics]]
metric = "latency_p99"
allowed_increase = 3.0  # the workers batch for up to 20 ms; the service answers at once
"""
"""What the demo judges each candidate with; the summary says how to run the same gate."""
VERDICT = JudgeConfig.from_dict(tomllib.loads(VERDICT_TOML), "the demo's verdict")


@dataclass(frozen=True)
class Scenario:
    model: str
    module: str
    live: str
    output_kind: str
    tolerances: str
    requests: Callable[[], Iterator[tuple[str, dict[str, Any], str]]]
    control: str
    same: str
    retrained: str

    def workers(self) -> list[tuple[str, str, bool]]:
        """(candidate id, factory, control) of each shadow worker."""
        return [(f"{self.model}-control", self.control, True),
                (f"{self.model}-same", self.same, False),
                (f"{self.model}-retrained", self.retrained, False)]


SCENARIOS = {
    "text": Scenario(
        "support-chat", "shadow.sim.chat", "build_chat", "text", chat.TOLERANCES,
        lambda: ((p.request_id, {"message": p.message}, p.segment)
                 for p in chat.prompts(seed=int(time.time()))),
        "build_chat_control", "build_chat_same", "build_chat_retrained"),
    "json": Scenario(
        "shipping-quote", "shadow.sim.quotes", "build_quotes", "json", quotes.TOLERANCES,
        lambda: ((q.request_id, q.inputs, q.segment)
                 for q in quotes.requests(seed=int(time.time()))),
        "build_quotes_control", "build_quotes_same", "build_quotes_retrained"),
}


def run_scenario(settings: Settings, plan: DemoPlan, name: str,
                 on_tick: Callable[[dict[str, Any]], None] | None = None,
                 stop_stack: bool = False) -> DemoSummary:
    """Run one scenario end to end; the summary says whether the gate concluded as it
    should. The service, workers and join app are always stopped; the servers it started
    only with ``stop_stack``."""
    sc = SCENARIOS[name]
    run = DemoRun.start(settings, name)
    s, endpoints, prefix, workdir = (run.settings, run.endpoints, run.settings.topic_prefix,
                                     run.workdir)
    (workdir / "tolerances.toml").write_text(sc.tolerances)
    (workdir / "verdict.toml").write_text(VERDICT_TOML)
    join_port = free_port()
    workers: dict[str, ShadowWorker] = {}
    t_start = time.time()
    try:
        run.create_topics()
        run.start_join(join_port, plan.window_s, plan.rate,
                       "--tolerances", str(workdir / "tolerances.toml"),
                       *(a for cid, _, _ in sc.workers()
                         for a in ("--expect", f"{sc.model}={cid}")))
        for cid, factory, control in sc.workers():
            engine = InferenceEngine(load_candidate(f"{sc.module}:{factory}"), max_batch=64)
            workers[cid] = ShadowWorker(s, endpoints.kafka_bootstrap, WorkerConfig(
                candidate_id=cid, max_wait_ms=20, control=control), engine)
            threading.Thread(target=workers[cid].run, daemon=True, name=cid).start()
        run.wait_for(lambda: scrape(join_port) != {}, 60, "the join app did not start")
        sent, timed = _serve(s, endpoints, plan, sc, workers, join_port, on_tick, t_start)
        run.wait_for(lambda: all(w.stats.handled >= sent for w in workers.values()), 90,
                     "the workers did not answer every request")
        pairs_due = sent * len(workers)
        run.wait_for(lambda: scrape(join_port).get("shadow_join_pairs_total", 0) >= pairs_due,
                     60, "the join did not pair every answer")
        time.sleep(plan.window_s + 6)  # the idle close of the last window, and its alerts
        metrics = scrape(join_port)
        alerts = redis_alerts(endpoints.redis_url, prefix)
        windows = read_windows(s, endpoints.kafka_bootstrap)
        summary = _summary(sc, prefix, endpoints, sent, metrics, alerts, windows,
                           timed.samples, time.time() - t_start, workdir)
        summary.mirror_dropped(timed.dropped)
        return summary
    finally:
        for w in workers.values():
            w.stop()
        run.close(stop_stack)


def _serve(s: Settings, endpoints: Endpoints, plan: DemoPlan, sc: Scenario,
           workers: dict[str, ShadowWorker], join_port: int,
           on_tick: Callable[[dict[str, Any]], None] | None, t_start: float
           ) -> tuple[int, TimedPublisher]:
    """The service: the live model answers each request, the answer is mirrored (a text or
    a document, as the service returns it), paced at ``plan.rate``."""
    live = InferenceEngine(load_candidate(f"{sc.module}:{sc.live}"), max_batch=256)
    cfg = MirrorConfig(bootstrap=endpoints.kafka_bootstrap, model=sc.model,
                       topic=s.topic("requests"), output_kind=sc.output_kind)  # type: ignore[arg-type]
    total = int(plan.rate * plan.duration_s)
    requests = sc.requests()
    sent = 0
    with Mirror(cfg, CollectorRegistry()) as mirror:
        timed = TimedPublisher(mirror)
        start = last_tick = time.monotonic()
        while sent < total:
            due = min(total, int((time.monotonic() - start) * plan.rate) + 1)
            if due <= sent:
                time.sleep(0.01)
                continue
            batch = list(itertools.islice(requests, due - sent))
            t0 = time.perf_counter()
            answers = live.infer([inputs for _, inputs, _ in batch])
            per_ms = (time.perf_counter() - t0) * 1000 / len(batch)
            for (rid, inputs, segment), a in zip(batch, answers, strict=True):
                value = a.output["value"] if a.output is not None else None
                timed.publish(rid, inputs, value, latency_ms=per_ms, error=a.error,
                              segment=segment)
            sent = due
            if on_tick and time.monotonic() - last_tick >= 1.0:
                last_tick = time.monotonic()
                on_tick(_tick(t_start, sent, workers, scrape(join_port)))
        mirror.flush(30)
        timed.dropped = sum(mirror.metrics.dropped_by.values())
    return sent, timed


def _tick(t_start: float, sent: int, workers: dict[str, ShadowWorker],
          metrics: dict[str, float]) -> dict[str, Any]:
    elapsed = time.time() - t_start
    return {"elapsed_s": elapsed, "sent": sent, "rate": sent / elapsed if elapsed else 0.0,
            "answered": min(w.stats.handled for w in workers.values()),
            "pairs": int(metrics.get("shadow_join_pairs_total", 0)),
            "windows": int(metrics.get("shadow_join_windows_closed_total", 0)),
            "alerts": [], "firing": []}


def _summary(sc: Scenario, prefix: str, endpoints: Endpoints, sent: int,
             metrics: dict[str, float], alerts: list[Any],
             windows: dict[tuple[str, str], list[dict[str, Any]]], publish: list[float],
             seconds: float, workdir: Path) -> DemoSummary:
    reasons = []
    n = len(sc.workers())
    pairs = int(metrics.get("shadow_join_pairs_total", 0))
    if pairs != sent * n:
        reasons.append(f"{sent} requests sent to {n} workers but {pairs} pairs")
    candidates: dict[str, dict[str, Any]] = {}
    firing = {(a.candidate, a.rule) for a in alerts if a.state == "firing"}
    for cid, _, control in sc.workers():
        mine = windows.get((sc.model, cid), [])
        row: dict[str, Any] = {"role": "control" if control else "candidate",
                               "windows": len(mine),
                               "pairs": sum(w.get("pairs", 0) for w in mine)}
        # Pooled over the windows, as the verdict pools them.
        n = sum(w["state"]["compared"] for w in mine)
        if n:
            row["disagreement_rate"] = sum(w["state"]["disagreements"] for w in mine) / n
        beside = [w["control"] for w in mine if w.get("control")]
        n_control = sum(c["compared"] for c in beside)
        if n and n_control:
            row["excess_over_control"] = row["disagreement_rate"] - sum(
                c["disagreements"] for c in beside) / n_control
        row["disagreement_alert"] = (cid, "disagreement") in firing
        exported = [v for k, v in metrics.items()
                    if k.startswith("shadow_window_excess_disagreement_rate{")
                    and f'candidate="{cid}"' in k]
        if control == bool(exported):
            reasons.append(f"{cid}: the join exports an excess over the control for "
                           f"{'the control itself' if control else 'none'} "
                           "(shadow_window_excess_disagreement_rate)")
        if control:
            if not all(w.get("is_control") for w in mine) or not mine:
                reasons.append(f"{cid}: its windows are not marked as the control's")
            if row["disagreement_alert"]:
                reasons.append(f"{cid}: the control was alerted on its own noise")
        else:
            verdict = judge(mine, VERDICT)
            row["verdict"] = verdict.decision
            row["reason"] = verdict.reason
        candidates[cid] = row
    same = candidates[f"{sc.model}-same"]
    bad = candidates[f"{sc.model}-retrained"]
    if same["verdict"] != "PROMOTE":
        reasons.append(f"the candidate equal to live was not promoted: {same['reason']}")
    if same["disagreement_alert"]:
        reasons.append("the candidate equal to live was alerted on")
    if same.get("disagreement_rate", 0.0) == 0.0 and sc.output_kind == "text":
        reasons.append("the candidate equal to live never disagreed with live: no sampling?")
    if bad["verdict"] != "ROLLBACK":
        reasons.append(f"the retrained candidate was not rolled back: {bad['reason']}")
    if not bad["disagreement_alert"]:
        reasons.append("no disagreement alert on the retrained candidate")
    if sc.output_kind == "json" and not any(
            k.startswith("shadow_window_field_difference_rate{") and 'field="$.service"' in k
            for k in metrics):
        reasons.append("the join exports no difference rate for the field $.service")
    p99 = quantile(publish, 0.99) if publish else 0.0
    if p99 > 1000:
        reasons.append(f"publish() p99 {p99:.0f} us: production was slowed down")
    iso = lambda t: time.strftime("%H:%M:%S", time.localtime(t))  # noqa: E731
    return DemoSummary(
        ok=not reasons, reasons=reasons, seconds=seconds, requests=sent, pairs=pairs,
        unmatched=int(sum(v for k, v in metrics.items()
                          if k.startswith("shadow_join_unmatched_total"))),
        dead_lettered=int(metrics.get("shadow_join_dead_lettered_total", 0)),
        windows=int(metrics.get("shadow_join_windows_closed_total", 0)),
        alerts=[{"rule": a.rule, "candidate": a.candidate, "state": a.state,
                 "severity": a.severity, "value": a.value,
                 "window_end": iso(a.window_end / 1000), "alert_id": a.alert_id}
                for a in alerts],
        turn_at="", shift_at="",
        publish_us={"p50": quantile(publish, 0.5) if publish else 0.0, "p99": p99},
        dropped=0, scenario=sc.output_kind, candidates=candidates,
        where={"redis": f"{redact_url(endpoints.redis_url)}  XRANGE {prefix}:alerts - +",
               "verdict": f"SHADOW_TOPIC_PREFIX={prefix} shadow verdict --live --model "
                          f"{sc.model} --candidate {sc.model}-same --config "
                          f"{workdir / 'verdict.toml'}",
               "topics": f"{prefix}.requests, .outputs, .pairs, .windows, .deadletter"})
