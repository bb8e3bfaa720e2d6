"""The `shadow` command line: one thin module per command group, shared options in
``options``, consoles and errors in ``common``.

Exit status: 0 done, 1 an error (one line on stderr, saying what to do), 2 a usage error;
``shadow verdict`` exits 0/1/2 for PROMOTE/HOLD/ROLLBACK and 3 for a usage or input error.
"""

from __future__ import annotations

from importlib.metadata import version

import click

from shadow.cli import (
    alerts,
    demo,
    join,
    profile,
    record,
    replay,
    stack,
    topics,
    traffic,
    verdict,
    worker,
)
from shadow.cli.common import Group, verbose_logging

__all__ = ["main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"],
                                          "max_content_width": 100})
@click.version_option(version("shadowstream"), prog_name="shadowstream")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the Kafka clients' own log lines and the join's Faust logs.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """shadowstream: shadow-test candidate ML models on mirrored production traffic.

    Settings come from SHADOW_* environment variables or ./shadow.toml
    (SHADOW_KAFKA_BOOTSTRAP, SHADOW_REDIS_URL, SHADOW_TOPIC_PREFIX, ...).

    \b
    Example, on a fresh machine:
      shadow stack up && shadow topics create --partitions 3
      shadow traffic --rate 200 --duration 60
    """
    ctx.obj = {"verbose": verbose}
    verbose_logging(verbose)


for _module in (stack, topics, traffic, worker, join, record, replay, verdict, alerts,
                profile, demo):
    main.add_command(_module.command)
