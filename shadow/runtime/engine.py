"""The inference engine: batches of events' inputs in, one answer per row out. No Kafka here.

The shadow worker and offline replay run this same code. A batch goes through two steps:

- ``prepare`` (host): the adapter collates the rows into tensors; on CUDA they go to pinned
  memory and are copied to the device on a side stream without blocking, so the copy of the
  next batch overlaps the compute of the current one;
- ``run`` (device): forward under ``torch.inference_mode``, results back to the host as fp32,
  one answer per row.

Failures are answers, not exceptions: a batch that raises is split in halves until the rows
that fail are alone and get their error; a non-finite output is an error for its row; CUDA
out-of-memory halves the batch size for good and retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import torch

from shadow.exceptions import ShadowstreamError
from shadow.runtime.models import Candidate

Dtype = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16,
                                  "fp16": torch.float16}
ErrorKind = Literal["input", "model", "non_finite", "oom"]
"""input: the row does not fit the model's declared interface (collate failed for it alone)."""


class DeviceError(ShadowstreamError):
    """The requested device does not exist here."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec}: no CUDA device is available (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise DeviceError(f"{spec}: devices are auto, cpu or cuda[:N]")
    return device


class Answer(NamedTuple):
    """One row's answer: an output document, or the error that took its place. A tuple, not
    a frozen dataclass: one is made for every request, and this is four times cheaper."""

    output: dict[str, Any] | None
    error: str | None
    latency_ms: float
    error_kind: ErrorKind | None = None


class Observer(Protocol):
    """Receives the engine's figures (the worker turns them into Prometheus metrics)."""

    def batch(self, size: int, seconds: float) -> None: ...

    def error(self, kind: ErrorKind, rows: int) -> None: ...


class _Quiet:
    def batch(self, size: int, seconds: float) -> None:
        pass

    def error(self, kind: ErrorKind, rows: int) -> None:
        pass


Forwarded = list[tuple[int, int, "torch.Tensor | Exception", float]]
"""``forward``'s results: per slice its rows (start, stop), the model's result or what it
raised, and the seconds it took."""


@dataclass
class Prepared:
    """A batch collated (and, on CUDA, on its way to the device)."""

    inputs: Sequence[Mapping[str, Any]]
    tensors: tuple[torch.Tensor, ...] | None = None
    ready: Any = None  # torch.cuda.Event once the copy is queued
    error: Exception | None = None  # collating the whole batch raised: it gets narrowed


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc))


