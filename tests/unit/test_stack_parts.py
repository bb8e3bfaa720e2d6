"""Pure parts of the local stack: broker config, process identity, Prometheus targets."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from shadow.stack import kafka, procs, prometheus


def test_server_properties_is_a_single_kraft_node(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1)
        for line in kafka.server_properties(kafka.KafkaLayout(tmp_path), 9092, 9093).splitlines()
        if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_cluster_id_is_22_chars_of_url_safe_base64() -> None:
    ids = {kafka.cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and "=" not in i and "/" not in i and "+" not in i for i in ids)
    # 1 in 64 raw ids starts with "-", which the storage tool takes for an option.
    assert not any(i.startswith("-") for i in ids)


def test_alive_tells_a_recycled_pid_and_a_zombie_from_a_server(tmp_path: Path) -> None:
    pid = procs.spawn([sys.executable, "-c", "import time; time.sleep(30)"],
                      tmp_path / "log", cwd=tmp_path)
    started = procs.start_time(pid)
    assert started is not None
    assert procs.alive(pid, started)
    assert not procs.alive(pid, started + 1)  # same pid, another process
    procs.stop(pid, started, grace_s=5)
    assert not procs.alive(pid)
    assert procs.start_time(2**22 + 7) is None


def test_zombie_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.02)
    assert not procs.alive(child.pid)
    child.wait()


def test_register_target_writes_a_file_sd_entry(tmp_path: Path) -> None:
    path = prometheus.register_target(tmp_path, "worker", "127.0.0.1:9101", {"candidate": "c1"})
    assert orjson.loads(path.read_bytes()) == [
        {"targets": ["127.0.0.1:9101"], "labels": {"job": "worker", "candidate": "c1"}}
    ]
