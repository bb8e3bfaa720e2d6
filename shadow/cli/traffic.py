"""``shadow traffic``: a synthetic service that mirrors its requests, for trying the pipeline."""

from __future__ import annotations

import signal
from typing import Any

import click
import orjson

from shadow.cli.common import console, err_console, kafka, print_json, settings
from shadow.cli.options import json_output
from shadow.exceptions import ShadowstreamError


@click.command("traffic")
@click.option("--rate", type=click.FloatRange(min=0.1), required=True,
              help="Requests per second.")
@click.option("--duration", type=click.FloatRange(min=0.1), required=True, help="Seconds to run.")
@click.option("--model", default="fraud-scorer", show_default=True, help="Model name.")
@click.option("--shift-at", type=click.FloatRange(min=0), default=None,
              help="Seconds after which the input distribution shifts (drift).")
@click.option("--disagree", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of live answers made to differ from what the model computes.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the requests: same seed, same requests and answers (request ids "
                   "too: give each run its own seed). The live model is "
                   "shadow.sim.traffic:build_model whatever the seed.")
@click.option("--truth", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write each request's ground truth (disagree, shifted) as JSON lines.")
@json_output("Print the summary as JSON.")
def command(rate: float, duration: float, model: str, shift_at: float | None, disagree: float,
            seed: int, truth: str | None, as_json: bool) -> None:
    """Run a synthetic service with a small torch model and mirror its requests.

    Each request is answered by the live model and published to <prefix>.requests through the
    mirror client, paced at --rate. Shows its rate while it runs.

    \b
    Example:
      shadow traffic --rate 200 --duration 60 --disagree 0.05 --shift-at 30
    """
    import torch
    from prometheus_client import CollectorRegistry

    from producers import Mirror, MirrorConfig
    from shadow.sim.traffic import TrafficService, TrafficSpec

    # One small request at a time: torch's thread pool would spin between requests and burn
    # a core that the pipeline under test needs (a 150/s generator took 80 % of one).
    torch.set_num_threads(1)
    s = settings()
    bootstrap = kafka(s)
    extra = {k: v for k, v in s.confluent_config(bootstrap).items() if k != "bootstrap.servers"}
    config = MirrorConfig(bootstrap=bootstrap, model=model, topic=s.topic("requests"),
                          live_version="live-v1", output_kind="probs", kafka=extra)
    mirror = Mirror(config, CollectorRegistry())
    service = TrafficService(mirror, TrafficSpec(model, seed, disagree), keep_truth=bool(truth))

    def show(st: Any) -> None:
        if not as_json:
            err_console.print(f"{st.seconds:6.1f}s  sent {st.sent:8d}  {st.rate:8.0f} req/s  "
                              f"disagreed {st.disagreed}  shifted {st.shifted}", highlight=False)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a supervisor, kill) stops it as Ctrl-C does: what was sent is flushed and
    # summed up, and --truth written.
    signal.signal(signal.SIGTERM, stop)
    stopped = False
    try:
        service.run(rate, duration, shift_at, on_tick=show)
    except KeyboardInterrupt:
        stopped = True
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
        "stopped_early": stopped,
    }
    if as_json:
        print_json(summary)
    else:
        for key, value in summary.items():
            console.print(f"{key:20} {value}", highlight=False)
    if counts.published != st.sent:
        raise ShadowstreamError(f"{st.sent - counts.published} of {st.sent} requests were not "
                                "delivered to Kafka (see dropped / delivery_failed)")
