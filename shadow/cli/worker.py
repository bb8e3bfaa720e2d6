"""``shadow worker``: a candidate model answering mirrored requests."""

from __future__ import annotations

import logging
import re

import click

from shadow.cli import options
from shadow.cli.common import err_console, kafka, settings
from shadow.runtime.config import WorkerConfig

# The options' defaults are the settings object's: stated once.
_DEFAULTS = {name: f.default for name, f in WorkerConfig.model_fields.items()}

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _id(value: str) -> str:
    if not _ID.match(value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '.', '_' and '-' (it names "
                                 "a consumer group and labels metrics)")
    return value


@click.command("worker")
@click.option("--candidate", required=True, metavar="MODEL",
              help="TorchScript file (.pt), torch.export archive (.pt2), or "
                   "package.module:factory returning an nn.Module.")
@click.option("--candidate-id", required=True, metavar="ID", callback=lambda _c, _p, v: _id(v),
              help="Name of the candidate in its answers (letters, digits, '.', '_', '-'); "
                   "also names its consumer group.")
@options.model_files()
@options.engine(max_batch=_DEFAULTS["max_batch"])
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=_DEFAULTS["max_wait_ms"],
              show_default=True,
              help="A batch goes to the model when it has --max-batch requests or when this "
                   "long has passed since the first.")
@click.option("--group", default=None,
              help="Consumer group (default <prefix>.shadow.<candidate-id>).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (0: a free one). Default: a free "
                   "port when the local stack runs Prometheus (the worker registers with it), "
                   "else none.")
@click.option("--session-timeout-ms", type=click.IntRange(1000),
              default=_DEFAULTS["session_timeout_ms"],
              show_default=True, help="How soon the group hands a dead worker's partitions "
                                      "to the others.")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A model this candidate shadows (repeatable); requests of other models go "
                   "to dead-letter as unknown. Default: every request.")
@click.option("--control", is_flag=True,
              help="This candidate is a control: a second copy of the live model. Its "
                   "divergence from live is the noise floor; the model's other candidates "
                   "are judged on their excess over it (docs/generative.md).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch intra-op threads for CPU inference (default: torch's choice, one per "
                   "core). Fewer leave cores to Kafka and decoding: on 2 vCPUs one thread "
                   "served 12.1k requests/s where two served 6.9k (docs/benchmarks.md).")
def command(candidate: str, candidate_id: str, weights: tuple[str, ...],
            card: tuple[str, ...], adapter: tuple[str, ...], device: str, dtype: str,
            max_batch: int, max_wait_ms: float, group: str | None, metrics_port: int | None,
            session_timeout_ms: int, models: tuple[str, ...], control: bool,
            threads: int | None) -> None:
    """Run a candidate model on mirrored requests and publish its answers.

    Consumes <prefix>.requests in its own consumer group (several candidates shadow the same
    traffic side by side; several workers of one candidate split the partitions) and writes
    one ShadowOutput per request to <prefix>.outputs. Undecodable requests, requests of a
    model not given with --model, and inputs that do not fit the model's card go to
    <prefix>.deadletter with the reason (the last are also answered with the error).
    SIGTERM or Ctrl-C drains, delivers and commits, then exits.

    \b
    Example:
      shadow worker --candidate shadow.sim.traffic:build_model --candidate-id fraud-v13 \\
          --max-batch 64 --max-wait-ms 10 --threads 1
    """
    from shadow.runtime.engine import InferenceEngine
    from shadow.runtime.models import load_candidate
    from shadow.runtime.worker import ShadowWorker
    from shadow.stack import local_prometheus
    from shadow.stack.procs import free_port
    from shadow.stack.prometheus import registered

    logging.getLogger("shadowstream.worker").setLevel(logging.INFO)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    s = settings()
    files = options.files_by_candidate([candidate_id], weights, card, adapter)[candidate_id]
    loaded = load_candidate(candidate, weights=files.weights, card=files.card,
                            adapter=files.adapter)
    bootstrap = kafka(s)
    prometheus = local_prometheus(s)
    if metrics_port == 0 or (metrics_port is None and prometheus is not None):
        metrics_port = free_port()
    config = WorkerConfig(candidate_id=candidate_id,
                          max_batch=max_batch, max_wait_ms=max_wait_ms, group=group,
                          metrics_port=metrics_port, session_timeout_ms=session_timeout_ms,
                          models=models, control=control)
    engine = InferenceEngine(loaded, device=device, dtype=dtype, max_batch=max_batch)
    shadow_worker = ShadowWorker(s, bootstrap, config, engine)
    shadow_worker.install_signal_handlers()
    shadow_worker.check_topics()  # a missing topic is the one line, before any banner
    where = f", metrics on http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""
    role = " (control)" if control else ""
    err_console.print(f"worker {candidate_id}{role}: {candidate} on {engine.device} ({dtype}), "
                      f"group {config.group_id(s)}, max batch {max_batch}, "
                      f"max wait {max_wait_ms:g} ms{where}", highlight=False)
    labels = {"prefix": s.topic_prefix, "candidate": candidate_id}
    with registered(prometheus if metrics_port else None, "worker",
                    f"127.0.0.1:{metrics_port}", labels):
        stats = shadow_worker.run()
    reasons = f"; top reasons: {stats.top_reasons()}" if stats.reasons else ""
    err_console.print(f"worker {candidate_id}: stopped after {stats.answered} answered, "
                      f"{stats.errors} answered with an error, {stats.dead_lettered} not "
                      f"answered; {stats.dead_letters} dead letters written{reasons}",
                      highlight=False)
