"""Session fixtures: the real Kafka, Redis and Prometheus, started through the project's stack.

Set SHADOW_KAFKA_BOOTSTRAP / SHADOW_REDIS_URL to run against existing servers instead. A server
that cannot start fails the tests with the reason from its log; nothing is skipped.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from shadow import clients
from shadow.exceptions import ShadowstreamError
from shadow.settings import Settings
from shadow.stack import Endpoints, Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        state_dir=tmp_path_factory.mktemp("state"),
        topic_prefix=f"it-{uuid.uuid4().hex[:8]}",
        partitions=3,
    )


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Endpoints]:
    local = Stack(settings)
    try:
        endpoints = local.up(with_prometheus=True)
    except ShadowstreamError as exc:
        pytest.fail(f"the test stack could not start: {exc}", pytrace=False)
    yield endpoints
    local.down()


@pytest.fixture(scope="session")
def admin(settings: Settings, stack: Endpoints) -> AdminClient:
    return clients.admin(settings, stack.kafka_bootstrap)


@pytest.fixture
def topic_factory(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics; they are deleted after the test."""
    made: list[str] = []

    def make(partitions: int = 3, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
        made.append(name)
        return name

    yield make
    if made:
        for fut in admin.delete_topics(made, operation_timeout=30).values():
            fut.result(timeout=30)


@pytest.fixture
def settings_factory(settings: Settings) -> Callable[..., Settings]:
    """Settings like the session's, with a fresh topic prefix (so topics never collide)."""

    def make(**overrides: object) -> Settings:
        fields = {"topic_prefix": f"it-{uuid.uuid4().hex[:8]}", **overrides}
        return settings.model_copy(update=fields)

    return make


@pytest.fixture
def consumer_factory(settings: Settings, stack: Endpoints) -> Callable[[str], object]:
    def make(group: str) -> object:
        return clients.consumer(settings, stack.kafka_bootstrap, group)

    return make


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts (CLI subprocesses): killed after it if still running."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.fixture
def pipeline(settings_factory: Callable[..., Settings], admin: AdminClient,
             stack: Endpoints) -> Settings:
    """Fresh topics of the whole pipeline (3 partitions each)."""
    from shadow.topics import create_topics, topic_specs

    s = settings_factory()
    create_topics(admin, topic_specs(s))
    return s