class InferenceEngine:
    """Runs one candidate on batches of inputs. ``run``/``infer`` from one thread at a time;
    ``prepare`` may run on another (that is how the copies overlap)."""

    def __init__(self, candidate: Candidate, *, device: str = "auto", dtype: Dtype = "fp32",
                 max_batch: int = 64, overlap: bool = True,
                 observer: Observer | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.candidate = candidate
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        self.max_batch = max_batch
        self.observer: Observer = observer or _Quiet()
        self._cuda = self.device.type == "cuda"
        self.overlap = overlap and self._cuda
        self._copy_stream = torch.cuda.Stream(self.device) if self.overlap else None
        self.module = candidate.module.to(self.device)
        if self.dtype != torch.float32:
            self.module = self.module.to(self.dtype)
        self._lock = threading.Lock()

    # -- the two steps ---------------------------------------------------------------------

    def prepare(self, inputs: Sequence[Mapping[str, Any]]) -> Prepared:
        """Collate on the host; on CUDA with overlap, queue the copy to the device."""
        try:
            tensors = self.candidate.adapter.collate(inputs)
        except Exception as exc:
            return Prepared(inputs, error=exc)
        if self._copy_stream is None:
            return Prepared(inputs, tensors)
        with torch.cuda.stream(self._copy_stream):
            moved = tuple(self._to_device(t.pin_memory()) for t in tensors)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return Prepared(inputs, moved, ready)

    def run(self, prepared: Prepared) -> list[Answer]:
        """Answer every row of a prepared batch: ``answer(prepared, forward(prepared))``."""
        return self.answer(prepared, self.forward(prepared))

    def forward(self, prepared: Prepared) -> Forwarded | None:
        """The model on a prepared batch, a slice of at most max_batch rows at a time (the
        collated tensors sliced, not collated again), and no Python per row: the step a
        worker runs on its inference thread. None when the batch must go the whole way
        through ``infer`` (it did not collate, or an adapter's tensors are not batch-first)."""
        inputs, tensors = prepared.inputs, prepared.tensors
        n = len(inputs)
        if n == 0 or prepared.error is not None or tensors is None:
            return None
        if n > self.max_batch and any(t.dim() == 0 or t.shape[0] != n for t in tensors):
            return None
        if prepared.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(prepared.ready)
            for t in tensors:  # the caching allocator must not reuse them early
                t.record_stream(torch.cuda.current_stream(self.device))
        out: Forwarded = []
        i = 0
        while i < n:
            size = self.max_batch  # an OOM shrinks it for the slices still to come
            t0 = time.perf_counter()
            part = tensors if n <= size else tuple(t[i:i + size] for t in tensors)
            stop = min(n, i + size)
            try:
                result: torch.Tensor | Exception = self._forward(part)
            except Exception as exc:
                result = exc
            out.append((i, stop, result, time.perf_counter() - t0))
            i = stop
        return out

    def answer(self, prepared: Prepared, forwarded: Forwarded | None) -> list[Answer]:
        """The answers of ``forward``'s results (a slice that raised is narrowed down to its
        failing rows); with None, the whole way through ``infer``."""
        inputs = prepared.inputs
        if not inputs:
            return []
        if forwarded is None:
            if prepared.error is not None:
                return self._recover(inputs, prepared.error, time.perf_counter(), "input")
            return self.infer(inputs)
        out: list[Answer] = []
        for start, stop, result, seconds in forwarded:
            rows = inputs[start:stop]
            t0 = time.perf_counter() - seconds  # as if the answers followed the model at once
            if isinstance(result, Exception):
                out.extend(self._recover(rows, result, t0))
                continue
            try:
                out.extend(self._answers(rows, result, t0, seconds))
            except Exception as exc:
                out.extend(self._recover(rows, exc, t0))
        return out

    def infer(self, inputs: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Prepare and run in one go, in chunks of ``max_batch``, narrowing failures down."""
        out: list[Answer] = []
        i = 0
        while i < len(inputs):
            chunk = inputs[i:i + self.max_batch]
            out.extend(self._narrow(chunk))
            i += len(chunk)
        return out

    def map(self, batches: Iterable[Sequence[Mapping[str, Any]]]) -> Iterator[list[Answer]]:
        """Answers per batch, in order; the next batch is prepared while this one runs."""
        with ThreadPoolExecutor(1, thread_name_prefix="engine-prepare") as pool:
            pending = None
            for batch in batches:
                nxt = pool.submit(self.prepare, batch)
                if pending is not None:
                    yield self.run(pending.result())
                pending = nxt
            if pending is not None:
                yield self.run(pending.result())

    # -- internals ---------------------------------------------------------------------------

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype if t.is_floating_point() else t.dtype
        return t.to(self.device, dtype=dtype, non_blocking=self._cuda)

    def _placed(self, t: torch.Tensor) -> bool:
        return t.device == self.device and (not t.is_floating_point() or t.dtype == self.dtype)

    def _forward(self, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.inference_mode():
            args = tuple(t if self._placed(t) else
                         self._to_device(t.pin_memory() if self._cuda else t) for t in tensors)
            result = self.module(*args)
            if isinstance(result, tuple | list):
                result = result[0]
            return result.float().cpu()

    def _answers(self, inputs: Sequence[Mapping[str, Any]], result: torch.Tensor,
                 t0: float, seconds: float | None = None) -> list[Answer]:
        """``seconds``: the model's time when the answers are built later (by ``answer``);
        else the time since ``t0``."""
        n = len(inputs)
        if result.shape[0] != n:
            raise ValueError(f"the model returned {result.shape[0]} rows for {n} inputs")
        all_finite = bool(torch.isfinite(result).all())
        docs = self.candidate.adapter.answers(result)
        if len(docs) != n:
            raise ValueError(f"the adapter returned {len(docs)} answers for {n} rows")
        if seconds is None:
            seconds = time.perf_counter() - t0
        self.observer.batch(n, seconds)
        ms = seconds * 1000
        if all_finite:  # the common case: no per-row check
            return [Answer(doc, None, ms) for doc in docs]
        finite = torch.isfinite(result.reshape(n, -1)).all(dim=1).tolist()
        self.observer.error("non_finite", n - sum(finite))
        return [Answer(doc, None, ms) if ok
                else Answer(None, "non-finite output (NaN or Inf)", ms, "non_finite")
                for doc, ok in zip(docs, finite, strict=True)]

    def _narrow(self, inputs: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Run a batch; when it raises, split it until the failing rows stand alone."""
        t0 = time.perf_counter()
        try:
            tensors = self.candidate.adapter.collate(inputs)
        except Exception as exc:
            return self._recover(inputs, exc, t0, "input")
        try:
            return self._answers(inputs, self._forward(tensors), t0)
        except Exception as exc:
            return self._recover(inputs, exc, t0)

    def _recover(self, inputs: Sequence[Mapping[str, Any]], exc: Exception,
                 t0: float, stage: ErrorKind = "model") -> list[Answer]:
        """After a batch raised: smaller batches on OOM, else halves until the failing rows
        stand alone and get the error as their answer."""
        n = len(inputs)
        oom = _is_oom(exc)
        if oom and n > 1:
            self._shrink(n)
            return self.infer(inputs)  # in chunks of the new, smaller size
        if n == 1:
            kind: ErrorKind = "oom" if oom else stage
            self.observer.error(kind, 1)
            ms = (time.perf_counter() - t0) * 1000
            return [Answer(None, f"{type(exc).__name__}: {exc}"[:1000], ms, kind)]
        half = n // 2
        return self._narrow(inputs[:half]) + self._narrow(inputs[half:])

    def _shrink(self, n: int) -> None:
        self.observer.error("oom", n)
        with self._lock:
            self.max_batch = max(1, min(self.max_batch, n) // 2)
        if self._cuda:
            torch.cuda.empty_cache()
