"""Credentials for the local stack's secured servers: a private CA and the broker's TLS
certificate (openssl), a SCRAM user for Kafka and an ACL user for Redis.

Everything is generated once per stack into ``<root>/secure`` with mode 0600; secrets are
read from those files and never printed. The stack keeps its plaintext listener for its own
tools; the SASL_SSL listener is what a client from outside would be given.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from shadow.exceptions import ServerStartError
from shadow.stack import procs

SCRAM_MECHANISM = "SCRAM-SHA-512"
KAFKA_USER = "shadow"
REDIS_USER = "shadow"


@dataclass(frozen=True)
class Credentials:
    """Where a secured stack's secrets are. Reprs leave the secrets out."""

    root: Path
    kafka_user: str = KAFKA_USER
    redis_user: str = REDIS_USER
    kafka_password: str = field(default="", repr=False)
    redis_password: str = field(default="", repr=False)
    keystore_password: str = field(default="", repr=False)

    @property
    def cafile(self) -> Path:
        return self.root / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.root / "broker.p12"


def _secret_file(path: Path) -> str:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(24))  # hex: safe in SCRAM and ACL syntax alike
    return path.read_text().strip()


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run([procs.require("openssl"), *args], cwd=cwd, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise ServerStartError("kafka", f"openssl {args[0]} failed", tail=result.stderr[-2000:])


def ensure(root: Path) -> Credentials:
    """The stack's credentials, generated on first use (a CA valid 30 days, a broker
    certificate for 127.0.0.1 and localhost, random passwords)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds = Credentials(root, kafka_password=_secret_file(root / "kafka.password"),
                        redis_password=_secret_file(root / "redis.password"),
                        keystore_password=_secret_file(root / "keystore.password"))
    if creds.keystore.exists():
        return creds
    days = "30"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", days, "-subj", "/CN=shadowstream local CA", cwd=root)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out",
             "broker.csr", "-subj", "/CN=localhost", cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.pem", "-days", days, "-extfile", "san.ext",
             cwd=root)
    # PKCS12 is a keystore Kafka reads natively; the password comes from a file, not argv.
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile",
             "ca.pem", "-name", "broker", "-out", "broker.p12.partial", "-passout",
             f"file:{root / 'keystore.password'}", cwd=root)
    for name in ("ca.key", "broker.key", "broker.p12.partial"):
        (root / name).chmod(0o600)
    (root / "broker.p12.partial").rename(creds.keystore)
    return creds
