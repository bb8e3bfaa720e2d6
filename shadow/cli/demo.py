"""``shadow demo``: the whole pipeline on this machine, checked against what it injects."""

from __future__ import annotations

import sys

import click

from shadow.cli.common import console, err_console, print_json, settings
from shadow.cli.options import json_output
from shadow.cli.views import demo_summary, demo_view


@click.command("demo")
@click.option("--duration", type=click.FloatRange(min=15), default=120.0, show_default=True,
              help="Seconds of traffic; the candidate turns at 1/3, the inputs shift at 2/3.")
@click.option("--rate", type=click.FloatRange(min=10), default=100.0, show_default=True,
              help="Requests per second of the synthetic service.")
@click.option("--window-s", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Size of the join's windows.")
@click.option("--scenario", type=click.Choice(["fraud", "text", "json"]), default="fraud",
              show_default=True,
              help="fraud: a probability model whose candidate turns, then drifting inputs. "
                   "text: a generative model sampled with a temperature; json: a JSON "
                   "service with a noisy field. Both run a control, a candidate equal to live "
                   "and a retrained one (docs/generative.md).")
@click.option("--stop-stack", is_flag=True,
              help="Also stop the servers it started (default: leave them to look at).")
@json_output("Print the summary as JSON.")
def command(duration: float, rate: float, window_s: float, scenario: str, stop_stack: bool,
            as_json: bool) -> None:
    """The whole pipeline on this machine, checked against what it injects.

    Brings the stack up (or uses the configured servers), creates fresh topics, and runs a
    synthetic service mirroring its requests, a shadow worker whose candidate starts to
    disagree on segment 'us' a third of the way through, and the join app; the inputs shift
    two thirds of the way through. Shows throughput, windows, divergence, drift and alerts
    live; ends with a summary and stops the processes it started (the servers too with
    --stop-stack). Exit 0 when the pipeline saw what was injected, 1 with the reasons
    otherwise.

    With --scenario text or json: a service answering with a generative model (or a JSON
    document), a control (a second copy of the live model), a candidate equal to live and a
    retrained one. Exit 0 when the candidate equal to live is promoted although its answers
    differ from live on many requests, and the retrained one is rolled back and alerted on.

    \b
    Example:
      shadow demo --duration 60 --rate 100 --json
      shadow demo --scenario text --duration 60
    """
    from functools import partial

    from rich.live import Live

    from shadow.sim.pipeline import DemoPlan, run_demo

    s = settings()
    plan = DemoPlan(duration_s=duration, rate=rate, window_s=window_s)
    run = run_demo
    if scenario != "fraud":
        from shadow.sim.scenarios import run_scenario

        run = partial(run_scenario, name=scenario)
    if as_json or not err_console.is_terminal:
        summary = run(s, plan, stop_stack=stop_stack)
    else:
        with Live(demo_view({}), console=err_console, refresh_per_second=2) as live:
            summary = run(s, plan, on_tick=lambda t: live.update(demo_view(t)),
                          stop_stack=stop_stack)
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(demo_summary(summary.as_dict()))
    sys.exit(0 if summary.ok else 1)
