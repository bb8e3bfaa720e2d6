"""docker-compose.yml is valid for users with Docker (no engine is needed to check it), and the
files it mounts are consistent: Prometheus config and rules, Grafana's dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docker_compose_config_is_valid() -> None:
    assert shutil.which("docker"), "the docker client is needed: `make bootstrap` installs it"
    proc = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert {"kafka", "redis", "prometheus", "alertmanager", "grafana", "topics", "traffic",
            "worker", "join"} <= set(services)
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("traffic", "worker", "join"):  # built from the repo's Dockerfile
        svc = services[name]
        assert svc["build"]["context"] == str(ROOT)
        assert svc["environment"]["SHADOW_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert services["join"]["command"][0] == "join"
    assert (ROOT / "Dockerfile").read_text().count("ENTRYPOINT") == 1


def test_prometheus_compose_config_and_grafana_dashboard() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian package prometheus)"
    proc = subprocess.run([promtool, "check", "config",
                           str(ROOT / "prometheus" / "prometheus-compose.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dash = json.loads((ROOT / "grafana" / "dashboards" / "shadowstream.json").read_text())
    assert dash["uid"] == "shadowstream" and len(dash["panels"]) >= 8
    # Every metric the dashboard plots is one the code exports.
    code = "".join(p.read_text() for where in ("consumers", "shadow/runtime")
                   for p in (ROOT / where).rglob("*.py"))
    for panel in dash["panels"]:
        for name in re.findall(r"shadow_[a-z0-9_]+", panel["targets"][0]["expr"]):
            base = name.removesuffix("_total")
            short = base.removeprefix("shadow_window_")
            assert base in code or f'"{short}"' in code, f"{name} is not exported"
