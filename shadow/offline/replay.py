"""``shadow replay``: recorded requests through candidates, judged by the live pipeline's code.

No Faust and no Kafka on this path, and no logic of its own: each recorded request goes
through ``JoinCore.handle`` exactly as the join app feeds it (same decoding, pairs, dead
letters, windows, drift), and the answers come from the worker's ``InferenceEngine``, as
``shadow.output/1`` documents in one batch per partition, as a worker writes them (handed to
the core parsed, ``handle_events``, and validated as any). Several candidates run side by
side in one pass over the file; ``jobs`` shares the partitions among processes
(``shadow.offline.parallel``).

The JSON report is the same bytes for the same input and models: the core runs on a fixed
clock, windows close by event time only, and the candidates' latencies (wall time, so never
the same twice) are left out of it; they are in ``ReplayResult.timing`` for the terminal and
the HTML report.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from consumers.compare import Tolerance, json_diff, text_ops
from consumers.join import JoinConfig, JoinCore, Outgoing
from consumers.rules import ALL_CANDIDATES
from consumers.windows import WindowAggregate, WindowKey, with_controls
from schemas import Alert, ConfigError, DivergencePair, WindowSummary
from schemas.builders import shadow_output
from shadow.exceptions import ShadowstreamError, reason_key
from shadow.offline.recordfile import RecordedMessage
from shadow.runtime.config import tune_collector
from shadow.runtime.engine import Answer, Dtype, InferenceEngine

__all__ = ["ReplayCandidate", "ReplayResult", "replay", "report_windows"]

REPORT_SCHEMA = "shadow.replay/1"
_REQUESTS, _OUTPUTS = "replay.requests", "replay.outputs"


@dataclass(frozen=True)
class ReplayCandidate:
    candidate_id: str
    engine: InferenceEngine
    load: Callable[[], InferenceEngine] | None = None
    """How another process loads the same engine (picklable, e.g. ``engine_loader``'s):
    what ``replay(jobs=N)`` needs, since a torch model cannot cross a fork safely."""
    control: bool = False
    """A control: a second copy of the live model, the other candidates' noise floor."""

    @classmethod
    def from_spec(cls, candidate_id: str, model: str, *, control: bool = False,
                  **engine: Any) -> ReplayCandidate:
        """A candidate loaded from a model spec (``load_candidate``'s ``weights``, ``card``
        and ``adapter``, and ``InferenceEngine``'s ``device``, ``dtype``, ``max_batch``), and
        loadable again in a job process."""
        load = partial(engine_loader, model, **engine)
        return cls(candidate_id, load(), load, control)


def engine_loader(model: str, *, weights: Path | None = None, card: Path | None = None,
                  adapter: str | None = None, device: str = "cpu", dtype: Dtype = "fp32",
                  max_batch: int = 256) -> InferenceEngine:
    """An engine for a model spec (module level: a job process can be told to call it)."""
    from shadow.runtime.models import load_candidate

    return InferenceEngine(load_candidate(model, weights=weights, card=card, adapter=adapter),
                           device=device, dtype=dtype, max_batch=max_batch)


@dataclass
class ReplayResult:
    report: dict[str, Any]
    """Deterministic: what ``--json`` writes."""
    timing: dict[str, Any] = field(default_factory=dict)
    """Wall-clock figures: total seconds, requests/s (requests, not records), per candidate
    engine time per row."""
    pairs: list[DivergencePair] = field(default_factory=list)
    """Every pair, when asked for (``keep_pairs``)."""

    def json_bytes(self) -> bytes:
        return orjson.dumps(self.report, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


_Shown = tuple[dict[str, Any], Answer, tuple[int, int, int]]
"""A request, one candidate's answer to it, and where the request was (for the top)."""


@dataclass
class _Top:
    """The most divergent pairs of one candidate, with what it takes to show them."""

    size: int
    heap: list[tuple[float, str, tuple[int, int, int], dict[str, Any]]] = field(
        default_factory=list)

    def would_keep(self, score: float) -> bool:
        """Whether a pair of this score may enter (a row is built only then)."""
        return len(self.heap) < self.size or score >= self.heap[0][0]

    def offer(self, score: float, request_id: str, position: tuple[int, int, int],
              row: dict[str, Any]) -> None:
        """``position``: the request's partition, offset and index in its record, which
        break ties (a request id may come twice: two recordings, a client that reuses ids;
        rows themselves do not compare), the earlier first, whichever process saw it."""
        item = (score, request_id, (-position[0], -position[1], -position[2]), row)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
        elif item[:3] > self.heap[0][:3]:
            heapq.heapreplace(self.heap, item)

    def rows(self) -> list[dict[str, Any]]:
        return [row for *_, row in sorted(
            self.heap, key=lambda t: (-t[0], t[1], tuple(-x for x in t[2])))]


def replay(messages: Iterable[RecordedMessage], candidates: Sequence[ReplayCandidate], *,
           join: JoinConfig | None = None, batch: int = 256, top: int = 20,
           source: dict[str, Any] | None = None, keep_pairs: bool = False,
           progress: Callable[[int], None] | None = None,
           latency: bool = False, jobs: int = 1) -> ReplayResult:
    """Replay recorded mirrored requests through every candidate; the report and timings.

    ``latency``: each answer carries the wall time of the inference that made it (its batch's,
    as a worker's answers do), so the windows and the verdict have candidate latency; the
    report is then no longer the same bytes run to run.

    ``jobs``: processes to share the partitions among (``shadow.offline.parallel``); the
    report is the same bytes as with one. The jobs are spawned: a script that calls this
    runs its work under ``if __name__ == "__main__":``."""
    if jobs > 1:
        if keep_pairs:
            raise ShadowstreamError("keep_pairs needs jobs=1")
        from shadow.offline.parallel import replay_jobs

        return replay_jobs(messages, candidates, jobs, join=join, batch=batch, top=top,
                           source=source, progress=progress, latency=latency)
    config = replay_config(join, candidates)
    core = JoinCore(config, {}, _REQUESTS, _OUTPUTS, clock=lambda: 0)
    tune_collector(middle=1000)  # as the worker; a window's entries live long
    run = _Run(core, candidates, top, keep_pairs, latency)
    t0 = time.perf_counter()
    for chunk in batches(messages, batch):
        run.batch(chunk)
        if progress:
            progress(run.messages)
    run.finish()
    if progress:
        progress(run.messages)
    if run.requests == 0 and run.dead_lettered == 0:
        raise ShadowstreamError("no mirrored requests in the input")
    return run.result(time.perf_counter() - t0, source or {})


BATCH_BYTES_PER_MESSAGE = 512
"""A replay batch ends at ``batch`` messages or ``batch`` x this many bytes of them, whichever
comes first: records of many events (the mirror's) then make batches of a few hundred
requests too, not of tens of thousands (measured: 18k against 22k requests/s with records of
20 events). Bytes, not events: the process that feeds ``--jobs`` cuts the same batches
without decoding."""


def batches(messages: Iterable[RecordedMessage], size: int
            ) -> Iterator[list[RecordedMessage]]:
    """The recording cut into replay batches (see ``BATCH_BYTES_PER_MESSAGE``)."""
    budget = size * BATCH_BYTES_PER_MESSAGE
    chunk: list[RecordedMessage] = []
    held = 0
    for m in messages:
        chunk.append(m)
        held += len(m.value)
        if len(chunk) >= size or held >= budget:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def replay_config(join: JoinConfig | None, candidates: Sequence[ReplayCandidate]
                  ) -> JoinConfig:
    """The join's configuration for a replay of these candidates (checked)."""
    if not candidates:
        raise ShadowstreamError("replay needs at least one candidate")
    ids = [c.candidate_id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ShadowstreamError(f"candidate ids must differ: {ids}")
    # Event time only: no partition goes idle by the wall clock in a replay.
    return replace(join or JoinConfig(), partition_idle_s=float("inf"), confirm_delivery=False,
                   candidates={})


class _Run:
    def __init__(self, core: JoinCore, candidates: Sequence[ReplayCandidate], top: int,
                 keep_pairs: bool, latency: bool = False) -> None:
        self.core = core
        self.latency = latency
        self._warm = False
        self._batches = 0
        self.keep_pairs = keep_pairs
        self.kept: list[DivergencePair] = []
        self.candidates = candidates
        self.messages = 0
        self.requests = 0
        self.dead_lettered = 0
        self.pairs = 0
        self.windows: list[WindowSummary] = []
        self.top = {c.candidate_id: _Top(top) for c in candidates}
        self.engine_s: dict[str, float] = defaultdict(float)
        self.errors: dict[str, Counter[str]] = {c.candidate_id: Counter() for c in candidates}
        self.dead_letter_reasons: Counter[str] = Counter()
        self.alerts: list[Alert] = []
        self._out_offsets: dict[int, int] = defaultdict(int)

    def batch(self, messages: list[RecordedMessage], close: bool = True) -> None:
        """Requests, answers and pairs of these messages; then the windows the watermark
        has passed close, unless not ``close`` (``shadow.offline.parallel`` closes them)."""
        requests: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
        for m in messages:
            self.messages += 1
            seen: list[dict[str, Any]] = []  # what the core decoded: the valid requests
            # Not flushed until the answers are in: no window closes on requests alone (a
            # record may hold a batch of them, far ahead of the last answers).
            self._collect(self.core.handle(_REQUESTS, m.partition, m.offset, m.key, m.value,
                                           seen, flush=False), {})
            requests.extend(((m.partition, m.offset, i), r) for i, r in enumerate(seen))
        self.requests += len(requests)
        if not requests:
            self._collect(self.core.flush(close=close), {})
            return
        inputs = [r["inputs"] for _, r in requests]
        if self.latency and not self._warm:
            # Untimed first passes: the first candidate would otherwise pay for the warm-up.
            for cand in self.candidates:
                cand.engine.infer(inputs[:8])
            self._warm = True
        # The model answers each partition's requests as one batch: float kernels may round
        # a row differently in a batch of another size, and so the answers (and the report)
        # are the same whichever job process reads which partitions (--jobs).
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (position, _) in enumerate(requests):
            groups[position[0]].append(i)
        answers: list[list[Answer]] = [[] for _ in self.candidates]
        # Each batch starts with the next candidate, so that none always runs first (cold
        # caches after the join's work) when their latency is measured.
        n = len(self.candidates)
        start = self._batches % n if self.latency else 0
        self._batches += 1
        for j in [*range(start, n), *range(start)]:
            cand = self.candidates[j]
            t0 = time.perf_counter()
            if len(groups) == 1:
                answers[j] = cand.engine.infer(inputs)
            else:
                placed: list[Any] = [None] * len(inputs)
                for _, rows in sorted(groups.items()):
                    for i, a in zip(rows, cand.engine.infer([inputs[i] for i in rows]),
                                    strict=True):
                        placed[i] = a
                answers[j] = placed
            self.engine_s[cand.candidate_id] += time.perf_counter() - t0
        # Per partition, one record with every candidate's answers, request by request, as a
        # worker writes them: the outputs' event time then moves as the requests' does, and
        # no window closes before every candidate has answered in it.
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        shown: dict[tuple[str, str], _Shown] = {}
        for i, (position, r) in enumerate(requests):
            for cand, cand_answers in zip(self.candidates, answers, strict=True):
                a = cand_answers[i]
                cid = cand.candidate_id
                if a.error is not None:
                    self.errors[cid][reason_key(a.error)] += 1
                # Wall-clock latency makes the report differ run to run: only when asked.
                by_partition[position[0]].append(shadow_output(
                    r["request_id"], r["model"], r["ts"], cid, a.output,
                    a.latency_ms if self.latency else 0.0, a.error, cand.control))
                shown[(r["request_id"], cid)] = (r, a, position)
        for partition, docs in sorted(by_partition.items()):
            offset = self._out_offsets[partition]
            self._out_offsets[partition] += 1
            self._collect(self.core.handle_events(_OUTPUTS, partition, offset,
                                                  docs[0]["request_id"].encode(), docs,
                                                  flush=False), shown)
        self._collect(self.core.flush(close=close), shown)

    def result(self, seconds: float, source: dict[str, Any]) -> ReplayResult:
        timing = {"seconds": seconds,
                  "requests_per_s": self.requests / seconds if seconds else 0.0,
                  "candidates": {c.candidate_id: {
                      "engine_seconds": self.engine_s[c.candidate_id],
                      "ms_per_request": 1000 * self.engine_s[c.candidate_id]
                      / max(self.requests, 1)} for c in self.candidates}}
        return ReplayResult(self.report(source), timing, self.kept)

    def finish(self) -> None:
        out: list[Outgoing] = []
        self.core.sweep(2**62, out)
        self._collect(out, {})

    def _collect(self, out: list[Outgoing], shown: dict[tuple[str, str], _Shown]) -> None:
        for o in out:
            if o.role == "windows":
                self.windows.append(o.record)
            elif o.role == "alerts":  # the join's rules on each window, as live
                self.alerts.append(o.record)
            elif o.role == "deadletter":
                self.dead_lettered += 1
                self.dead_letter_reasons[reason_key(o.record["reason"])] += 1
            elif o.role == "pairs":  # the documents the core encoded: no need to decode
                for pair in (o.record if isinstance(o.record, list) else [o.record]):
                    self._pair(pair, shown)

    def _pair(self, pair: dict[str, Any], shown: dict[tuple[str, str], _Shown]) -> None:
        self.pairs += 1
        if self.keep_pairs:
            self.kept.append(DivergencePair.model_validate(pair))
        rid, score = pair["request_id"], pair.get("score")
        seen = shown.get((rid, pair["candidate"]))
        if score is None or seen is None:
            return
        top = self.top[pair["candidate"]]
        if not top.would_keep(score):
            return
        request, answer, position = seen
        live = request["live"].get("output")
        row = {"request_id": rid, "model": pair["model"], "ts": pair["ts"],
               "score": score, "disagree": pair["disagree"], "metrics": pair["metrics"],
               "inputs": request["inputs"], "live": live, "candidate": answer.output}
        if pair.get("kind") in ("text", "json"):  # what the report shows side by side
            row["diff"] = answer_diff(live, answer.output,
                                      self.core.config.tolerances.for_model(pair["model"]))
        top.offer(score, rid, position, row)

    def _deterministic(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Candidate latencies are wall time (zero unless measured): in the report only when
        measured."""
        if not self.latency:
            latency = doc.get("latency", {})
            for name in ("candidate_p50", "candidate_p99"):
                latency.pop(name, None)
        return doc

    def report(self, source: dict[str, Any]) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        overall: dict[tuple[str, str], tuple[WindowSummary, WindowAggregate]] = {}
        for w in self.windows:
            if (w.candidate, w.model) not in overall:
                overall[(w.candidate, w.model)] = self._overall(w.candidate, w.model)
        # Each candidate's whole run beside its model's control's, as its windows are.
        beside = {(o.candidate, o.model): o for o in with_controls(
            [o for o, _ in overall.values()])}
        for cand in self.candidates:
            cid = cand.candidate_id
            mine = [w for w in self.windows if w.candidate == cid]
            models = sorted({w.model for w in mine})
            errors = self.errors[cid]
            per[cid] = {
                "models": {m: self._model_report(cid, m, [w for w in mine if w.model == m],
                                                 beside[(cid, m)], overall[(cid, m)][1])
                           for m in models},
                "errors": {"count": sum(errors.values()), "reasons": _top(errors)},
                "top": self.top[cid].rows()}
        report = {"schema": REPORT_SCHEMA, "source": source, "messages": self.messages,
                  "requests": self.requests, "dead_lettered": self.dead_lettered,
                  "dead_letter_reasons": _top(self.dead_letter_reasons),
                  "window_ms": self.core.config.window_ms, "candidates": per,
                  "candidate_latency": "measured" if self.latency else "left out"}
        if self.core.alerts is not None and self.core.alerts.unmatched:
            # A rule that can never fire (a misspelt feature or field): said with the report.
            report["rule_warnings"] = list(self.core.alerts.unmatched)
        return report

    def _overall(self, cid: str, model: str) -> tuple[WindowSummary, WindowAggregate]:
        """One candidate's whole run on one model, as one window (and its aggregate)."""
        overall = [w for w in self.windows
                   if w.candidate == cid and w.model == model and w.segment is None]
        merged = WindowAggregate()
        for w in overall:
            merged.merge(WindowAggregate.from_state(w.state))  # type: ignore[arg-type]
        start = min(w.window_start for w in overall)
        end = max(w.window_end for w in overall)
        key = WindowKey(model, cid, start)
        return merged.summary(key, end - start, self.core.profiles.get(model), 0), merged

    def _model_report(self, cid: str, model: str, windows: list[WindowSummary],
                      summary: WindowSummary, merged: WindowAggregate) -> dict[str, Any]:
        drop = {"state", "ts", "schema_"}
        gamma = (1 + merged.divergence.accuracy) / (1 - merged.divergence.accuracy)
        histogram = ([[0.0, merged.divergence.zeros]] if merged.divergence.zeros else []) + [
            [2 * gamma**i / (gamma + 1), n] for i, n in sorted(merged.divergence.buckets.items())]
        return {
            "divergence_histogram": histogram,
            "overall": self._deterministic(summary.model_dump(exclude=drop,
                                                              exclude_none=True)),
            "windows": [self._deterministic(w.model_dump(exclude=drop, exclude_none=True))
                        for w in sorted(windows, key=lambda w: (w.window_start,
                                                                w.segment or ""))],
            # Every transition of every rule, in window order (as the live join sends them);
            # a model's own rules (input drift, candidate "*") under each of its candidates.
            "alerts": [a.model_dump(mode="json", by_alias=True,
                                    include={"rule", "severity", "state", "previous_state",
                                             "metric", "value", "threshold", "window_start",
                                             "window_end", "message"})
                       for a in self.alerts
                       if a.model == model and a.candidate in (cid, ALL_CANDIDATES)]}


DIFF_ROWS = 50
"""At most this many rows of a JSON answers' field diff in a report."""


def answer_diff(live: Any, candidate: Any, tol: Tolerance) -> list[list[Any]]:
    """Two text answers word by word (``[tag, live words, candidate words]``), or two JSON
    answers field by field (``[path, status, live value, candidate value]``, the fields that
    differ first, at most ``DIFF_ROWS``)."""
    if live["kind"] == "text":
        return [list(op) for op in text_ops(live["value"], candidate["value"])]
    rows = json_diff(live["value"], candidate["value"], tol)
    rows.sort(key=lambda d: d.status == "equal")  # stable: by path within each group
    return [[d.path, d.status, d.live, d.candidate] for d in rows[:DIFF_ROWS]]


def _top(counts: Counter[str], n: int = 10) -> dict[str, int]:
    """The most frequent reasons first; ties by text, so that the report is the same bytes."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def report_windows(path: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The overall (not per segment) windows of each model and candidate in a JSON report
    written by ``ReplayResult.json_bytes`` (what ``shadow verdict --replay`` judges)."""
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(str(path), f"not a replay report: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != REPORT_SCHEMA:
        raise ConfigError(str(path), f"not a replay report (no schema {REPORT_SCHEMA!r}: "
                                     "write one with `shadow replay --json FILE`)")
    try:
        return {(model, cid): [w for w in rep["windows"] if "segment" not in w]
                for cid, cand in doc["candidates"].items()
                for model, rep in cand["models"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(str(path), f"not a replay report ({exc})") from None
