"""``shadow replay --jobs N``: one replay in several processes, with the same report.

The recording's partitions are shared out among N job processes (partition ``p`` to job
``p % N``); each runs the join's core and the candidates on its partitions' requests, exactly
as ``replay`` does in one process. Windows are closed here, in the parent, by a core of its
own that is handed each closing window's entries by the jobs: a window's numbers are a
function of its entries, summed in key order (``WindowClosing.summaries``), so they are the
same floats whichever process joined which request.

To keep everything else equal to one process, the parent drives the jobs in the same batches
and decides what one process would have decided at the end of each batch:

- the watermark: the least progress over every partition of every job (as one core's);
- which windows close: those it passes; each job then hands over their entries and closes
  them before it reads the next batch (so an event for them is late exactly as in one
  process);
- the drift reference: the first requests in the recording's order, whichever job read
  them (the jobs send their features until the parent has it);
- the candidates each model is known to have (for the unmatched counts).

The report's top requests are merged from each job's; ties are broken by where the request
is in the recording, not by which process saw it first. And the model answers each
partition's requests of a batch as one batch in every case (``_Run.batch``): float kernels
may round a row differently in a batch of another size.

The jobs are spawned (a torch that ran in the parent hangs in a forked child) and load the
candidates themselves (``ReplayCandidate.load``). Parent and jobs talk in JSON (the entries
are the join's table format) plus the recorded bytes; a job that fails sends its error.
It pays where there are more CPUs than jobs: the parent reads, packs and closes, and the
entries of every window cross a pipe (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import orjson
import torch

from consumers.drift import Profile
from consumers.join import JoinConfig, JoinCore, Outgoing
from shadow.exceptions import ShadowstreamError
from shadow.offline.recordfile import RecordedMessage
from shadow.offline.replay import (
    _OUTPUTS,
    _REQUESTS,
    ReplayCandidate,
    ReplayResult,
    _Run,
    batches,
    replay_config,
)
from shadow.runtime.config import tune_collector
from shadow.runtime.engine import InferenceEngine

__all__ = ["replay_jobs"]


def _send(conn: Connection, doc: dict[str, Any], blob: bytes = b"") -> None:
    """A message between the parent and a job: JSON (as the join's table holds entries),
    then the recorded messages' bytes, concatenated."""
    conn.send_bytes(orjson.dumps(doc))
    conn.send_bytes(blob)


def _receive(conn: Connection) -> tuple[dict[str, Any], bytes]:
    doc = orjson.loads(conn.recv_bytes())
    return doc, conn.recv_bytes()


def _pack(messages: list[RecordedMessage]) -> tuple[list[list[int]], bytes]:
    heads, blob = [], bytearray()
    for m in messages:
        key = m.key
        heads.append([m.partition, m.offset, m.timestamp, -1 if key is None else len(key),
                      len(m.value)])
        if key is not None:
            blob += key
        blob += m.value
    return heads, bytes(blob)


def _unpack(heads: list[list[int]], blob: bytes) -> list[RecordedMessage]:
    out, at = [], 0
    for partition, offset, timestamp, key_len, value_len in heads:
        key = None
        if key_len >= 0:
            key, at = blob[at:at + key_len], at + key_len
        out.append(RecordedMessage(_REQUESTS, partition, offset, timestamp, key,
                                   blob[at:at + value_len]))
        at += value_len
    return out


class _JobCore(JoinCore):
    """A job's core: it learns no drift reference of its own; it records what it would
    have learned from, for the parent, which learns from every job's in the recording's
    order."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.learned: list[tuple[tuple[int, int], str, dict[str, float | str]]] = []
        self._at = (0, 0)

    def handle(self, topic: str, partition: int, offset: int, key: bytes | None,
               value: bytes | None, seen: list[dict[str, Any]] | None = None,
               flush: bool = True) -> list[Outgoing]:
        self._at = (partition, offset)
        return super().handle(topic, partition, offset, key, value, seen, flush)

    def _learn_reference(self, model: str, features: dict[str, float | str]) -> None:
        self.learned.append((self._at, model, features))


def _job(conn: Connection, loads: list[tuple[str, Callable[[], InferenceEngine], bool]],
         config: JoinConfig, top: int, latency: bool, threads: int) -> None:
    """A job process: batches in, what the parent needs out, until told to finish. What
    goes wrong is sent as ``{"error": ...}`` (then it stops), not lost with the process;
    when the parent is gone (Ctrl-C, an error there), it just ends."""
    with contextlib.suppress(EOFError, OSError):
        _serve(conn, loads, config, top, latency, threads)


def _serve(conn: Connection, loads: list[tuple[str, Callable[[], InferenceEngine], bool]],
           config: JoinConfig, top: int, latency: bool, threads: int) -> None:
    try:
        torch.set_num_threads(threads)
        candidates = [ReplayCandidate(cid, load(), control=control)
                      for cid, load, control in loads]
        core = _JobCore(config, {}, _REQUESTS, _OUTPUTS, clock=lambda: 0)
        tune_collector(middle=1000)
        run = _Run(core, candidates, top, False, latency)
    except Exception as exc:
        _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
        return
    while True:
        doc, blob = _receive(conn)
        last = doc["last"]
        try:
            profiles = {m: Profile.from_dict(p) for m, p in doc["profiles"].items()}
            reply = _step(core, run, doc["closes"], profiles, _unpack(doc["rows"], blob), last)
        except Exception as exc:
            reply, last = {"error": f"{type(exc).__name__}: {exc}"}, True
        _send(conn, reply)
        if last:
            return


def _step(core: _JobCore, run: _Run, closes: list[int], profiles: dict[str, Profile],
          messages: list[RecordedMessage], last: bool) -> dict[str, Any]:
    shipped = []
    for start in closes:  # the parent closes them: their entries, then forget them
        shipped.append([start, [[key, _counted(e)] for key, e in core.entries_of(start)]])
        core.forget(start, [])
    core.profiles.update(profiles)  # the parent's reference: learn no further
    core.learned = []
    run.batch(messages, close=False)
    reply: dict[str, Any] = {
        "shipped": shipped, "progress": dict(core._progress),
        "open": [s for s, keys in core.windows.items() if keys],
        "candidates": {m: sorted(c) for m, c in core.candidates.items()},
        "learned": core.learned}
    if last:
        reply["run"] = {
            "messages": run.messages, "requests": run.requests, "pairs": run.pairs,
            "dead_lettered": run.dead_lettered,
            "dead_letter_reasons": run.dead_letter_reasons, "errors": run.errors,
            "engine_s": dict(run.engine_s),
            "top": {cid: [[score, rid, [-x for x in where], row]
                          for score, rid, where, row in t.heap]
                    for cid, t in run.top.items()}}
    return reply


def _counted(entry: dict[str, Any]) -> dict[str, Any]:
    """What a window's numbers are made of (``aggregate``, ``exemplars``): an entry without
    the answers' documents and sources, a third of the bytes to send."""
    out = {k: v for k, v in entry.items() if k not in ("live", "c")}
    live = entry.get("live")
    if live is not None:
        out["live"] = {"lat": live["lat"], "err": live["err"], "f": live["f"]}
    out["c"] = {cand: {k: v for k, v in answer.items() if k not in ("o", "src")}
                for cand, answer in entry["c"].items()}
    return out


class _Jobs:
    """The job processes, and what the parent remembers of them."""

    def __init__(self, n: int, candidates: Sequence[ReplayCandidate], config: JoinConfig,
                 top: int, latency: bool) -> None:
        loads = []
        for c in candidates:
            if c.load is None:
                raise ShadowstreamError(
                    f"candidate {c.candidate_id} cannot be loaded in a job process: make it "
                    "with ReplayCandidate.from_spec (or give its load), or use one job")
            loads.append((c.candidate_id, c.load, c.control))
        # Spawned, not forked: a torch that has run here (its thread pools) hangs in a fork.
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, torch.get_num_threads() // n)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        # Started with Ctrl-C ignored (kept across exec, and Python then installs no
        # handler): a Ctrl-C while they import torch stops this process, which ends them,
        # instead of printing a traceback from each.
        main = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for _ in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_job, daemon=True,
                                   args=(child, loads, config, top, latency, threads))
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
        finally:
            if main:
                signal.signal(signal.SIGINT, before)

    def send(self, closes: list[int], profiles: dict[str, Profile],
             messages: list[list[RecordedMessage]], last: bool) -> None:
        references = {m: p.to_dict() for m, p in profiles.items()}
        for conn, mine in zip(self.conns, messages, strict=True):
            heads, blob = _pack(mine)
            _send(conn, {"closes": closes, "profiles": references, "rows": heads,
                         "last": last}, blob)

    def receive(self) -> list[dict[str, Any]]:
        replies = []
        for conn, proc in zip(self.conns, self.procs, strict=True):
            try:
                reply, _ = _receive(conn)
            except (EOFError, OSError):
                proc.join(timeout=5)
                raise ShadowstreamError(f"a replay job (pid {proc.pid}) ended unexpectedly "
                                        f"(exit code {proc.exitcode}); run with --jobs 1 "
                                        "to see why") from None
            if "error" in reply:
                raise ShadowstreamError(f"a replay job failed: {reply['error']}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def replay_jobs(messages: Iterable[RecordedMessage], candidates: Sequence[ReplayCandidate],
                jobs: int, *, join: JoinConfig | None = None, batch: int = 256,
                top: int = 20, source: dict[str, Any] | None = None,
                progress: Callable[[int], None] | None = None,
                latency: bool = False) -> ReplayResult:
    """``replay`` in ``jobs`` processes (see the module docstring): the same report."""
    if jobs < 2:
        raise ShadowstreamError("replay_jobs needs at least 2 jobs (1: use replay)")
    config = replay_config(join, candidates)
    core = JoinCore(config, {}, _REQUESTS, _OUTPUTS, clock=lambda: 0)
    run = _Run(core, candidates, top, False, latency)
    t0 = time.perf_counter()
    workers = _Jobs(jobs, candidates, config, top, latency)
    closer = _Closer(core, run)
    # The closing thread holds the interpreter for long stretches: hand it over sooner to
    # the thread that feeds the jobs (it waits on them, its turns are short).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        parent = _Parent(core, workers, jobs, closer)
        for chunk in batches(messages, batch):
            parent.step(chunk)
            if progress:
                progress(parent.messages)
        parent.finish(run)
    finally:
        sys.setswitchinterval(switch)
        closer.stop()
        workers.close()
    if run.requests == 0 and run.dead_lettered == 0:
        raise ShadowstreamError("no mirrored requests in the input")
    return run.result(time.perf_counter() - t0, source or {})


