"""``shadow replay``: recorded requests through candidates, judged by the live pipeline's code."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from shadow.cli import options
from shadow.cli.common import console, err_console, kafka, progress_bar, settings
from shadow.cli.views import replay_table
from shadow.exceptions import ShadowstreamError
from shadow.settings import Settings


def _candidate_name(spec: str) -> str:
    return spec.rsplit(":", 1)[-1] if ":" in spec else Path(spec).stem


def _split(spec: str) -> tuple[str, str]:
    """``ID=MODEL`` or ``MODEL`` (named after the model's file or factory)."""
    cid, sep, model = spec.partition("=")
    if not sep or ":" in cid or "/" in cid:
        return _candidate_name(spec), spec
    return cid, model


@click.command("replay")
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A recording made by `shadow record`.")
@click.option("--topic", default=None, callback=options.pipeline_topic,
              help=f"Or read a topic directly (with --from/--to): {options.TOPIC_HELP}.")
@options.time_range(required=False)
@click.option("--candidate", "candidates", multiple=True,
              metavar="[ID=]MODEL", help="A candidate (repeatable): TorchScript, .pt2 or "
                                         "package.module:factory, optionally named ID=...")
@click.option("--control", "controls", multiple=True, metavar="[ID=]MODEL",
              help="A control (at most one): a second copy of the live model, "
                   "run beside the candidates. The candidates are then judged on their "
                   "divergence beyond the control's (docs/generative.md).")
@options.model_files()
@click.option("--to-topic", default=None, metavar="T2",
              help="Instead of judging here, re-publish the requests to this topic for the "
                   "live pipeline.")
@click.option("--rate", type=click.FloatRange(min=0.001), default=None,
              help="With --to-topic: events per second, a batch record counting its events "
                   "(default: as fast as possible).")
@options.engine(max_batch=256)
@options.windows()
@options.rules()
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              callback=options.output_file,
              default=None, help="Write the report as JSON (same bytes for the same input, "
                                 "unless --latency).")
@click.option("--latency", is_flag=True, default=False,
              help="Measure each candidate's inference time on this machine, so the windows "
                   "and the verdict judge candidate latency (against the live latency "
                   "recorded); the report then differs run to run.")
@click.option("--report", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              callback=options.output_file,
              default=None, help="Write a self-contained HTML report.")
@click.option("--verdict-config", "verdict_file", type=click.Path(dir_okay=False, exists=True,
                                                                  path_type=Path),
              default=None, help="The report's verdict with this configuration (as "
                                 "`shadow verdict --config`); default: the shipped one.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to share the recording's partitions among (partition p to job "
                   "p mod N: more jobs than partitions leave some idle); the report is the "
                   "same. It pays with more CPUs than jobs (see docs/replay.md).")
