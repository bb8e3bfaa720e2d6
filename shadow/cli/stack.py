"""``shadow stack``: a local Kafka, Redis and Prometheus (no Docker needed)."""

from __future__ import annotations

import time

import click
from rich.table import Table

from shadow.cli.common import Group, console, err_console, print_json, settings
from shadow.cli.options import json_output


@click.group("stack", cls=Group)
def command() -> None:
    """Run a local Kafka, Redis and Prometheus (no Docker needed).

    \b
    Example:
      shadow stack up --prometheus
      shadow stack status
      shadow stack down
    """


@command.command("up")
@click.option("--prometheus", "with_prometheus", is_flag=True, help="Also start Prometheus.")
@json_output("Print the endpoints as JSON.")
def up(with_prometheus: bool, as_json: bool) -> None:
    """Start the servers that are not running yet (idempotent).

    Kafka (3.9.1 by default, SHADOW_KAFKA_VERSION; KRaft, jars from Maven Central on first
    use), redis-server and, with --prometheus, Prometheus, all on free loopback ports.
    Servers set through SHADOW_KAFKA_BOOTSTRAP / SHADOW_REDIS_URL / SHADOW_PROMETHEUS_URL are
    used instead. With SHADOW_STACK_SECURE=1 Kafka also opens a SASL_SSL listener
    (SCRAM-SHA-512 over TLS) and Redis admits only an ACL user; the CA and passwords are in
    credentials_dir.

    \b
    Example:
      shadow stack up --prometheus --json
    """
    from shadow.stack import Stack

    t0 = time.monotonic()
    with err_console.status("starting the stack...", spinner="dots"):
        endpoints = Stack(settings()).up(with_prometheus=with_prometheus)
    if as_json:
        print_json(endpoints.as_dict())
        return
    for key, value in endpoints.as_dict().items():
        console.print(f"{key:17} {value or '-'}", highlight=False)
    err_console.print(f"ready in {time.monotonic() - t0:.1f}s")


@command.command("status")
@json_output("Print the status as JSON.")
def status(as_json: bool) -> None:
    """Say which servers run, where, and where their logs are.

    \b
    Example:
      shadow stack status --json
    """
    from shadow.stack import Stack

    rows = Stack(settings()).status()
    if as_json:
        print_json([r.__dict__ for r in rows])
        return
    table = Table("server", "state", "url", "pid", "log")
    for r in rows:
        table.add_row(r.name, r.state, r.url or "", str(r.pid or ""), r.log or "")
    console.print(table)


@command.command("down")
def down() -> None:
    """Stop every server the stack started and delete its data.

    \b
    Example:
      shadow stack down
    """
    from shadow.stack import Stack

    stopped = Stack(settings()).down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@command.command("fetch")
def fetch() -> None:
    """Resolve the Kafka broker's jars from Maven Central into the cache (done by `up` too).

    \b
    Example:
      SHADOW_KAFKA_VERSION=4.1.1 shadow stack fetch
    """
    from shadow.stack import kafka

    s = settings()
    with err_console.status(f"resolving Kafka {s.kafka_version} with Maven...", spinner="dots"):
        libs = kafka.jars(s.cache_dir, s.kafka_version)
    console.print(f"Kafka {s.kafka_version} jars: {libs}", highlight=False)


@command.command("env")
def env() -> None:
    """Print shell exports that point clients at the running stack.

    For programs that embed the mirror or read SHADOW_KAFKA_BOOTSTRAP themselves; the
    `shadow` commands find the local stack without them.

    \b
    Example:
      eval "$(shadow stack env)"
      echo "$SHADOW_KAFKA_BOOTSTRAP"
    """
    import shlex

    from shadow.stack import Stack

    endpoints = Stack(settings()).endpoints()
    # Not the local Prometheus: set, it would read as one of your own, and workers and the
    # join would no longer register with it.
    values = {"SHADOW_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
              "SHADOW_REDIS_URL": endpoints.redis_url}
    for name, value in values.items():
        click.echo(f"export {name}={shlex.quote(value)}")
