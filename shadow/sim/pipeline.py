"""``shadow demo``: the whole pipeline on this machine, with a story it can check.

A synthetic service answers requests with its live model and mirrors them; a shadow worker
runs a candidate that is the same model until a third of the way through, then answers the
other class for every request of one segment ("us"); two thirds of the way through, the
service's inputs shift (drift). The join app pairs, windows and alerts. The demo shows it live,
then checks that what it injected was seen: every request paired, the disagreement alert
raised after the candidate turned, the drift alert after the shift, and the service's publish
time unaffected.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from torch import nn

from producers import Mirror, MirrorConfig
from schemas import Alert
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import Candidate, CardAdapter, ModelCard
from shadow.runtime.worker import ShadowWorker, WorkerConfig
from shadow.settings import Settings, redact_url
from shadow.sim.running import DemoRun, TimedPublisher, quantile, redis_alerts, scrape
from shadow.sim.traffic import MODEL_CARD, TrafficService, TrafficSpec, build_model
from shadow.stack import Endpoints, prometheus_root
from shadow.stack.procs import free_port
from shadow.stack.prometheus import register_target

__all__ = ["DemoPlan", "DemoSummary", "run_demo"]

CANDIDATE = "candidate-v2"
MODEL = "fraud-scorer"
SEGMENT_COUNTRY = "US"  # the "us" segment


@dataclass(frozen=True)
class DemoPlan:
    duration_s: float = 120.0
    rate: float = 100.0
    window_s: float = 10.0

    @property
    def turn_at_s(self) -> float:
        """When the candidate starts to disagree on the "us" segment."""
        return self.duration_s / 3

    @property
    def shift_at_s(self) -> float:
        """When the inputs shift."""
        return 2 * self.duration_s / 3


class _TurningCandidate(nn.Module):
    """The live model, except on rows flagged by the adapter: there the other class wins."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model(0)

    def forward(self, x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        probs = self.inner(x)
        return probs * (1 - flip) + probs.flip(-1) * flip


class _TurningAdapter:
    """Flags the rows of the "us" segment once the turn time has come (wall clock)."""

    def __init__(self, turn_at: float) -> None:
        self.card = CardAdapter(ModelCard.model_validate(MODEL_CARD))
        self.turn_at = turn_at

    def collate(self, inputs: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, ...]:
        (x,) = self.card.collate(inputs)
        turned = time.time() >= self.turn_at
        flip = torch.tensor([[1.0 if turned and i.get("country") == SEGMENT_COUNTRY else 0.0]
                             for i in inputs])
        return x, flip

    def answers(self, result: torch.Tensor) -> list[dict[str, Any]]:
        return self.card.answers(result)


@dataclass
class DemoSummary:
    ok: bool
    reasons: list[str]
    seconds: float
    requests: int
    pairs: int
    unmatched: int
    dead_lettered: int
    windows: int
    alerts: list[dict[str, Any]]
    turn_at: str
    shift_at: str
    publish_us: dict[str, float]
    dropped: int
    where: dict[str, str] = field(default_factory=dict)
    scenario: str = "fraud"
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per candidate (text and json scenarios): its role, pairs, disagreement, excess over
    the control, alert and verdict."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def mirror_dropped(self, n: int) -> None:
        """The service's mirror dropped ``n`` requests: the demo did not see them all."""
        self.dropped = n
        if n:
            self.reasons.append(f"the mirror dropped {n} requests")
            self.ok = False


def run_demo(settings: Settings, plan: DemoPlan,
             on_tick: Callable[[dict[str, Any]], None] | None = None,
             stop_stack: bool = False) -> DemoSummary:
    """Run the demo end to end; the summary says whether the pipeline behaved as designed.

    The traffic, worker and join app it starts are always stopped; the servers it started
    (Kafka, Redis, Prometheus) only with ``stop_stack``, so that one can look at what the
    summary points to."""
    run = DemoRun.start(settings)
    s, endpoints, prefix = run.settings, run.endpoints, run.settings.topic_prefix
    join_port, worker_port = free_port(), free_port()
    worker: ShadowWorker | None = None
    t_start = time.time()
    try:
        run.create_topics()
        run.start_join(join_port, plan.window_s, plan.rate, "--expect", f"{MODEL}={CANDIDATE}")
        # The join registers itself with the stack's Prometheus; this in-process worker
        # is registered here.
        register_target(prometheus_root(settings), "worker", f"127.0.0.1:{worker_port}",
                        {"prefix": prefix, "candidate": CANDIDATE})
        adapter = _TurningAdapter(turn_at=float("inf"))  # set once everything runs
        candidate = Candidate("demo:turning-candidate", _TurningCandidate().eval(), adapter)
        engine = InferenceEngine(candidate, device="auto", max_batch=64)
        worker = ShadowWorker(s, endpoints.kafka_bootstrap,
                              WorkerConfig(candidate_id=CANDIDATE, max_wait_ms=20,
                                           metrics_port=worker_port), engine)
        worker_thread = threading.Thread(target=worker.run, daemon=True, name="demo-worker")
        worker_thread.start()
        run.wait_for(lambda: scrape(join_port) != {}, 60, "the join app did not start")
        turn_at = time.time() + plan.turn_at_s
        adapter.turn_at = turn_at
        sent, timed = _run_traffic(s, endpoints, plan, join_port, worker, on_tick, t_start)
        publish = timed.samples
        shift_at = turn_at - plan.turn_at_s + plan.shift_at_s
        # Drain: the worker answers everything, the join pairs it and closes the last windows.
        run.wait_for(lambda: worker.stats.handled >= sent.sent, 90,
                     "the worker did not answer every request")
        run.wait_for(lambda: scrape(join_port).get("shadow_join_pairs_total", 0) >= sent.sent,
                     60, "the join did not pair every request")
        time.sleep(plan.window_s + 6)  # the idle close of the last window, and its alerts
        metrics = scrape(join_port)
        alerts = redis_alerts(endpoints.redis_url, prefix)
        if on_tick:
            on_tick(_tick(t_start, sent.sent, sent.rate, worker, metrics, alerts, publish))
        summary = _summary(plan, prefix, endpoints, sent.sent, metrics, alerts, publish,
                           turn_at, shift_at, time.time() - t_start)
        summary.mirror_dropped(timed.dropped)
        return summary
    finally:
        if worker is not None:
            worker.stop()
        run.close(stop_stack)


def _run_traffic(s: Settings, endpoints: Endpoints, plan: DemoPlan, join_port: int,
                 worker: ShadowWorker, on_tick: Callable[[dict[str, Any]], None] | None,
                 t_start: float) -> tuple[Any, TimedPublisher]:
    cfg = MirrorConfig(bootstrap=endpoints.kafka_bootstrap, model=MODEL,
                       topic=s.topic("requests"), output_kind="probs")
    with Mirror(cfg, CollectorRegistry()) as mirror:
        timed = TimedPublisher(mirror)
        service = TrafficService(timed, TrafficSpec(model=MODEL, seed=0))

        def tick(stats: Any) -> None:
            if on_tick:
                on_tick(_tick(t_start, stats.sent, stats.rate, worker, scrape(join_port),
                              redis_alerts(endpoints.redis_url, s.topic_prefix), timed.samples))

        service.run(plan.rate, plan.duration_s, shift_at_s=plan.shift_at_s, on_tick=tick)
        mirror.flush(30)
        timed.dropped = sum(mirror.metrics.dropped_by.values())
    return service.stats, timed


def _tick(t_start: float, sent: int, rate: float, worker: ShadowWorker,
          metrics: dict[str, float], alerts: list[Alert], publish: list[float]
          ) -> dict[str, Any]:
    firing = sorted({a.rule for a in alerts if a.state == "firing"}
                    - {a.rule for a in alerts if a.state == "resolved"})
    recent = publish[-2000:]
    return {
        "elapsed_s": time.time() - t_start, "sent": sent, "rate": rate,
        "answered": worker.stats.handled,
        "pairs": int(metrics.get("shadow_join_pairs_total", 0)),
        "windows": int(metrics.get("shadow_join_windows_closed_total", 0)),
        "disagreement": metrics.get(f'shadow_window_disagreement_rate{{candidate="{CANDIDATE}"'
                                    f',model="{MODEL}"}}'),
        "psi_max": metrics.get(f'shadow_window_drift_psi_max{{candidate="{CANDIDATE}",'
                               f'model="{MODEL}"}}'),
        "alerts": [f"{a.rule}: {a.previous_state} -> {a.state}" for a in alerts[-6:]],
        "firing": firing,
        "publish_p99_us": quantile(recent, 0.99) if recent else None}


def _summary(plan: DemoPlan, prefix: str, endpoints: Endpoints, sent: int,
             metrics: dict[str, float], alerts: list[Alert], publish: list[float],
             turn_at: float, shift_at: float, seconds: float) -> DemoSummary:
    pairs = int(metrics.get("shadow_join_pairs_total", 0))
    unmatched = int(sum(v for k, v in metrics.items()
                        if k.startswith("shadow_join_unmatched_total")))
    reasons = []
    if pairs != sent:
        reasons.append(f"{sent} requests sent but {pairs} pairs")
    by_rule = {a.rule: a for a in alerts if a.state == "firing"}
    dis = by_rule.get("disagreement")
    if dis is None:
        reasons.append("no disagreement alert although the candidate turned on segment 'us'")
    elif dis.window_end / 1000 < turn_at:
        reasons.append("the disagreement alert fired before the candidate turned")
    drift = by_rule.get("input_drift")
    if drift is None:
        reasons.append("no drift alert although the inputs shifted")
    elif drift.window_end / 1000 < shift_at:
        reasons.append("the drift alert fired before the inputs shifted")
    p99 = quantile(publish, 0.99) if publish else 0.0
    if p99 > 1000:
        reasons.append(f"publish() p99 {p99:.0f} us: production was slowed down")
    iso = lambda t: time.strftime("%H:%M:%S", time.localtime(t))  # noqa: E731
    return DemoSummary(
        ok=not reasons, reasons=reasons, seconds=seconds, requests=sent, pairs=pairs,
        unmatched=unmatched,
        dead_lettered=int(metrics.get("shadow_join_dead_lettered_total", 0)),
        windows=int(metrics.get("shadow_join_windows_closed_total", 0)),
        alerts=[{"rule": a.rule, "state": a.state, "severity": a.severity,
                 "value": a.value, "window_end": iso(a.window_end / 1000),
                 "alert_id": a.alert_id} for a in alerts],
        turn_at=iso(turn_at), shift_at=iso(shift_at),
        publish_us={"p50": statistics.median(publish) if publish else 0.0, "p99": p99},
        dropped=0,
        where={"redis": f"{redact_url(endpoints.redis_url)}  XRANGE {prefix}:alerts - + ; "
                        f"HGETALL {prefix}:alert:{MODEL}:{CANDIDATE}:disagreement ; "
                        f"ZREVRANGE {prefix}:exemplars:{MODEL}:{CANDIDATE} 0 9 WITHSCORES",
               "prometheus": f"{endpoints.prometheus_url}/alerts  (query: "
                             f"shadow_window_disagreement_rate{{prefix=\"{prefix}\"}})",
               "topics": f"{prefix}.requests, .outputs, .pairs, .windows, .deadletter"})
