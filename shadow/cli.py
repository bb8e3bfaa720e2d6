"""The `shadow` command line."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadow.exceptions import ShadowstreamError
from shadow.settings import Settings

console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    """Turns our errors into one clear line on stderr and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShadowstreamError as exc:
            # One line, never wrapped, and the message is never read as rich markup.
            err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)),
                              soft_wrap=True, highlight=False)
            sys.exit(1)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ShadowstreamError(f"invalid settings (SHADOW_* or shadow.toml): {exc}") from None


def _print_json(obj: Any) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("shadowstream"), prog_name="shadowstream")
@click.option("-v", "--verbose", is_flag=True, help="Also show the Kafka clients' warnings.")
def main(verbose: bool) -> None:
    """shadowstream: shadow-test candidate ML models on mirrored production traffic.

    Settings come from SHADOW_* environment variables or ./shadow.toml
    (SHADOW_KAFKA_BOOTSTRAP, SHADOW_REDIS_URL, SHADOW_TOPIC_PREFIX, ...).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # librdkafka warns about transient states (a broker still loading its coordinator,
        # a reconnect) that it retries by itself; errors still show.
        logging.getLogger("shadowstream.kafka").setLevel(logging.ERROR)


# -- stack ------------------------------------------------------------------------------------

@main.group(cls=_Group)
def stack() -> None:
    """Run a local Kafka, Redis and Prometheus (no Docker needed)."""


@stack.command("up")
@click.option("--prometheus", "with_prometheus", is_flag=True, help="Also start Prometheus.")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as JSON.")
def stack_up(with_prometheus: bool, as_json: bool) -> None:
    """Start the servers that are not running yet (idempotent).

    Kafka 3.9.1 (KRaft, jars from Maven Central on first use), redis-server and, with
    --prometheus, Prometheus, all on free loopback ports. Servers set through
    SHADOW_KAFKA_BOOTSTRAP / SHADOW_REDIS_URL / SHADOW_PROMETHEUS_URL are used instead.
    With SHADOW_STACK_SECURE=1 Kafka also opens a SASL_SSL listener (SCRAM-SHA-512 over
    TLS) and Redis admits only an ACL user; the CA and passwords are in credentials_dir.
    """
    from shadow.stack import Stack

    t0 = time.monotonic()
    with err_console.status("starting the stack...", spinner="dots"):
        endpoints = Stack(_settings()).up(with_prometheus=with_prometheus)
    if as_json:
        _print_json(endpoints.as_dict())
        return
    for key, value in endpoints.as_dict().items():
        console.print(f"{key:17} {value or '-'}")
    err_console.print(f"ready in {time.monotonic() - t0:.1f}s")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def stack_status(as_json: bool) -> None:
    """Say which servers run, where, and where their logs are."""
    from shadow.stack import Stack

    rows = Stack(_settings()).status()
    if as_json:
        _print_json([r.__dict__ for r in rows])
        return
    table = Table("server", "state", "url", "pid", "log")
    for r in rows:
        table.add_row(r.name, r.state, r.url or "", str(r.pid or ""), r.log or "")
    console.print(table)


@stack.command("down")
def stack_down() -> None:
    """Stop every server the stack started and delete its data."""
    from shadow.stack import Stack

    stopped = Stack(_settings()).down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("fetch")
def stack_fetch() -> None:
    """Resolve the Kafka broker's jars from Maven Central into the cache (done by `up` too)."""
    from shadow.stack import kafka

    s = _settings()
    with err_console.status(f"resolving Kafka {s.kafka_version} with Maven...", spinner="dots"):
        libs = kafka.jars(s.cache_dir, s.kafka_version)
    console.print(f"Kafka {s.kafka_version} jars: {libs}")


# -- topics -----------------------------------------------------------------------------------

@main.group(cls=_Group)
def topics() -> None:
    """Create and inspect the pipeline's topics."""


@topics.command("create")
@click.option("--partitions", type=click.IntRange(1, 1024), default=None,
              help="Partitions of requests/outputs/pairs/deadletter (default: SHADOW_PARTITIONS).")
