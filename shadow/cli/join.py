"""``shadow join``: the Faust app that pairs live and shadow answers and closes windows."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import click

from shadow.cli import options
from shadow.cli.common import err_console, kafka, settings
from shadow.exceptions import ShadowstreamError, TopicMismatchError


def _port_free(host: str, port: int) -> bool:
    """Whether the web server can listen there (as aiohttp does: a port a killed process
    left in TIME_WAIT is free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _lock(store: Path) -> Any:
    """Hold the store for this process: two joins on one store corrupt each other's table."""
    import fcntl

    path = store.with_name(store.name + ".lock")
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ShadowstreamError(f"the store {store} is in use by another join (pid {holder}): "
                                "give each join worker its own --data-dir") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _last_records(s: Any, bootstrap: str, topic: str, partitions: int,
                  timeout_s: float = 3.0) -> list[bytes]:
    """The last record of each partition of ``topic`` (those that have one)."""
    from confluent_kafka import TopicPartition

    from shadow import clients

    consumer = clients.consumer(s, bootstrap, f"shadow-join-check-{os.getpid()}")
    try:
        wanted = []
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=s.kafka_timeout_s)
            if high > low:
                wanted.append(TopicPartition(topic, p, high - 1))
        if not wanted:
            return []
        consumer.assign(wanted)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < len(wanted) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and msg.value():
                out.append(msg.value())
        return out
    finally:
        consumer.close()


@click.command("join")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the app keeps its table store (default: <state dir>/join/"
                   "<prefix>-join, one per topic prefix).")
@click.option("--web-port", type=click.IntRange(1, 65535), default=6066, show_default=True,
              help="Port of the app's web server; Prometheus metrics at /metrics.")
@options.windows()
@click.option("--expect", multiple=True, metavar="MODEL=CANDIDATE",
              help="A candidate expected to answer a model's requests (repeatable); a request "
                   "it never answers counts as unmatched even before it sent anything.")
@options.rules()
@click.option("--no-redis", is_flag=True, help="Do not send alerts to Redis.")
@click.option("--idle-close-s", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="With no event for this long, event time runs on "
                                      "with the clock and closes the windows it passes.")
@click.option("--scale-out", is_flag=True,
              help="Run as one of several join workers of this prefix (start each with it): "
                   "windows closed by each go through <prefix>-join-partials to a merge "
                   "stage that emits each whole window once and evaluates the alert rules "
                   "there. Give --profile so that every worker bins drift alike.")
@click.option("--check", is_flag=True,
              help="Check the configuration (files, topics, servers) and exit without "
                   "starting: 0 when the join would start.")
