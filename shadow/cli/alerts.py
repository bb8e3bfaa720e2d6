"""``shadow alerts``: what ops see of the alerts the join keeps in Redis."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from shadow.cli.common import Group, console, print_json, redis_url, settings
from shadow.cli.options import json_output


@click.group("alerts", cls=Group)
def command() -> None:
    """Alerts raised by the join (kept in Redis).

    \b
    Example:
      shadow alerts list
      shadow alerts watch --seconds 60
    """


def _redis() -> tuple[Any, str]:
    from shadow import clients

    s = settings()
    return clients.redis_client(redis_url(s)), s.topic_prefix


@command.command("list")
@json_output("Print the alerts as JSON.")
def list_(as_json: bool) -> None:
    """The current state of every alert rule that fired or is about to, firing first.

    \b
    Example:
      shadow alerts list --json
    """
    from shadow.cli.alerts_view import current_alerts, latest_windows, render

    client, prefix = _redis()
    found = current_alerts(client, prefix)
    if as_json:
        print_json(found)
        return
    console.print(render(found, latest_windows(client, prefix)))


@command.command("ack")
@click.argument("alert_id")
@click.option("--by", default=None, help="Who acknowledges (default: $USER).")
def ack(alert_id: str, by: str | None) -> None:
    """Acknowledge the alert with this id (see `shadow alerts list`).

    \b
    Example:
      shadow alerts ack 3f2a9c... --by alice
    """
    import getpass

    from shadow.cli.alerts_view import acknowledge

    client, prefix = _redis()
    alert = acknowledge(client, prefix, alert_id, by or getpass.getuser())
    console.print(f"acknowledged {alert_id}: {alert.get('rule')} of {alert.get('model')}/"
                  f"{alert.get('candidate')} ({alert.get('state')})", highlight=False)


@command.command("watch")
@click.option("--seconds", type=click.FloatRange(min=0), default=None,
              help="Stop after this long (default: until Ctrl-C).")
def watch(seconds: float | None) -> None:
    """A live table of the alerts and the latest windows, fed by Redis pub/sub.

    \b
    Example:
      shadow alerts watch --seconds 300
    """
    from shadow.cli.alerts_view import watch as watch_alerts

    client, prefix = _redis()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves the view
        watch_alerts(client, prefix, seconds, console)
