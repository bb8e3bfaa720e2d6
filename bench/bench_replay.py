"""Offline replay's speed, in process and with ``--jobs``, against reading the recording.

The recording is a synthetic service's traffic as ``shadow record`` writes it: mirrored
requests at 1,000 a second over several partitions, in time order, each with the live
answer, a segment, and one request in a hundred answered wrongly. The candidate is the
near-free model (one linear layer over the eight features): what is left is replay's own
cost, the model excluded (its engine time is also subtracted, for the "model excluded"
figure).

The same-run reference is reading the recording: decompressing, parsing and decoding its
messages (``read_recording``), plus parsing every request once (``orjson.loads``): what any
replay must pay before it does any work.

- in process: ``replay()`` over the messages held in memory (the file read is left out);
- from the file, with one job and with ``--jobs`` (``shadow.offline.parallel``): the file
  read included, as ``shadow replay --file`` does; the three reports must be the same
  bytes (checked here).

Run: python -m bench.bench_replay [--events N] [--partitions P] [--per-record K]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import torch
import zstandard
from torch import nn

from bench._common import TARGETS, machine, verdict
from consumers.join import JoinConfig
from schemas.codec import encode_batch
from shadow.offline.recordfile import RecordedMessage, encode_line, header, read_recording
from shadow.offline.replay import ReplayCandidate, replay
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import Candidate, CardAdapter, ModelCard
from shadow.sim.traffic import MODEL_CARD, N_FEATURES, TrafficSpec, build_model, featurize

T0 = 1_800_000_000_000
TOPIC = "bench.requests"


def linear() -> nn.Module:
    """The near-free candidate: what is left is replay's own cost."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 2), nn.Softmax(dim=-1)).eval()


def near_free_engine(max_batch: int = 256) -> InferenceEngine:
    """The near-free candidate's engine (module level: a job process loads it too)."""
    card = CardAdapter(ModelCard.model_validate(MODEL_CARD))
    return InferenceEngine(Candidate("near-free", linear(), card), device="cpu",
                           max_batch=max_batch)


def candidate() -> ReplayCandidate:
    return ReplayCandidate("near-free", near_free_engine(), near_free_engine)


def messages(n: int, partitions: int = 4, per_record: int = 1, rate: float = 1000.0,
             seed: int = 5) -> list[RecordedMessage]:
    """``n`` mirrored requests at ``rate`` a second, round robin over the partitions, in
    records of ``per_record`` events of one partition, in time order."""
    spec = TrafficSpec(seed=seed, disagree=0.01)
    live = build_model(0)
    events = [spec.event(i) for i in range(n)]
    with torch.inference_mode():
        probs = live(torch.tensor([featurize(e.inputs) for e in events])).tolist()
    docs: list[list[dict]] = [[] for _ in range(partitions)]
    out: list[RecordedMessage] = []
    offsets = [0] * partitions
    for i, (e, p) in enumerate(zip(events, probs, strict=True)):
        answer = [round(v, 6) for v in p]
        if e.disagree:
            answer.reverse()
        ts = T0 + int(i * 1000 / rate)
        part = i % partitions
        docs[part].append({
            "schema": "mirror.request/1", "request_id": e.request_id, "model": spec.model,
            "ts": ts, "inputs": e.inputs,
            "live": {"version": "v1", "latency_ms": 1.0 + i % 7 * 0.25,
                     "output": {"kind": "probs", "value": answer}},
            "attrs": {"segment": e.segment}})
        if len(docs[part]) == per_record or i >= n - partitions:
            batch = docs[part]
            value = orjson.dumps(batch[0]) if len(batch) == 1 else encode_batch(batch)
            out.append(RecordedMessage(TOPIC, part, offsets[part], ts,
                                       batch[0]["request_id"].encode(), value))
            offsets[part] += 1
            docs[part] = []
    return out


def write(path: Path, msgs: list[RecordedMessage]) -> None:
    with path.open("wb") as fh, zstandard.ZstdCompressor().stream_writer(fh) as z:
        z.write(header(TOPIC))
        for m in msgs:
            z.write(encode_line(m))


