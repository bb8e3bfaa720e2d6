"""Journeys a new user walks from the README, on fresh prefixes, with the mistakes users make:
each broke once (issue 14) and stays fixed here, through the real CLI and servers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import join_changelog
from shadow.settings import Settings
from shadow.sim.traffic import TrafficSpec
from shadow.stack import Endpoints, prometheus_root
from shadow.stack.procs import free_port
from tests.integration.groundtruth import REPO, cli_env, first_window_start, metric, send, spawn_cli


def _env(s: Settings, stack: Endpoints, state: Settings) -> dict[str, str]:
    """A user's shell: the stack's state dir (so processes find its Prometheus), the
    default SHADOW_PARTITIONS (6), this prefix."""
    env = cli_env(s, stack.kafka_bootstrap, stack.redis_url)
    env.pop("SHADOW_PARTITIONS")
    return {**env, "SHADOW_STATE_DIR": str(state.state_dir)}


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shadow.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _wait(cond, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
          log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode}: "
                                 f"{log.read_text()[-2000:] if log else ''}")
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s: " + (
            log.read_text()[-2000:] if log else "")
        time.sleep(0.5)


def _targets(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=5) as resp:
        return orjson.loads(resp.read())["data"]["activeTargets"]


def test_readme_order_topics_of_3_partitions_then_join_worker_and_prometheus(
        settings: Settings, settings_factory, stack: Endpoints, tmp_path: Path,  # type: ignore[no-untyped-def]
        procs: list[subprocess.Popen]) -> None:
    s = settings_factory()
    env = _env(s, stack, settings)
    made = _cli(env, "topics", "create", "--partitions", "3", "--json")
    assert made.returncode == 0, made.stderr
    assert {r["topic"]: r["partitions"] for r in orjson.loads(made.stdout)}[
        s.topic("requests")] == 3
    spec, t0 = TrafficSpec(seed=3), first_window_start()
    send(s, stack.kafka_bootstrap, spec, t0, 0, 600)
    join_port = free_port()
    join_log, worker_log = tmp_path / "join.log", tmp_path / "worker.log"
    # The join's changelog used SHADOW_PARTITIONS (6): PartitionsMismatch every 5 s, for ever.
    join = spawn_cli(["join", "--web-port", str(join_port), "--window-s", "4", "--grace-s",
                      "1", "--idle-close-s", "2"], env, join_log)
    worker = spawn_cli(["worker", "--candidate", "shadow.sim.traffic:build_model",
                        "--candidate-id", "c1", "--device", "cpu", "--threads", "1"],
                       env, worker_log)
    procs += [join, worker]
    _wait(lambda: metric(join_port, "shadow_join_pairs_total") == 600, 120,
          "the join paired every request", join, join_log)
    assert "(3 partitions)" in join_log.read_text()
    assert "table in rocksdb at " in join_log.read_text()  # not "store rocksdb:,"
    assert "\x1b" not in join_log.read_text()  # no cursor escapes in the log
    # Both registered with the stack's Prometheus (file-based discovery) and are scraped.
    targets_dir = prometheus_root(settings) / "targets"

    def scraped() -> set[str]:
        return {t["labels"]["job"] for t in _targets(stack.prometheus_url)  # type: ignore[arg-type]
                if t["labels"].get("prefix") == s.topic_prefix and t["health"] == "up"}

    _wait(lambda: scraped() == {"join", "worker"}, 60, "Prometheus scraped join and worker")
    mine = [p for p in targets_dir.glob("*.json") if s.topic_prefix in p.read_text()]
    assert len(mine) == 2
    # The topics as the user sees them now: the join's changelog has the inputs' count.
    listed = orjson.loads(_cli(env, "topics", "list", "--json").stdout)
    counts = {t["topic"]: (t["partitions"], t["messages"]) for t in listed}
    # Kafka records: the mirror sent the 600 requests in a few batches
    assert counts[s.topic("requests")][0] == 3 and 0 < counts[s.topic("requests")][1] < 600
    assert counts[join_changelog(s.topic_prefix)][0] == 3
    # A second pipeline with another prefix, default data dir too: it used to stop on
    # Faust's ConsistencyError ("Most likely you have removed data").
    s2 = settings_factory()
    env2 = _env(s2, stack, settings)
    assert _cli(env2, "topics", "create", "--partitions", "2").returncode == 0
    send(s2, stack.kafka_bootstrap, spec, t0, 0, 300)
    port2, log2 = free_port(), tmp_path / "join2.log"
    join2 = spawn_cli(["join", "--web-port", str(port2), "--window-s", "4"], env2, log2)
    procs.append(join2)
    _wait(lambda: metric(port2, 'shadow_join_events_total{kind="request"}') == 300, 120,
          "the second join read its requests", join2, log2)
    for p in (join, worker, join2):
        p.send_signal(signal.SIGTERM)
    for p in (join, worker, join2):
        assert p.wait(60) == 0
    assert not [p for p in targets_dir.glob("*.json") if s.topic_prefix in p.read_text()]
    # Deleting a prefix's topics needs --yes, and takes the join's own with them.
    refused = _cli(env, "topics", "delete")
    assert refused.returncode == 1 and "add --yes" in refused.stderr
    assert join_changelog(s.topic_prefix) in refused.stderr
    assert _cli(env, "topics", "delete", "--yes").returncode == 0
    assert orjson.loads(_cli(env, "topics", "list", "--json").stdout) == []


def test_a_join_whose_changelog_disagrees_stops_with_one_line(
        settings: Settings, settings_factory, admin: AdminClient,  # type: ignore[no-untyped-def]
        stack: Endpoints) -> None:
    s = settings_factory()
    env = _env(s, stack, settings)
    assert _cli(env, "topics", "create", "--partitions", "3").returncode == 0
    changelog = join_changelog(s.topic_prefix)
    admin.create_topics([NewTopic(changelog, 6, 1)])[changelog].result(timeout=30)
    run = _cli(env, "join", "--web-port", str(free_port()), timeout=60)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines == [f"error: {changelog} (the join's table) has 6 partitions, the inputs "
                     "have 3: it was made for other topics. Delete this prefix's topics and "
                     "the join's store (`shadow topics delete --yes`) and create them again, "
                     "or use another SHADOW_TOPIC_PREFIX"], run.stderr
    no_topics = _cli(_env(settings_factory(), stack, settings), "join", "--web-port",
                     str(free_port()), timeout=60)
    assert no_topics.returncode == 1 and "does not exist. Run `shadow topics create`" in \
        no_topics.stderr and "--partitions" not in no_topics.stderr
    # A worker on a prefix without topics: that one line, not its start banner before it.
    worker = _cli(_env(settings_factory(), stack, settings), "worker", "--candidate",
                  "shadow.sim.traffic:build_model", "--candidate-id", "c1", timeout=60)
    assert worker.returncode == 1 and len(worker.stderr.strip().splitlines()) == 1, \
        worker.stderr
    assert "requests does not exist" in worker.stderr


def test_a_join_that_cannot_go_on_exits_with_the_reason_instead_of_looping(
        settings: Settings, settings_factory, stack: Endpoints,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    s = settings_factory()
    env = _env(s, stack, settings)
    assert _cli(env, "topics", "create", "--partitions", "2").returncode == 0
    send(s, stack.kafka_bootstrap, TrafficSpec(seed=1), first_window_start(), 0, 50)
    # Any failure of the agent, here a bug in the core: Faust restarted the agent into the
    # same error every few seconds while the process stayed up doing nothing.
    script = tmp_path / "buggy_join.py"
    script.write_text(
        "import sys\n"
        "from consumers.join import JoinCore\n"
        "def handle(self, *args, **kwargs):\n"
        "    raise RuntimeError('a bug in the core')\n"
        "JoinCore.handle = handle\n"
        "from shadow.cli import main\n"
        f"main(['join', '--web-port', '{free_port()}', '--data-dir', '{tmp_path / 'j'}'],"
        " prog_name='shadow')\n")
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, str(script)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == \
        "error: the join stopped: RuntimeError: a bug in the core"
    assert "Traceback" not in run.stderr and time.monotonic() - t0 < 90


def test_a_join_store_left_from_deleted_topics_is_dropped_not_a_crash(
        settings: Settings, settings_factory, admin: AdminClient,  # type: ignore[no-untyped-def]
        stack: Endpoints, tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    # `shadow stack down` deleted the broker's data but left the join's store; the next
    # join on the same prefix stopped on Faust's ConsistencyError ("persisted offset ...").
    s = settings_factory()
    env = _env(s, stack, settings)
    assert _cli(env, "topics", "create", "--partitions", "2").returncode == 0
    send(s, stack.kafka_bootstrap, TrafficSpec(seed=4), first_window_start(), 0, 200)
    port, log = free_port(), tmp_path / "join.log"
    first = spawn_cli(["join", "--web-port", str(port)], env, log)
    procs.append(first)
    _wait(lambda: metric(port, 'shadow_join_events_total{kind="request"}') == 200, 90,
          "the first join read the requests", first, log)
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0
    assert "join: stopped after 200 requests" in log.read_text()
    names = [n for n in admin.list_topics(timeout=10).topics if n.startswith(s.topic_prefix)]
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        fut.result(timeout=30)
    time.sleep(2)
    assert _cli(env, "topics", "create", "--partitions", "2").returncode == 0
    check = _cli(env, "join", "--check")
    assert check.returncode == 0 and "would remove" in check.stderr
    port2 = free_port()
    second = spawn_cli(["join", "--web-port", str(port2)], env, log)
    procs.append(second)
    _wait(lambda: metric(port2, "shadow_join_pairs_total") is not None, 90,
          "the second join started", second, log)
    assert "removing" in log.read_text() and "its changelog" in log.read_text()
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