def command(file_: Path | None, topic: str | None, start: str | None, end: str | None,
            candidates: tuple[str, ...], controls: tuple[str, ...], weights: tuple[str, ...],
            card: tuple[str, ...],
            adapter: tuple[str, ...], to_topic: str | None, rate: float | None, device: str,
            dtype: str, max_batch: int, window_s: float, grace_s: float, reference_size: int,
            profile_file: Path | None, tolerances: Path | None, rules_file: Path | None,
            json_out: Path | None, html_out: Path | None, latency: bool,
            verdict_file: Path | None, jobs: int) -> None:
    """Replay recorded requests through candidates and judge them like the live pipeline.

    Runs in-process with the worker's inference engine and the join's comparators, windows
    and drift code; several candidates side by side in one pass. Partitions are read merged
    in time order, so the pairs and windows are those the live join computed.

    \b
    Example:
      shadow replay --file monday.jsonl.zst --candidate v13=shadow.sim.traffic:build_model \\
          --window-s 60 --json report.json --report report.html --jobs 4
    """
    from shadow.offline.recordfile import count_messages
    from shadow.offline.recording import parse_range, read_range, read_recording
    from shadow.offline.replay import ReplayCandidate, replay

    if (file_ is None) == (topic is None):
        raise click.UsageError("give either --file or --topic (with --from and --to)")
    if topic is not None and (start is None or end is None):
        raise click.UsageError("--topic needs --from and --to")
    if file_ is not None and (start is not None or end is not None):
        raise click.UsageError("--from and --to go with --topic; a recording is replayed whole")
    if not candidates and to_topic is None:
        raise click.UsageError("give at least one --candidate (or --to-topic)"
                               + (": a --control is judged against nothing alone"
                                  if controls else ""))
    if to_topic is not None and (candidates or controls or json_out or html_out):
        raise click.UsageError("--to-topic re-publishes the messages and judges nothing: "
                               "leave out --candidate, --json and --report (or --to-topic)")
    if rate is not None and to_topic is None:
        raise click.UsageError("--rate goes with --to-topic")
    if jobs > 1 and to_topic is not None:
        raise click.UsageError("--jobs goes with --candidate: --to-topic only re-publishes")
    if file_ is not None and not file_.is_file():
        raise click.BadParameter(f"{str(file_)!r}: no such file", param_hint="'--file'")
    s = settings()
    if verdict_file is not None and html_out is None:
        raise click.UsageError("--verdict-config goes with --report (it decides the HTML "
                               "report's verdict; `shadow verdict --config` judges the JSON)")
    verdict = None
    if verdict_file is not None:
        from consumers.verdict import JudgeConfig

        verdict = JudgeConfig.from_file(verdict_file)  # a bad file: one line, before the work
    specs = [(*_split(spec), False) for spec in candidates]
    if len(controls) > 1:
        raise click.BadParameter("one control is enough: the candidates are judged against "
                                 "one noise floor", param_hint="'--control'")
    specs += [(*_split(spec), True) for spec in controls]
    ids = [cid for cid, _, _ in specs]
    if len(set(ids)) != len(ids):
        raise click.BadParameter(f"candidate and control ids must differ: {ids} (name them "
                                 "ID=MODEL)", param_hint="'--candidate'")
    files = options.files_by_candidate(ids, weights, card, adapter) if ids else {}
    join = options.join_config(window_s, grace_s, reference_size, profile_file, tolerances,
                               rules=options.rule_set(rules_file))
    loaded = []
    for cid, model, control in specs:
        f = files[cid]
        loaded.append(ReplayCandidate.from_spec(
            cid, model, weights=f.weights, card=f.card, adapter=f.adapter, device=device,
            dtype=dtype, max_batch=max_batch, control=control))
    if topic is not None:
        lo, hi = parse_range(start or "", end or "")
        messages = read_range(s, kafka(s), topic, lo, hi)
        source: dict[str, Any] = {"topic": topic, "from": start, "to": end}
    else:
        assert file_ is not None
        messages = read_recording(file_)
        source = {"file": file_.name}
    if to_topic is not None:
        _republish(s, messages, to_topic, rate)
        return
    # A recording's size is known by counting its lines (a fraction of replaying them):
    # the bar then has an end and the time left; a topic range shows its count.
    total = count_messages(file_) if file_ is not None else None
    cpus = os.cpu_count() or 1
    if jobs >= cpus:
        err_console.print(f"--jobs {jobs} on {cpus} CPUs: the jobs share them with the process "
                          "that reads the recording and closes the windows, and it is likely "
                          "slower than one job here (see docs/replay.md)", highlight=False)
    with progress_bar("replaying", total) as progress:
        result = replay(messages, loaded, join=join, batch=max_batch, latency=latency,
                        source=source, progress=progress, jobs=jobs)
    if json_out:
        json_out.write_bytes(result.json_bytes())
    if html_out:
        from shadow.offline.report import html_report

        html_out.write_text(html_report(result, verdict))
    console.print(replay_table(result))
    console.print(f"{result.report['requests']} requests in {result.timing['seconds']:.1f} s "
                  f"({result.timing['requests_per_s']:,.0f}/s), "
                  f"{result.report['dead_lettered']} dead-lettered", highlight=False)


def _republish(s: Settings, messages: Iterable[Any], topic: str, rate: float | None) -> None:
    from shadow import clients
    from shadow.offline.republish import republish
    from shadow.topics import existing_partitions

    bootstrap = kafka(s)
    existing = existing_partitions(clients.admin(s, bootstrap), s.kafka_timeout_s)
    if topic not in existing:
        raise ShadowstreamError(f"--to-topic {topic} does not exist: create it first (with the "
                                "partitions of the pipeline's topics)")
    producer = clients.producer(s, bootstrap)
    with err_console.status(f"re-publishing to {topic}...", spinner="dots") as status:
        sent = republish(((m.key, m.value) for m in messages), producer, topic,
                         partitions=existing[topic], rate=rate,
                         progress=lambda n: status.update(f"re-published {n}"))
    err_console.print(f"re-published {sent} events to {topic}"
                      f"{f' at {rate:g}/s' if rate else ''}", highlight=False)