class _Closer:
    """Closes the windows whose entries the jobs handed over, in order, in a thread: the
    jobs go on with the next batches meanwhile (closing a large window takes seconds)."""

    def __init__(self, core: JoinCore, run: _Run) -> None:
        self.core, self.run = core, run
        self.tasks: queue.Queue[tuple[list[Any], int] | None] = queue.Queue()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="replay-closer", daemon=True)
        self.thread.start()

    def close(self, shipped: list[Any], watermark: int) -> None:
        """Close these windows (at the watermark of when they were due), after those before."""
        self._check()
        if any(shipped):
            self.tasks.put((shipped, watermark))

    def drain(self) -> None:
        """Wait until every window handed over has closed."""
        self.tasks.join()
        self._check()

    def stop(self) -> None:
        self.tasks.put(None)
        self.thread.join(timeout=60)

    def _check(self) -> None:
        if self.failed is not None:
            raise self.failed

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                if self.failed is None:
                    self._close(*task)
            except BaseException as exc:  # raised again in the feeding thread
                self.failed = exc
            finally:
                self.tasks.task_done()
        self.tasks.task_done()

    def _close(self, shipped: list[Any], watermark: int) -> None:
        core = self.core
        for windows in shipped:
            for start, entries in windows:
                keys = core.windows[start]
                for key, entry in entries:
                    core.entries[key] = entry
                    keys.add(key)
        out: list[Outgoing] = []
        core.sweep(watermark, out)
        self.run._collect(out, {})