def topics_create(partitions: int | None) -> None:
    """Create <prefix>.requests, .outputs, .pairs, .windows and .deadletter (idempotent).

    Refuses, and says why, when existing topics have other partition counts.
    """
    from shadow import clients
    from shadow.stack import resolve_kafka
    from shadow.topics import create_topics, topic_specs

    s = _settings()
    specs = topic_specs(s, partitions)
    plan = create_topics(clients.admin(s, resolve_kafka(s)), specs)
    for spec in specs:
        how = "created" if spec in plan.create else "exists"
        console.print(f"{spec.name:24} {spec.partitions:4} partitions  {how}")


# -- traffic ----------------------------------------------------------------------------------

@main.command()
@click.option("--rate", type=click.FloatRange(min=0.1), required=True,
              help="Requests per second.")
@click.option("--duration", type=click.FloatRange(min=0.1), required=True, help="Seconds to run.")
@click.option("--model", default="fraud-scorer", show_default=True, help="Model name.")
@click.option("--shift-at", type=click.FloatRange(min=0), default=None,
              help="Seconds after which the input distribution shifts (drift).")
@click.option("--disagree", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of live answers made to differ from what the model computes.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed: same seed, same requests and answers.")
@click.option("--truth", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write each request's ground truth (disagree, shifted) as JSON lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def traffic(rate: float, duration: float, model: str, shift_at: float | None, disagree: float,
            seed: int, truth: str | None, as_json: bool) -> None:
    """Run a synthetic service with a small torch model and mirror its requests.

    Each request is answered by the live model and published to <prefix>.requests through the
    mirror client, paced at --rate. Shows its rate while it runs.
    """
    import torch
    from prometheus_client import CollectorRegistry

    from producers import Mirror, MirrorConfig
    from producers.traffic import TrafficService, TrafficSpec
    from shadow.stack import resolve_kafka

    # One small request at a time: torch's thread pool would spin between requests and burn
    # a core that the pipeline under test needs (a 150/s generator took 80 % of one).
    torch.set_num_threads(1)
    s = _settings()
    bootstrap = resolve_kafka(s)
    extra = {k: v for k, v in s.confluent_config(bootstrap).items() if k != "bootstrap.servers"}
    config = MirrorConfig(bootstrap=bootstrap, model=model, topic=s.topic("requests"),
                          live_version="live-v1", output_kind="probs", kafka=extra)
    mirror = Mirror(config, CollectorRegistry())
    service = TrafficService(mirror, TrafficSpec(model, seed, disagree), keep_truth=bool(truth))

    def show(st) -> None:
        if not as_json:
            err_console.print(f"{st.seconds:6.1f}s  sent {st.sent:8d}  {st.rate:8.0f} req/s  "
                              f"disagreed {st.disagreed}  shifted {st.shifted}", highlight=False)

    try:
        service.run(rate, duration, shift_at, on_tick=show)
    finally:
        left = mirror.close(timeout_s=30)
    st, counts = service.stats, mirror.metrics.snapshot()
    if truth:
        with open(truth, "wb") as fh:
            for rid, dis, shifted in st.truth:
                fh.write(orjson.dumps({"request_id": rid, "disagree": dis, "shifted": shifted}))
                fh.write(b"\n")
    summary = {
        "model": model, "seed": seed, "sent": st.sent, "seconds": round(st.seconds, 3),
        "rate": round(st.rate, 1), "disagreed": st.disagreed, "shifted": st.shifted,
        "first_shifted_index": st.first_shifted_index,
        "published": counts.published, "dropped": counts.dropped,
        "delivery_failed": counts.delivery_failed, "undelivered_at_close": left,
    }
    if as_json:
        _print_json(summary)
    else:
        for key, value in summary.items():
            console.print(f"{key:20} {value}", highlight=False)
    if counts.published != st.sent:
        raise ShadowstreamError(f"{st.sent - counts.published} of {st.sent} requests were not "
                                "delivered to Kafka (see dropped / delivery_failed)")


# -- worker -----------------------------------------------------------------------------------

@main.command()
@click.option("--candidate", required=True, metavar="MODEL",
              help="TorchScript file (.pt), torch.export archive (.pt2), or "
                   "package.module:factory returning an nn.Module.")
@click.option("--candidate-id", required=True, metavar="ID",
              help="Name of the candidate in its answers; also names its consumer group.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="State dict for a factory: .pt (loaded with "
                                 "weights_only=True) or .safetensors.")
@click.option("--card", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Model card (TOML or JSON): features in, output kind out. "
                                 "Default: MODEL.card.toml, or MODEL_CARD beside the factory.")
@click.option("--adapter", default=None, metavar="package.module:name",
              help="Custom pre/post-processing (shadow.models.Adapter) instead of a card.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True)
@click.option("--max-batch", type=click.IntRange(1, 65536), default=64, show_default=True,
              help="A batch goes to the model when it has this many requests...")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="...or when this long has passed since the first.")
@click.option("--group", default=None,
              help="Consumer group (default <prefix>.shadow.<candidate-id>).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on this port.")
@click.option("--session-timeout-ms", type=click.IntRange(1000), default=10_000,
              show_default=True, help="How soon the group hands a dead worker's partitions "
                                      "to the others.")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A model this candidate shadows (repeatable); requests of other models go "
                   "to dead-letter as unknown. Default: every request.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch intra-op threads for CPU inference (default: torch's choice, one per "
                   "core). Fewer leave cores to Kafka and decoding: on 2 vCPUs one thread "
                   "served 12.1k requests/s where two served 6.9k (docs/benchmarks.md).")
def worker(candidate: str, candidate_id: str, weights: Path | None, card: Path | None,
           adapter: str | None, device: str, dtype: str, max_batch: int, max_wait_ms: float,
           group: str | None, metrics_port: int | None, session_timeout_ms: int,
           models: tuple[str, ...], threads: int | None) -> None:
    """Run a candidate model on mirrored requests and publish its answers.

    Consumes <prefix>.requests in its own consumer group (several candidates shadow the same
    traffic side by side; several workers of one candidate split the partitions) and writes
    one ShadowOutput per request to <prefix>.outputs. Undecodable requests, requests of a
    model not given with --model, and inputs that do not fit the model's card go to
    <prefix>.deadletter with the reason (the last are also answered with the error).
    SIGTERM or Ctrl-C drains, delivers and commits, then exits.
    """
    from shadow.engine import InferenceEngine
    from shadow.models import load_candidate
    from shadow.stack import resolve_kafka
    from shadow.worker import ShadowWorker, WorkerConfig

    logging.getLogger("shadowstream.worker").setLevel(logging.INFO)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    s = _settings()
    loaded = load_candidate(candidate, weights=weights, card=card, adapter=adapter)
    bootstrap = resolve_kafka(s)
    config = WorkerConfig(candidate_id=candidate_id, device=device, dtype=dtype,
                          max_batch=max_batch, max_wait_ms=max_wait_ms, group=group,
                          metrics_port=metrics_port, session_timeout_ms=session_timeout_ms,
                          models=models)
    engine = InferenceEngine(loaded, device=device, dtype=dtype, max_batch=max_batch)
    shadow_worker = ShadowWorker(s, bootstrap, config, engine)
    shadow_worker.install_signal_handlers()
    err_console.print(f"worker {candidate_id}: {candidate} on {engine.device} ({dtype}), "
                      f"group {config.group_id(s)}, max batch {max_batch}, "
                      f"max wait {max_wait_ms} ms", highlight=False)
    stats = shadow_worker.run()
    err_console.print(f"worker {candidate_id}: stopped after {stats.answered} answered, "
                      f"{stats.errors} errors, {stats.dead_lettered} dead-lettered",
                      highlight=False)


# -- join -------------------------------------------------------------------------------------

@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the app keeps its table store (default: <state dir>/join).")
@click.option("--web-port", type=click.IntRange(1, 65535), default=6066, show_default=True,
              help="Port of the app's web server; Prometheus metrics at /metrics.")
@click.option("--window-s", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
              help="Size of the tumbling event-time windows.")
@click.option("--grace-s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Event time a window waits after its end for late answers (the TTL of "
                   "an unmatched side).")
@click.option("--reference-size", type=click.IntRange(min=10), default=1000,
              show_default=True, help="Requests per model that make the drift reference.")
@click.option("--profile", "profile_file", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path),
              default=None, help="Drift reference from `shadow profile build` instead.")