def read_floor(path: Path) -> float:
    """Requests per second of reading the file and parsing each request once."""
    t0 = time.perf_counter()
    n = 0
    for m in read_recording(path):
        doc = orjson.loads(m.value)
        n += len(doc["events"]) if "events" in doc else 1
    return n / (time.perf_counter() - t0)


def in_process(msgs: list[RecordedMessage], join: JoinConfig) -> tuple[float, float, bytes]:
    """(requests/s, requests/s with the engine's time taken out, report bytes)."""
    t0 = time.perf_counter()
    result = replay(iter(msgs), [candidate()], join=join, batch=256)
    seconds = time.perf_counter() - t0
    requests = result.report["requests"]
    engine = result.timing["candidates"]["near-free"]["engine_seconds"]
    return requests / seconds, requests / (seconds - engine), result.json_bytes()


def from_file(path: Path, join: JoinConfig, jobs: int) -> tuple[float, bytes]:
    """(requests/s, report bytes) of replaying the file with ``jobs`` processes, the file
    read included (as ``shadow replay --file``)."""
    t0 = time.perf_counter()
    result = replay(read_recording(path), [candidate()], join=join, batch=256, jobs=jobs)
    return result.report["requests"] / (time.perf_counter() - t0), result.json_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=120_000,
                    help="requests in the recording (default 120000: two minutes at 1000/s)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--per-record", type=int, default=1,
                    help="events per record (1: as any producer; the mirror batches)")
    ap.add_argument("--jobs", type=int, default=2, help="jobs for the --jobs run (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, the median quoted")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--save", type=Path, default=None,
                    help="write the in-process report here (to compare bytes across versions)")
    args = ap.parse_args()
    if (args.events < 1000 or args.partitions < 1 or args.per_record < 1 or args.repeat < 1
            or args.jobs < 2):
        ap.error("--events >= 1000, --jobs >= 2, --partitions, --per-record, --repeat >= 1")
    torch.set_num_threads(args.threads)
    t = TARGETS["replay"]
    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s)")
    msgs = messages(args.events, args.partitions, args.per_record)
    join = JoinConfig()  # the defaults: 60 s windows, 10 s grace, reference of 1000
    print(f"recording: {args.events} requests in {len(msgs)} records over {args.partitions} "
          f"partitions, {args.per_record} event(s) a record, at 1000/s")
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = Path(tmp) / "rec.jsonl.zst"
        write(path, msgs)
        floors, rates, excluded, one, many = [], [], [], [], []
        report = b""
        for _ in range(args.repeat):
            floors.append(read_floor(path))
            rate, without_model, report = in_process(msgs, join)
            rates.append(rate)
            excluded.append(without_model)
            rate, first = from_file(path, join, 1)
            one.append(rate)
            rate, again = from_file(path, join, args.jobs)
            many.append(rate)
            if not report == first == again:
                raise SystemExit("the reports differ: in process, from the file, with --jobs")
    floor, rate, model_excluded = (statistics.median(xs) for xs in (floors, rates, excluded))
    one_job, jobs = statistics.median(one), statistics.median(many)
    if args.save:
        args.save.write_bytes(report)
    print(f"reference, reading the recording: {floor:,.0f} requests/s (median of "
          f"{args.repeat})")
    print(f"replay in process, near-free candidate: {rate:,.0f} requests/s "
          f"({1e6 / rate:.1f} us a request), {rate / floor:.3f} of reading")
    print(f"  model excluded: {model_excluded:,.0f} requests/s")
    print(f"replay of the file, 1 job: {one_job:,.0f} requests/s; {args.jobs} jobs: "
          f"{jobs:,.0f} requests/s ({jobs / one_job:.2f}x); the same report bytes")
    print(verdict("replay in process, model excluded (requests/s, thousands)",
                  model_excluded / 1000, t["in_process_krps_min"], lower_is_better=False))
    cpus = os.cpu_count() or 1
    if cpus <= args.jobs:
        print(f"(no target for --jobs on {cpus} CPUs: the {args.jobs} jobs share them with the "
              "process that reads the recording and closes the windows)")


if __name__ == "__main__":
    main()
