"""What comparing text and JSON answers costs per pair, and what a control costs a replay.

References measured in the same run: the probs comparator (what every fraud-scorer pair
pays) for the per-pair figures, and a replay of the same recording without the control for
the control's cost.

Run: python -m bench.bench_compare
"""

from __future__ import annotations

import itertools
import time
import tomllib

import orjson

from bench._common import machine, median, per_call_us
from consumers.compare import Tolerance, Tolerances, compare
from consumers.join import JoinConfig
from shadow.offline.recordfile import RecordedMessage
from shadow.offline.replay import ReplayCandidate, replay
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import load_candidate
from shadow.sim import chat, quotes

T0 = 1_800_000_000_000


def _answers(factory: str, inputs: list[dict]) -> list[dict]:
    engine = InferenceEngine(load_candidate(factory), max_batch=256)
    return [a.output for a in engine.infer(inputs)]


def per_pair() -> None:
    prompts = [{"message": p.message} for p in itertools.islice(chat.prompts(seed=9), 500)]
    live_t = _answers("shadow.sim.chat:build_chat", prompts)
    cand_t = _answers("shadow.sim.chat:build_chat_retrained", prompts)
    reqs = [q.inputs for q in itertools.islice(quotes.requests(seed=9), 500)]
    live_j = _answers("shadow.sim.quotes:build_quotes", reqs)
    cand_j = _answers("shadow.sim.quotes:build_quotes_retrained", reqs)
    probs = ({"kind": "probs", "value": [0.9, 0.1]}, {"kind": "probs", "value": [0.6, 0.4]})
    tol_t = Tolerance(min_token_f1=0.9)
    tol_s = Tolerance(min_token_f1=0.9, min_semantic=0.8)
    tol_j = Tolerance(rtol=0.01, ignore=("$.quote_nonce",))
    compare(live_t[0], cand_t[0], tol_s)  # load the embeddings before timing

    def cycle(live: list[dict], cand: list[dict], tol: Tolerance):
        pairs = itertools.cycle(list(zip(live, cand, strict=True)))
        return lambda: compare(*next(pairs), tol)

    ref = per_call_us(lambda: compare(*probs), calls=2000, batches=15)
    rows = [("text (token F1, ROUGE-L, edit distance)", cycle(live_t, cand_t, tol_t)),
            ("text + semantic similarity", cycle(live_t, cand_t, tol_s)),
            ("json (4 fields, 1 ignored)", cycle(live_j, cand_j, tol_j))]
    print(f"{'probs, 2 classes (reference)':42} median {median(ref):7.2f} us a pair")
    for name, fn in rows:
        us = per_call_us(fn, calls=2000, batches=15)
        print(f"{name:42} median {median(us):7.2f} us a pair  "
              f"({median(us) / median(ref):.1f}x the reference)")


def control_cost(n: int = 12_000, repeat: int = 3) -> None:
    rows = list(itertools.islice(chat.prompts(seed=11), n))
    live = _answers("shadow.sim.chat:build_chat", [{"message": p.message} for p in rows])
    messages = []
    for i, (p, out) in enumerate(zip(rows, live, strict=True)):
        doc = {"schema": "mirror.request/1", "request_id": p.request_id,
               "model": "support-chat", "ts": T0 + 10 * i, "inputs": {"message": p.message},
               "live": {"version": "v1", "latency_ms": 2.0, "output": out}}
        messages.append(RecordedMessage("r", i % 4, i // 4, T0 + 10 * i,
                                        p.request_id.encode(), orjson.dumps(doc)))
    join = JoinConfig(window_ms=10_000, grace_ms=1000, reference_size=1000,
                      tolerances=Tolerances.from_dict(tomllib.loads(chat.TOLERANCES)))

    def run(with_control: bool) -> float:
        cands = [ReplayCandidate.from_spec("v2", "shadow.sim.chat:build_chat_retrained")]
        if with_control:
            cands.append(ReplayCandidate.from_spec(
                "control", "shadow.sim.chat:build_chat_control", control=True))
        t0 = time.perf_counter()
        replay(messages, cands, join=join, batch=256)
        return n / (time.perf_counter() - t0)

    alone, beside = [], []
    for _ in range(repeat):  # interleaved: drift of the machine hits both alike
        alone.append(run(False))
        beside.append(run(True))
    print(f"replay of {n:,} chat requests, one candidate (reference): "
          f"median {median(alone):,.0f} requests/s")
    print(f"the same with a control beside it:                "
          f"median {median(beside):,.0f} requests/s  "
          f"({median(beside) / median(alone):.2f} of the reference)")


def main() -> None:
    print(f"machine: {machine()}")
    per_pair()
    control_cost()


if __name__ == "__main__":
    main()
