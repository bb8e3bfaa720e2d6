"""`shadow demo` end to end: its JSON summary against what it injected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

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
