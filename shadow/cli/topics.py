"""``shadow topics``: create, list and delete the pipeline's topics."""

from __future__ import annotations

import shutil

import click
from rich.table import Table

from shadow.cli.common import Group, console, err_console, fail, kafka, print_json, settings
from shadow.cli.options import json_output
from shadow.settings import Settings


@click.group("topics", cls=Group)
def command() -> None:
    """Create, list and delete the pipeline's topics (<prefix>.requests, ...).

    \b
    Example:
      shadow topics create --partitions 3
      shadow topics list
      SHADOW_TOPIC_PREFIX=old shadow topics delete --yes
    """


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@command.command("create")
@click.option("--partitions", type=click.IntRange(1, 1024), default=None,
              help="Partitions of requests/outputs/pairs/deadletter (default: those of an "
                   "existing requests topic, else SHADOW_PARTITIONS).")
@json_output()
def create(partitions: int | None, as_json: bool) -> None:
    """Create <prefix>.requests, .outputs, .pairs, .windows and .deadletter (idempotent).

    Refuses, and says why, when existing topics have other partition counts.

    \b
    Example:
      shadow topics create --partitions 3 --json
    """
    from shadow import clients
    from shadow.topics import create_topics, existing_partitions, topic_specs

    s = settings()
    admin = clients.admin(s, kafka(s))
    if partitions is None:
        partitions = existing_partitions(admin, s.kafka_timeout_s).get(s.topic("requests"))
    specs = topic_specs(s, partitions)
    plan = create_topics(admin, specs, s.kafka_timeout_s)
    rows = [{"topic": spec.name, "partitions": spec.partitions,
             "state": "created" if spec in plan.create else "exists"} for spec in specs]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        console.print(f"{r['topic']:28} {_plural(r['partitions'], 'partition'):14} "
                      f"{r['state']}", highlight=False)


def _owned(s: Settings) -> dict[str, dict[str, int]]:
    """The prefix's topics (its five and the join's own) with partitions and messages."""
    from confluent_kafka import TopicPartition

    from shadow import clients
    from shadow.topics import owned

    bootstrap = kafka(s)
    meta = clients.probe_kafka(s, bootstrap)
    names = sorted(n for n, t in meta.topics.items()
                   if t.error is None and owned(n, s.topic_prefix))
    out: dict[str, dict[str, int]] = {}
    consumer = clients.consumer(s, bootstrap, "shadow-topics-list")
    try:
        for name in names:
            parts = sorted(meta.topics[name].partitions)
            messages = 0
            for p in parts:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(name, p),
                                                        timeout=s.kafka_timeout_s)
                messages += hi - lo
            out[name] = {"partitions": len(parts), "messages": messages}
    finally:
        consumer.close()
    return out


@command.command("list")
@json_output()
def list_(as_json: bool) -> None:
    """The topics of this prefix (SHADOW_TOPIC_PREFIX), with partitions and messages kept.

    Messages are Kafka records: a batch of events (as the mirror client and the workers
    write them) counts once. Includes the join app's own topics (<prefix>-join-...: its
    table's changelog, and with --scale-out the merge stage's).

    \b
    Example:
      SHADOW_TOPIC_PREFIX=shadow shadow topics list --json
    """
    s = settings()
    found = _owned(s)
    if as_json:
        print_json([{"topic": n, **v} for n, v in found.items()])
        return
    if not found:
        err_console.print(f"no topics with the prefix {s.topic_prefix!r} "
                          "(`shadow topics create` makes them)", highlight=False)
        return
    table = Table("topic", "partitions", "messages")
    for name, v in found.items():
        table.add_row(name, str(v["partitions"]), f"{v['messages']:,}")
    console.print(table)


@command.command("delete")
@click.option("--yes", is_flag=True, help="Really delete them (without it: say what would go).")
@json_output()
def delete(yes: bool, as_json: bool) -> None:
    """Delete every topic of this prefix, the join's own topics and its local table store.

    Messages in them are lost. Without --yes it only lists what it would delete and exits 1.

    \b
    Example:
      SHADOW_TOPIC_PREFIX=trial-3 shadow topics delete --yes
    """
    from schemas.topics import join_app_id
    from shadow import clients
    from shadow.topics import delete_topics

    s = settings()
    names = sorted(_owned(s))
    store = s.state_dir / "join" / join_app_id(s.topic_prefix)
    if not yes:
        what = ", ".join(names) if names else "no topics"
        fail(f"would delete {what}" + (f" and {store}" if store.exists() else "")
             + ": add --yes to do it")
    if names:
        delete_topics(clients.admin(s, kafka(s)), names, s.kafka_timeout_s)
    removed_store = store.exists()
    shutil.rmtree(store, ignore_errors=True)
    if as_json:
        print_json({"deleted": names, "store": str(store) if removed_store else None})
        return
    console.print("deleted: " + (", ".join(names) if names else "no topics")
                  + (f"; removed {store}" if removed_store else ""), highlight=False)