@click.option("--tolerances", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML file of comparison tolerances per model.")
@click.option("--expect", multiple=True, metavar="MODEL=CANDIDATE",
              help="A candidate expected to answer a model's requests (repeatable); a request "
                   "it never answers counts as unmatched even before it sent anything.")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False,
                                                     path_type=Path),
              default=None, help="TOML file of alert rules (default: the shipped rules).")
@click.option("--no-redis", is_flag=True, help="Do not send alerts to Redis.")
@click.option("--idle-close-s", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="With no event for this long, event time runs on "
                                      "with the clock and closes the windows it passes.")
def join(data_dir: Path | None, web_port: int, window_s: float, grace_s: float,
         reference_size: int, profile_file: Path | None, tolerances: Path | None,
         expect: tuple[str, ...], rules_file: Path | None, no_redis: bool,
         idle_close_s: float) -> None:
    """Join live and shadow answers per request; emit pairs and closed windows.

    A Faust app with one agent over <prefix>.requests and <prefix>.outputs. Writes one
    DivergencePair per request and candidate to <prefix>.pairs, a WindowSummary per closed
    window, model and candidate (and segment) to <prefix>.windows, and what it cannot
    process to <prefix>.deadletter. SIGTERM or Ctrl-C stops it after a commit.
    """
    from consumers.app import JoinAppConfig, build_app, run_app
    from consumers.compare import Tolerances
    from consumers.join import JoinConfig
    from consumers.rules import RuleSet
    from shadow.stack import resolve_endpoints

    logging.getLogger("shadowstream.join").setLevel(logging.INFO)
    s = _settings()
    candidates: dict[str, tuple[str, ...]] = {}
    for item in expect:
        model, sep, cand = item.partition("=")
        if not (sep and model and cand):
            raise click.BadParameter(f"{item!r}: expected MODEL=CANDIDATE", param_hint="--expect")
        candidates[model] = (*candidates.get(model, ()), cand)
    try:
        tols = Tolerances.from_file(tolerances) if tolerances else Tolerances()
    except ValueError as exc:
        raise ShadowstreamError(f"tolerances: {exc}") from None
    rules = RuleSet.from_file(rules_file) if rules_file else RuleSet()
    config = JoinConfig(window_ms=int(window_s * 1000), grace_ms=int(grace_s * 1000),
                        reference_size=reference_size, candidates=candidates, tolerances=tols,
                        rules=rules,
                        profiles=_load_profiles(profile_file) if profile_file else {})
    endpoints = resolve_endpoints(s)
    app_config = JoinAppConfig(join=config, data_dir=data_dir or s.state_dir / "join",
                               web_port=web_port, idle_close_s=idle_close_s,
                               redis_url=None if no_redis else endpoints.redis_url)
    app, _ = build_app(s, endpoints.kafka_bootstrap, app_config)
    err_console.print(f"join: {s.topic('requests')} + {s.topic('outputs')} -> pairs, windows "
                      f"of {window_s:g} s (grace {grace_s:g} s), store {app.conf.store}, "
                      f"metrics on http://127.0.0.1:{web_port}/metrics", highlight=False)
    run_app(app)


