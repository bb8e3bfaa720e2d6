"""The PromQL rules in prometheus/alerts.yml: valid, and doing what their unit tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed (Debian package prometheus; `make test` "
                    "installs it)", pytrace=False)
    return exe


def test_promtool_check_rules() -> None:
    run = subprocess.run([promtool(), "check", "rules", "prometheus/alerts.yml"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 7 rules found" in run.stdout


def test_promtool_test_rules() -> None:
    run = subprocess.run([promtool(), "test", "rules", "tests/prometheus/alerts_test.yml"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