class _Parent:
    """Feeds the jobs batch by batch and decides what one process would have (see the
    module docstring); the windows close in the ``_Closer``'s thread."""

    def __init__(self, core: JoinCore, jobs: _Jobs, n: int, closer: _Closer) -> None:
        self.core, self.jobs, self.n, self.closer = core, jobs, n, closer
        self.closes: list[int] = []
        self.watermark = 0
        self.sent: set[str] = set(core.profiles)  # references the jobs have
        self.opened: list[int] = []  # windows open in any job after the last batch
        self.messages = 0

    def step(self, chunk: list[RecordedMessage]) -> None:
        """One batch: to the jobs, with the windows to close first, whose entries come
        back with the replies, to the closer; then what this batch tells of the next
        windows."""
        rows: list[list[RecordedMessage]] = [[] for _ in range(self.n)]
        order: dict[tuple[int, int], int] = {}
        for i, m in enumerate(chunk):
            rows[m.partition % self.n].append(m)
            order.setdefault((m.partition, m.offset), i)
        self.messages += len(chunk)
        core = self.core
        fresh = {m: p for m, p in core.profiles.items() if m not in self.sent}
        self.sent.update(fresh)
        self.jobs.send(self.closes, fresh, rows, last=False)
        replies = self.jobs.receive()
        self.closer.close([r["shipped"] for r in replies], self.watermark)
        learned = [item for r in replies for item in r["learned"]]
        known = {model: cands for r in replies for model, cands in r["candidates"].items()
                 if not core.candidates[model].issuperset(cands)}
        if known or any(model not in core.profiles for _, model, _ in learned):
            # The windows handed over are closed with the candidates and reference of
            # when they were due: before these change.
            self.closer.drain()
        for model, cands in known.items():
            core.candidates[model].update(cands)
        for r in replies:
            for tp, ts in r["progress"].items():
                core._advance(tp, ts)
        learned.sort(key=lambda item: order.get(tuple(item[0]), 0))  # stable: in a record's
        # own order
        for _, model, features in learned:
            if model not in core.profiles:
                core._learn_reference(model, features)
        self.watermark = core.watermark
        limit = self.watermark - core.config.grace_ms - core.config.window_ms
        self.opened = sorted({s for r in replies for s in r["open"]})
        self.closes = [s for s in self.opened if s <= limit]

    def finish(self, run: _Run) -> None:
        """Every window still open closes (as ``replay``'s end), and the jobs' totals."""
        self.jobs.send(self.opened, {}, [[] for _ in range(self.n)], last=True)
        replies = self.jobs.receive()
        self.closer.close([r["shipped"] for r in replies], 2**62)
        self.closer.drain()
        _totals(run, [r["run"] for r in replies])


def _totals(run: _Run, runs: list[dict[str, Any]]) -> None:
    for r in runs:
        run.messages += r["messages"]
        run.requests += r["requests"]
        run.pairs += r["pairs"]
        run.dead_lettered += r["dead_lettered"]
        run.dead_letter_reasons.update(r["dead_letter_reasons"])
        for cid, counts in r["errors"].items():
            run.errors[cid].update(counts)
        for cid, seconds in r["engine_s"].items():
            run.engine_s[cid] += seconds
        for cid, heap in r["top"].items():
            for score, rid, where, row in heap:
                run.top[cid].offer(score, rid, tuple(where), row)