def _load_profiles(path: Path) -> dict[str, Any]:
    from consumers.drift import Profile

    try:
        doc = orjson.loads(path.read_bytes())
        return {model: Profile.from_dict(p) for model, p in doc["models"].items()}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ShadowstreamError(f"{path}: not a profile file ({exc})") from None


# -- record -----------------------------------------------------------------------------------

@main.command("record")
@click.option("--topic", required=True, help="The topic to record (any topic).")
@click.option("--from", "start", required=True, metavar="POS",
              help="Start: an offset (1234), an ISO time (2026-11-22T10:00:00Z), epoch ms "
                   "(@1763798400000) or 'beginning'.")
@click.option("--to", "end", required=True, metavar="POS",
              help="End, excluded: same forms as --from, or 'end' (the end when it starts).")
@click.option("--partitions", default=None, metavar="P,P,...",
              help="Only these partitions (default: all).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The recording to write (zstd JSON lines).")
@click.option("--force", is_flag=True, help="Overwrite an existing complete recording.")
def record_cmd(topic: str, start: str, end: str, partitions: str | None, output: Path,
               force: bool) -> None:
    """Record a time or offset range of a topic to a compressed file.

    Keeps each message's topic, partition, offset, timestamp, key and value (exact bytes).
    Interrupted? Run the same command again: it resumes from the last checkpoint.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from shadow.recording import parse_position, record
    from shadow.stack import resolve_kafka

    s = _settings()
    try:
        parts = [int(p) for p in partitions.split(",")] if partitions else None
    except ValueError:
        raise click.BadParameter(f"{partitions!r}: expected P,P,...",
                                 param_hint="--partitions") from None
    bootstrap = resolve_kafka(s)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err_console) as bar:
        task = bar.add_task(f"recording {topic}", total=None)
        stats = record(s, bootstrap, topic, parse_position(start), parse_position(end), output,
                       partitions=parts, force=force,
                       progress=lambda n, total: bar.update(task, completed=n, total=total))
    resumed = f" (resumed after {stats.resumed_from})" if stats.resumed_from else ""
    err_console.print(f"recorded {stats.records} messages of {topic} from "
                      f"{len(stats.partitions)} partition(s){resumed} -> {output}",
                      highlight=False)


# -- replay -----------------------------------------------------------------------------------

@main.command("replay")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A recording made by `shadow record`.")
@click.option("--topic", default=None, help="Or read this topic directly (with --from/--to).")
@click.option("--from", "start", default=None, metavar="POS", help="With --topic: start.")
@click.option("--to", "end", default=None, metavar="POS", help="With --topic: end (excluded).")
@click.option("--candidate", "candidates", multiple=True,
              metavar="[ID=]MODEL", help="A candidate (repeatable): TorchScript, .pt2 or "
                                         "package.module:factory, optionally named ID=...")
@click.option("--to-topic", default=None, metavar="T2",
              help="Instead of judging here, re-publish the requests to this topic for the "
                   "live pipeline.")
@click.option("--rate", type=click.FloatRange(min=0.001), default=None,
              help="With --to-topic: messages per second (default: as fast as possible).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True)
@click.option("--max-batch", type=click.IntRange(1, 65536), default=256, show_default=True)
@click.option("--window-s", type=click.FloatRange(min=0.001), default=60.0, show_default=True)
@click.option("--reference-size", type=click.IntRange(min=10), default=1000,
              show_default=True, help="Requests per model that make the drift reference.")
@click.option("--tolerances", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML file of comparison tolerances per model.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the report as JSON (same bytes for the same input).")
@click.option("--report", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write a self-contained HTML report.")
def replay_cmd(file_: Path | None, topic: str | None, start: str | None, end: str | None,
               candidates: tuple[str, ...], to_topic: str | None, rate: float | None,
               device: str, dtype: str, max_batch: int,
               window_s: float, reference_size: int, tolerances: Path | None,
               json_out: Path | None, html_out: Path | None) -> None:
    """Replay recorded requests through candidates and judge them like the live pipeline.

    Runs in-process with the worker's inference engine and the join's comparators, windows
    and drift code; several candidates side by side in one pass.
    """

    from consumers.compare import Tolerances
    from consumers.join import JoinConfig
    from shadow.engine import InferenceEngine
    from shadow.models import load_candidate
    from shadow.recording import parse_position, read_range, read_recording
    from shadow.replay import ReplayCandidate, replay
    from shadow.stack import resolve_kafka

    if (file_ is None) == (topic is None):
        raise click.UsageError("give either --file or --topic (with --from and --to)")
    if topic is not None and (start is None or end is None):
        raise click.UsageError("--topic needs --from and --to")
    if not candidates and to_topic is None:
        raise click.UsageError("give at least one --candidate (or --to-topic)")
    s = _settings()
    loaded = []
    for spec in candidates:
        cid, sep, model = spec.partition("=")
        if not sep or ":" in cid or "/" in cid:  # no ID= prefix: name it after the model
            cid, model = _candidate_name(spec), spec
        engine = InferenceEngine(load_candidate(model), device=device, dtype=dtype,
                                 max_batch=max_batch)
        loaded.append(ReplayCandidate(cid, engine))
    tols = Tolerances.from_file(tolerances) if tolerances else Tolerances()
    join = JoinConfig(window_ms=int(window_s * 1000), reference_size=reference_size,
                      tolerances=tols)
    if topic is not None:
        messages = read_range(s, resolve_kafka(s), topic, parse_position(start or ""),
                              parse_position(end or ""))
        source: dict[str, Any] = {"topic": topic, "from": start, "to": end}
    else:
        assert file_ is not None
        messages = read_recording(file_)
        source = {"file": file_.name}
    if to_topic is not None:
        _republish(s, messages, to_topic, rate)
        return
    with err_console.status("replaying...", spinner="dots") as status:
        result = replay(messages, loaded, join=join, batch=max_batch,
                        source=source, progress=lambda n: status.update(f"replayed {n}"))
    if json_out:
        json_out.write_bytes(result.json_bytes())
    if html_out:
        from shadow.report import html_report

        html_out.write_text(html_report(result))
    console.print(_replay_table(result))
    console.print(f"{result.report['requests']} requests in {result.timing['seconds']:.1f} s "
                  f"({result.timing['requests_per_s']:,.0f}/s), "
                  f"{result.report['dead_lettered']} dead-lettered", highlight=False)


def _republish(s: Settings, messages: Iterable[Any], topic: str, rate: float | None) -> None:
    from producers.republish import republish
    from shadow import clients
    from shadow.stack import resolve_kafka

    producer = clients.producer(s, resolve_kafka(s))
    with err_console.status(f"re-publishing to {topic}...", spinner="dots") as status:
        sent = republish(((m.key, m.value) for m in messages), producer, topic,
                         rate=rate, progress=lambda n: status.update(f"re-published {n}"))
    err_console.print(f"re-published {sent} messages to {topic}"
                      f"{f' at {rate:g}/s' if rate else ''}", highlight=False)


def _candidate_name(spec: str) -> str:
    return spec.rsplit(":", 1)[-1] if ":" in spec else Path(spec).stem


def _replay_table(result: Any) -> Table:
    table = Table("candidate", "model", "requests", "pairs", "coverage", "disagree",
                  "div p50", "div p99", "max PSI", "engine ms/req",
                  title="replay", title_justify="left")
    for cid, cand in result.report["candidates"].items():
        timing = result.timing["candidates"][cid]
        for model, rep in cand["models"].items():
            o = rep["overall"]
            psi = max((d.get("psi", 0.0) for d in o.get("drift", {}).values()), default=None)
            table.add_row(cid, model, str(o["requests"]), str(o["pairs"]),
                          _fmt(o.get("coverage")), _fmt(o.get("disagreement_rate")),
                          _fmt(o["divergence"].get("p50")), _fmt(o["divergence"].get("p99")),
                          _fmt(psi), f"{timing['ms_per_request']:.3f}")
    return table


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


# -- verdict ----------------------------------------------------------------------------------

@main.command("verdict")
@click.option("--replay", "replay_json", type=click.Path(exists=True, dir_okay=False,
                                                          path_type=Path),
              default=None, help="A replay's JSON report (`shadow replay --json`).")
@click.option("--live", is_flag=True, help="Judge the closed windows on <prefix>.windows.")
@click.option("--candidate", default=None, help="Which candidate (needed when there are "
                                                "several).")
@click.option("--model", default=None, help="Which model (needed when there are several).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              default=None, help="TOML: min_windows, min_pairs, alpha, [[metrics]].")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verdict_cmd(replay_json: Path | None, live: bool, candidate: str | None,
                model: str | None, config_file: Path | None, as_json: bool) -> None:
    """PROMOTE (exit 0), HOLD (1) or ROLLBACK (2), with the reason for each metric.

    Per metric, the candidate's per-window values against the live model's (Mann-Whitney U,
    then an effect-size bound), or against a limit; critical metrics decide alone.
    """
    from consumers.verdict import JudgeConfig, judge

    if bool(replay_json) == live:
        raise click.UsageError("give either --replay FILE or --live")
    config = JudgeConfig.from_file(config_file) if config_file else JudgeConfig()
    groups = _replay_windows(replay_json) if replay_json else _live_windows()
    key = _pick(groups, model, candidate)
    verdict = judge(groups[key], config)
    if as_json:
        _print_json({"model": key[0], "candidate": key[1], **verdict.as_dict()})
    else:
        colour = {"PROMOTE": "green", "HOLD": "yellow", "ROLLBACK": "bold red"}[verdict.decision]
        console.print(Text.assemble((verdict.decision, colour),
                                    f" {key[1]} on {key[0]}: {verdict.reason}"))
        for r in verdict.results:
            console.print(f"  {r.outcome:8} {'critical ' if r.critical else ''}{r.reason}",
                          highlight=False)
    sys.exit(verdict.exit_code)


def _replay_windows(path: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    try:
        doc = orjson.loads(path.read_bytes())
        return {(model, cid): [w for w in rep["windows"] if "segment" not in w]
                for cid, cand in doc["candidates"].items()
                for model, rep in cand["models"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ShadowstreamError(f"{path}: not a replay report ({exc})") from None


def _live_windows() -> dict[tuple[str, str], list[dict[str, Any]]]:
    from shadow.recording import Position, read_range
    from shadow.stack import resolve_kafka

    s = _settings()
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for m in read_range(s, resolve_kafka(s), s.topic("windows"), Position("beginning"),
                        Position("end")):
        try:
            w = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(w, dict) and w.get("segment") is None and "window_start" in w:
            latest[(w["model"], w["candidate"], w["window_start"])] = w  # re-emitted: same
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (model, cand, _), w in sorted(latest.items()):
        groups.setdefault((model, cand), []).append(w)
    return groups


def _pick(groups: dict[tuple[str, str], list[dict[str, Any]]], model: str | None,
          candidate: str | None) -> tuple[str, str]:
    keys = [k for k in groups if (model is None or k[0] == model)
            and (candidate is None or k[1] == candidate)]
    if not keys:
        raise ShadowstreamError("no windows for that model and candidate"
                                f" (have: {', '.join('/'.join(k) for k in groups) or 'none'})")
    if len(keys) > 1:
        raise ShadowstreamError("several model/candidate pairs: choose with --model and "
                                f"--candidate ({', '.join('/'.join(k) for k in keys)})")
    return keys[0]


# -- alerts -----------------------------------------------------------------------------------

@main.group()
def alerts() -> None:
    """Alerts raised by the join (kept in Redis)."""


def _redis() -> tuple[Any, str]:
    from shadow import clients
    from shadow.stack import resolve_redis

    s = _settings()
    return clients.redis_client(resolve_redis(s)), s.topic_prefix


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the alerts as JSON.")
def alerts_list(as_json: bool) -> None:
    """The current state of every alert rule that fired or is about to, firing first."""
    from shadow.alerts_view import current_alerts, latest_windows, render

    client, prefix = _redis()
    found = current_alerts(client, prefix)
    if as_json:
        _print_json(found)
        return
    console.print(render(found, latest_windows(client, prefix)))


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--by", default=None, help="Who acknowledges (default: $USER).")
def alerts_ack(alert_id: str, by: str | None) -> None:
    """Acknowledge the alert with this id (see `shadow alerts list`)."""
    import getpass

    from shadow.alerts_view import acknowledge

    client, prefix = _redis()
    alert = acknowledge(client, prefix, alert_id, by or getpass.getuser())
    console.print(f"acknowledged {alert_id}: {alert.get('rule')} of {alert.get('model')}/"
                  f"{alert.get('candidate')} ({alert.get('state')})", highlight=False)


@alerts.command("watch")
@click.option("--seconds", type=click.FloatRange(min=0), default=None,
              help="Stop after this long (default: until Ctrl-C).")
def alerts_watch(seconds: float | None) -> None:
    """A live table of the alerts and the latest windows, fed by Redis pub/sub."""
    from shadow.alerts_view import watch

    client, prefix = _redis()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves the view
        watch(client, prefix, seconds, console)


# -- profile ----------------------------------------------------------------------------------

@main.group()
def profile() -> None:
    """Drift reference profiles."""


@profile.command("build")
@click.option("--from", "start", required=True, metavar="TIME",
              help="Start of the range: ISO time (2026-11-22T10:00:00Z) or epoch ms.")
@click.option("--to", "end", required=True, metavar="TIME", help="End of the range (excluded).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The profile file to write (JSON).")
@click.option("--bins", type=click.IntRange(2, 10_000), default=100, show_default=True,
              help="Quantile bins per numeric feature.")
def profile_build(start: str, end: str, output: Path, bins: int) -> None:
    """Build a drift reference from the requests of a time range of <prefix>.requests.

    One profile per model found: its inputs' features and its live answers, binned on
    quantiles of the range. `shadow join --profile FILE` judges drift against it.
    """
    from shadow.profiles import build_profiles
    from shadow.recording import parse_time
    from shadow.stack import resolve_kafka

    s = _settings()
    t0, t1 = parse_time(start), parse_time(end)
    if t1 <= t0:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    bootstrap = resolve_kafka(s)
    with err_console.status("reading requests...", spinner="dots") as status:
        result = build_profiles(s, bootstrap, t0, t1, bins=bins,
                                progress=lambda n: status.update(f"read {n} requests"))
    output.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
    err_console.print(f"profile: {result.requests} requests of {len(result.profiles)} "
                      f"model(s), {result.skipped} undecodable skipped -> {output}",
                      highlight=False)


# -- demo -------------------------------------------------------------------------------------

@main.command()
@click.option("--duration", type=click.FloatRange(min=15), default=120.0, show_default=True,
              help="Seconds of traffic; the candidate turns at 1/3, the inputs shift at 2/3.")
@click.option("--rate", type=click.FloatRange(min=10), default=100.0, show_default=True,
              help="Requests per second of the synthetic service.")
@click.option("--window-s", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Size of the join's windows.")
@click.option("--stop-stack", is_flag=True,
              help="Also stop the servers it started (default: leave them to look at).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(duration: float, rate: float, window_s: float, stop_stack: bool,
         as_json: bool) -> None:
    """The whole pipeline on this machine, checked against what it injects.

    Brings the stack up (or uses the configured servers), creates fresh topics, and runs a
    synthetic service mirroring its requests, a shadow worker whose candidate starts to
    disagree on segment 'us' a third of the way through, and the join app; the inputs shift
    two thirds of the way through. Shows throughput, windows, divergence, drift and alerts
    live; ends with a summary and stops the processes it started (the servers too with
    --stop-stack). Exit 0 when the pipeline saw what was injected, 1 with the reasons
    otherwise.
    """
    from rich.live import Live

    from shadow.pipeline_demo import DemoPlan, run_demo

    s = _settings()
    plan = DemoPlan(duration_s=duration, rate=rate, window_s=window_s)
    if as_json:
        summary = run_demo(s, plan, stop_stack=stop_stack)
    else:
        with Live(_demo_view({}), console=err_console, refresh_per_second=2) as live:
            summary = run_demo(s, plan, on_tick=lambda t: live.update(_demo_view(t)),
                               stop_stack=stop_stack)
    if as_json:
        _print_json(summary.as_dict())
    else:
        _print_demo_summary(summary)
    sys.exit(0 if summary.ok else 1)


def _demo_view(t: dict[str, Any]) -> Table:
    table = Table("", "", title="shadowstream demo", title_justify="left", show_header=False)
    if not t:
        table.add_row("starting", "stack, topics, join app, worker...")
        return table
    rows = [("elapsed", f"{t['elapsed_s']:.0f} s"),
            ("requests mirrored", f"{t['sent']} ({t['rate']:.0f}/s)"),
            ("answered by the candidate", str(t["answered"])),
            ("pairs joined", str(t["pairs"])), ("windows closed", str(t["windows"])),
            ("disagreement (last window)", _fmt(t["disagreement"])),
            ("largest PSI (last window)", _fmt(t["psi_max"])),
            ("publish() p99", f"{_fmt(t['publish_p99_us'])} us"),
            ("firing", ", ".join(t["firing"]) or "-")]
    rows += [("alert", a) for a in t["alerts"]]
    for k, v in rows:
        table.add_row(k, v)
    return table


def _print_demo_summary(summary: Any) -> None:
    d = summary.as_dict()
    verdict = Text("pipeline behaved as designed", "bold green") if d["ok"] else \
        Text("pipeline did NOT behave as designed: " + "; ".join(d["reasons"]), "bold red")
    console.print(verdict)
    table = Table("what", "value", title="summary", title_justify="left")
    for key in ("seconds", "requests", "pairs", "unmatched", "dead_lettered", "windows",
                "turn_at", "shift_at", "dropped"):
        value = d[key]
        table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    table.add_row("publish() p50 / p99", f"{d['publish_us']['p50']:.1f} / "
                                         f"{d['publish_us']['p99']:.1f} us")
    for a in d["alerts"]:
        table.add_row(f"alert {a['rule']}", f"{a['state']} (window ending {a['window_end']}, "
                                            f"value {_fmt(a['value'])})")
    for k, v in d["where"].items():
        table.add_row(f"look in {k}", v)
    console.print(table)
    console.print("The servers are left running to look at: stop them with `shadow stack down`.")


if __name__ == "__main__":
    main()
