from __future__ import annotations

from typing import Any

import torch

from shadow.sim.traffic import TrafficService, TrafficSpec, build_model, featurize


class Recorder:
    """A Publisher that keeps what it is given (the generator's only dependency)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, request_id: str, inputs: dict, output: Any = None, **kw: Any) -> bool:
        self.events.append({"request_id": request_id, "inputs": inputs, "output": output, **kw})
        return True


def _run(spec: TrafficSpec, n: int) -> list[dict[str, Any]]:
    rec = Recorder()
    svc = TrafficService(rec, spec)
    for start in range(0, n, 37):  # batch boundaries must not matter
        svc.answer([spec.event(i) for i in range(start, min(n, start + 37))], now_ms=0)
    return rec.events


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    a = _run(TrafficSpec(seed=3, disagree=0.1), 200)
    b = _run(TrafficSpec(seed=3, disagree=0.1), 200)
    c = _run(TrafficSpec(seed=4, disagree=0.1), 200)
    strip = [{k: e[k] for k in ("request_id", "inputs", "output")} for e in a]
    assert strip == [{k: e[k] for k in ("request_id", "inputs", "output")} for e in b]
    assert [e["inputs"] for e in a] != [e["inputs"] for e in c]


def test_disagree_flips_exactly_the_recorded_requests() -> None:
    spec = TrafficSpec(seed=1, disagree=0.2)
    model = build_model()  # the live model, whatever the seed of the requests
    events = _run(spec, 1000)
    flipped = 0
    for i, e in enumerate(events):
        truth = spec.event(i)
        with torch.inference_mode():
            p = model(torch.tensor([featurize(e["inputs"])]))[0].tolist()
        model_top = int(p[1] > p[0])
        live_top = int(e["output"][1] > e["output"][0])
        assert (model_top != live_top) == truth.disagree
        flipped += truth.disagree
    assert 150 < flipped < 250  # 20 percent of 1000, within a wide binomial bound


def test_shift_moves_the_input_distribution() -> None:
    spec = TrafficSpec(seed=2, shift_at_index=500)
    events = [spec.event(i) for i in range(1000)]
    before = [e.inputs["amount"] for e in events[:500]]
    after = [e.inputs["amount"] for e in events[500:]]
    assert not any(e.shifted for e in events[:500]) and all(e.shifted for e in events[500:])
    assert sorted(after)[250] > 2 * sorted(before)[250]  # medians: e^4.5 vs e^3.5
    us_before = sum(e.inputs["country"] == "US" for e in events[:500])
    us_after = sum(e.inputs["country"] == "US" for e in events[500:])
    assert us_after > 2 * us_before


def test_run_paces_requests_by_the_clock() -> None:
    rec = Recorder()
    svc = TrafficService(rec, TrafficSpec(seed=0))
    svc.run(rate=200, duration_s=1.0, shift_at_s=0.5)
    assert svc.stats.sent == 200 == len(rec.events)
    assert 0.9 < svc.stats.seconds < 1.6
    assert svc.stats.first_shifted_index is not None
    assert 70 < svc.stats.first_shifted_index < 130