@click.pass_context
def command(ctx: click.Context, data_dir: Path | None, web_port: int, window_s: float,
            grace_s: float, reference_size: int, profile_file: Path | None,
            tolerances: Path | None, expect: tuple[str, ...], rules_file: Path | None,
            no_redis: bool, idle_close_s: float, scale_out: bool, check: bool) -> None:
    """Join live and shadow answers per request; emit pairs and closed windows.

    A Faust app with one agent over <prefix>.requests and <prefix>.outputs, with as many
    partitions as those topics have on the broker. Writes one DivergencePair per request and
    candidate to <prefix>.pairs, a WindowSummary per closed window, model and candidate (and
    segment) to <prefix>.windows, and what it cannot process to <prefix>.deadletter.
    SIGTERM or Ctrl-C stops it after a commit; when it cannot go on it exits 1 with the
    reason.

    \b
    Example:
      shadow join --window-s 60 --grace-s 10 --expect fraud-scorer=fraud-v13 --web-port 6066

    \b
    Two workers sharing the partitions (each its own port and store, the same profile):
      shadow profile build --from beginning --to end -o ref.json
      shadow join --scale-out --profile ref.json --web-port 6066 --data-dir /tmp/j1
      shadow join --scale-out --profile ref.json --web-port 6067 --data-dir /tmp/j2
    """
    from consumers.faust.app import JoinAppConfig, build_app, run_app
    from schemas.topics import join_app_id, join_changelog, join_partials
    from shadow import clients
    from shadow.cli.common import redis_url
    from shadow.stack import local_prometheus
    from shadow.stack.prometheus import registered
    from shadow.topics import existing_partitions, input_partitions

    logging.getLogger("shadowstream.join").setLevel(logging.INFO)
    s = settings()
    candidates: dict[str, tuple[str, ...]] = {}
    for item in expect:
        model, sep, cand = item.partition("=")
        if not (sep and model and cand):
            raise click.BadParameter(f"{item!r}: expected MODEL=CANDIDATE", param_hint="'--expect'")
        candidates[model] = (*candidates.get(model, ()), cand)
    rules = options.rule_set(rules_file)
    config = options.join_config(window_s, grace_s, reference_size, profile_file, tolerances,
                                 candidates=candidates, rules=rules)
    host = "127.0.0.1"
    if not check and not _port_free(host, web_port):
        raise ShadowstreamError(f"port {web_port} is in use (another join?): choose another "
                                "with --web-port")
    bootstrap = kafka(s)
    existing = existing_partitions(clients.admin(s, bootstrap), s.kafka_timeout_s)
    partitions = input_partitions(existing, s)
    changelog = join_changelog(s.topic_prefix)
    if changelog in existing and existing[changelog] != partitions:
        raise TopicMismatchError([
            f"{changelog} (the join's table) has {existing[changelog]} partitions, the inputs "
            f"have {partitions}: it was made for other topics"],
            "Delete this prefix's topics and the join's store (`shadow topics delete --yes`) "
            "and create them again, or use another SHADOW_TOPIC_PREFIX")
    partials = join_partials(s.topic_prefix)
    if partials in existing and existing[partials] != partitions:
        raise TopicMismatchError([
            f"{partials} (the merge stage's input) has {existing[partials]} partitions, the "
            f"inputs have {partitions}: it was made for other topics"],
            "Delete this prefix's topics (`shadow topics delete --yes`) and create them "
            "again, or use another SHADOW_TOPIC_PREFIX")
    if partials in existing and not scale_out:
        raise ShadowstreamError(
            f"the join of prefix {s.topic_prefix!r} runs as several workers ({partials} "
            "exists): start this one with --scale-out too, or its windows and alerts would "
            "be of its own partitions only")
    if scale_out and partials in existing:
        from consumers.merge import check_peers

        why = check_peers(_last_records(s, bootstrap, partials, existing[partials]),
                          config.window_ms)
        if why:
            raise ShadowstreamError(why)
    if scale_out and not profile_file:
        err_console.print("join: warning: --scale-out without --profile: each worker learns "
                          "its own drift reference, and drift is left out of merged windows "
                          "(build one with `shadow profile build`)", highlight=False)
    redis = None if no_redis else redis_url(s)
    store = data_dir or s.state_dir / "join" / join_app_id(s.topic_prefix)
    stale = changelog not in existing and store.is_dir() and any(store.iterdir())
    store.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    if check:  # a check beside a running join is fine: it opens no store
        if stale:
            err_console.print(f"join: would remove {store}: its changelog {changelog} is gone",
                              highlight=False)
        err_console.print(f"join: configuration ok ({len(rules.rules)} alert rules, inputs of "
                          f"{partitions} partition{'s' if partitions != 1 else ''})",
                          highlight=False)
        return
    lock = _lock(store)  # before anything touches the store
    if stale:
        # The store only caches the changelog, and the broker no longer has it (the topics
        # were deleted, or the broker's data reset): Faust would refuse to start on it.
        err_console.print(f"join: removing {store}: its changelog {changelog} is gone (the "
                          "topics were deleted or the broker was reset)", highlight=False)
        shutil.rmtree(store)
    app_config = JoinAppConfig(join=config, data_dir=store, partitions=partitions,
                               web_port=web_port, web_host=host, idle_close_s=idle_close_s,
                               redis_url=redis, scale_out=scale_out)
    app, core = build_app(s.topic_prefix, s.aiokafka_config(bootstrap), app_config)
    n = f"{partitions} partition{'s' if partitions != 1 else ''}"
    merge = f" through the merge stage ({partials})" if scale_out else ""
    err_console.print(f"join: {s.topic('requests')} + {s.topic('outputs')} ({n}) -> pairs, "
                      f"windows of {window_s:g} s (grace {grace_s:g} s){merge}; table in "
                      f"{str(app.conf.store).rstrip(':/')} at {store}; metrics on "
                      f"http://{host}:{web_port}/metrics", highlight=False)
    with registered(local_prometheus(s), "join", f"{host}:{web_port}",
                    {"prefix": s.topic_prefix}):
        run_app(app, verbose=ctx.obj.get("verbose", False) if ctx.obj else False)
    lock.close()
    st = core.stats
    err_console.print(f"join: stopped after {st.requests} requests, {st.outputs} answers, "
                      f"{st.pairs} pairs, {st.windows_closed} windows closed, "
                      f"{st.dead_lettered} dead-lettered", highlight=False)
