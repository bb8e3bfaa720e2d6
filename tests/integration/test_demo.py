"""`shadow demo` end to end: its JSON summary against what it injected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shadow.settings import Settings
from shadow.stack import Endpoints

REPO = Path(__file__).resolve().parents[2]


def test_short_demo_sees_what_it_injected(settings: Settings, stack: Endpoints) -> None:
    duration, rate = 45, 100
    env = {**os.environ, "SHADOW_STATE_DIR": str(settings.state_dir), "PYTHONPATH": str(REPO)}
    for name in ("SHADOW_KAFKA_BOOTSTRAP", "SHADOW_REDIS_URL", "SHADOW_TOPIC_PREFIX"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "shadow.cli", "demo", "--duration",
                          str(duration), "--rate", str(rate), "--window-s", "5", "--json"],
                         env=env, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = orjson.loads(run.stdout)
    assert summary["ok"] and summary["reasons"] == []
    assert summary["requests"] == duration * rate == summary["pairs"]
    assert summary["unmatched"] == 0 and summary["dropped"] == 0
    firing = {a["rule"]: a for a in summary["alerts"] if a["state"] == "firing"}
    # The candidate turned on segment 'us' a third of the way in, the inputs shifted at two
    # thirds: each alert comes after what caused it (times as HH:MM:SS on the same day).
    assert firing["disagreement"]["window_end"] > summary["turn_at"]
    assert firing["input_drift"]["window_end"] > summary["shift_at"]
    assert summary["publish_us"]["p99"] < 1000
    # It stopped what it started and left the session's servers running.
    assert subprocess.run([sys.executable, "-m", "shadow.cli", "stack", "status"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO
                          ).stdout.count("running") >= 2


@pytest.mark.parametrize("scenario", ["text", "json"])
def test_generative_and_json_demos_judge_against_the_control(
        settings: Settings, stack: Endpoints, scenario: str) -> None:
    """Through the real pipeline (mirror, three workers, the join app, Redis alerts, the
    windows topic): a candidate equal to live is promoted although it differs from live by
    sampling; the retrained one is rolled back and alerted on; the control is not."""
    duration, rate = 40, 100
    env = {**os.environ, "SHADOW_STATE_DIR": str(settings.state_dir), "PYTHONPATH": str(REPO)}
    for name in ("SHADOW_KAFKA_BOOTSTRAP", "SHADOW_REDIS_URL", "SHADOW_TOPIC_PREFIX"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "shadow.cli", "demo", "--scenario", scenario,
                          "--duration", str(duration), "--rate", str(rate), "--window-s", "5",
                          "--json"], env=env, capture_output=True, text=True, timeout=400,
                         cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = orjson.loads(run.stdout)
    assert summary["ok"] and summary["reasons"] == [] and summary["scenario"] == scenario
    assert summary["requests"] == duration * rate and summary["pairs"] == 3 * duration * rate
    model = {"text": "support-chat", "json": "shipping-quote"}[scenario]
    same, bad = (summary["candidates"][f"{model}-{c}"] for c in ("same", "retrained"))
    control = summary["candidates"][f"{model}-control"]
    assert control["role"] == "control" and "verdict" not in control
    assert same["verdict"] == "PROMOTE" and bad["verdict"] == "ROLLBACK"
    assert bad["disagreement_alert"] and not same["disagreement_alert"]
    if scenario == "text":  # sampling alone: live, control and the same weights differ
        assert same["disagreement_rate"] > 0.1 and control["disagreement_rate"] > 0.1
        assert abs(same["excess_over_control"]) < 0.05
    # The gate a CI job runs says the same, from the windows topic, as the summary says to
    # run it (with the demo's verdict configuration).
    line = summary["where"]["verdict"]
    prefix = line.split()[0].removeprefix("SHADOW_TOPIC_PREFIX=")
    args = line.split()[2:]  # after "SHADOW_TOPIC_PREFIX=... shadow"
    for cid, code in ((f"{model}-same", 0), (f"{model}-retrained", 2)):
        gate = subprocess.run([sys.executable, "-m", "shadow.cli",
                               *[cid if a == f"{model}-same" else a for a in args]],
                              env={**env, "SHADOW_TOPIC_PREFIX": prefix}, capture_output=True,
                              text=True, timeout=120, cwd=REPO)
        assert gate.returncode == code, gate.stdout + gate.stderr
        assert "control" in gate.stdout
