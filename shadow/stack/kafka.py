"""A real single-node Apache Kafka broker in KRaft mode, started with ``java``.

The jars are resolved once from Maven Central into a per-user cache; each ``up`` formats storage
on a fresh data directory and waits until the broker opens its client port, which it does only
once it is ready.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shadow.exceptions import ServerStartError
from shadow.stack import procs
from shadow.stack.secure import SCRAM_MECHANISM, Credentials

READY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class KafkaLayout:
    """Where one broker keeps its config, data and logs under the stack's state dir."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log(self) -> Path:
        return self.logs / "server.log"

    @property
    def stdout(self) -> Path:
        return self.logs / "stdout.log"


# Kafka 4 moved its broker from log4j 1 (reload4j) to log4j2; the POM names neither binding.
_RELOAD4J = (("org.slf4j", "slf4j-reload4j", "1.7.36"), ("ch.qos.reload4j", "reload4j", "1.2.25"))
_LOG4J2 = (("org.slf4j", "slf4j-api", "2.0.16"),  # the broker's POM would pick 1.7, too old
           ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
           ("org.apache.logging.log4j", "log4j-core", "2.24.3"))


def uses_log4j2(version: str) -> bool:
    return int(version.split(".")[0]) >= 4


def _logging_dependencies(version: str) -> str:
    deps = _LOG4J2 if uses_log4j2(version) else _RELOAD4J
    return "\n".join(f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
                     f"<version>{v}</version></dependency>" for g, a, v in deps)


def jars(cache_dir: Path, version: str, *, quiet: bool = True) -> Path:
    """The folder of the broker's runtime jars, resolved with Maven on first use."""
    libs = cache_dir / "kafka" / version / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = procs.require("mvn")
    work = cache_dir / "kafka" / version
    work.mkdir(parents=True, exist_ok=True)
    template = resources.files("shadow.stack").joinpath("kafka-pom.xml").read_text()
    (work / "pom.xml").write_text(template.replace("@KAFKA_VERSION@", version).replace(
        "@LOGGING_DEPENDENCIES@", _logging_dependencies(version)))
    staging = work / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn, "-B", "-f", str(work / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        out = (result.stdout or "") + (result.stderr or "")
        tail = "\n".join(out.splitlines()[-20:])
        raise ServerStartError("kafka", f"Maven could not resolve kafka_2.13:{version}", tail=tail)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.write_text(version + "\n")
    return libs


@dataclass(frozen=True)
class SecureListener:
    """A SASL_SSL listener (SCRAM over TLS) opened beside the plaintext one."""

    port: int
    credentials: Credentials


def _secure_properties(secure: SecureListener) -> list[str]:
    c = secure.credentials
    prefix = "listener.name.sasl_ssl."
    return [
        f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"{prefix}{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        f"{prefix}ssl.keystore.type=PKCS12",
        f"{prefix}ssl.keystore.location={c.keystore}",
        f"{prefix}ssl.keystore.password={c.keystore_password}",
        f"{prefix}ssl.key.password={c.keystore_password}",
    ]


def server_properties(layout: KafkaLayout, port: int, controller_port: int,
                      secure: SecureListener | None = None) -> str:
    listeners = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if secure is not None:
        listeners.append(f"SASL_SSL://127.0.0.1:{secure.port}")
        protocols.append("SASL_SSL:SASL_SSL")
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners={','.join(listeners)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={','.join(protocols)}",
        *(_secure_properties(secure) if secure is not None else []),
        f"log.dirs={layout.data}",
        "num.partitions=1",
        # One node: every internal topic has a single replica.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        # Topics are created explicitly with the partition counts the join needs.
        "auto.create.topics.enable=false",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ])


def cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding.

    Like Kafka's own Uuid.randomUuid, it never starts with "-": the storage tool's
    argument parser would read such an id as an option (a cold CI run hit that, 1 in 64).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _java_cmd(libs: Path, layout: KafkaLayout, main: str, *args: str) -> list[str]:
    return [
        procs.require("java"),
        "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{layout.root / 'log4j.properties'}",
        f"-Dlog4j2.configurationFile={layout.root / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={layout.logs}",
        "-cp", f"{libs}/*",
        main, *args,
    ]


def _hide(text: str, secure: SecureListener | None) -> str:
    if secure is None:
        return text
    return text.replace(secure.credentials.kafka_password, "***")


def start(
    root: Path, cache_dir: Path, version: str, port: int | None = None,
    secure: SecureListener | None = None,
) -> tuple[int, int, int]:
    """Format (on first start) and start the broker; returns (pid, port, controller port).
    With ``secure``, a SASL_SSL listener opens too and its SCRAM user is created."""
    libs = jars(cache_dir, version)
    layout = KafkaLayout(root)
    layout.logs.mkdir(parents=True, exist_ok=True)
    for name in ("log4j.properties", "log4j2.properties"):  # 3.x reads one, 4.x the other
        text = resources.files("shadow.stack").joinpath(f"kafka-{name}").read_text()
        (layout.root / name).write_text(text)
    port = port or procs.free_port()
    controller_port = procs.free_port()
    layout.config.touch(mode=0o600)  # it holds the keystore's password when secured
    layout.config.write_text(server_properties(layout, port, controller_port, secure))
    if not (layout.data / "meta.properties").exists():
        shutil.rmtree(layout.data, ignore_errors=True)
        scram = [] if secure is None else [
            "--add-scram", f"{SCRAM_MECHANISM}=[name={secure.credentials.kafka_user},"
                           f"password={secure.credentials.kafka_password}]"]
        fmt = _java_cmd(libs, layout, "kafka.tools.StorageTool",
                        "format", f"--cluster-id={cluster_id()}", "-c", str(layout.config),
                        *scram)
        result = subprocess.run(fmt, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerStartError("kafka", "formatting storage failed", layout.log,
                                   _hide(result.stdout + result.stderr, secure)[-3000:])
    pid = procs.spawn(_java_cmd(libs, layout, "kafka.Kafka", str(layout.config)),
                      layout.stdout, cwd=layout.root)
    ports = [port] if secure is None else [port, secure.port]
    procs.wait_ready("kafka", lambda: all(procs.port_open(p) for p in ports), pid, layout.log,
                     READY_TIMEOUT_S)
    return pid, port, controller_port
