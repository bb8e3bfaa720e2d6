"""One settings object for the whole project: env vars prefixed SHADOW_, or ``shadow.toml``.

Kafka options are held once here and mapped to both clients' spellings (librdkafka's dotted keys
for confluent-kafka, keyword arguments for aiokafka/Faust) in one place, so SASL and SSL options
pass through to every consumer and producer alike.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.exceptions import ConfigError, closest
from schemas.topics import ROLES, topic_name

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

TOPIC_NAMES = ROLES
ENV_PREFIX = "SHADOW_"
TOML_FILE = "shadow.toml"


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "shadowstream"


class Settings(BaseSettings):
    """Where the servers are and how topics are named. Every field reads ``SHADOW_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, toml_file=TOML_FILE, frozen=True, extra="forbid"
    )

    kafka_bootstrap: str | None = None
    """Existing Kafka cluster (host:port,...). Unset: the local stack's broker is used."""
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    """Kafka security.protocol, passed to every client."""
    kafka_sasl_mechanism: SaslMechanism | None = None
    """SASL mechanism when the protocol is SASL_*."""
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates."""
    kafka_ssl_certfile: Path | None = None
    """Client certificate, for mutual TLS."""
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    kafka_timeout_s: float = Field(15.0, gt=0, le=600)
    """How long a command waits for Kafka to answer before it gives up with one line."""

    redis_url: str | None = None
    """Existing Redis (redis:// or rediss://). Unset: the local stack's Redis is used."""
    prometheus_url: str | None = None
    """Existing Prometheus. Unset: the local stack's, when started with --prometheus."""

    topic_prefix: str = Field("shadow", pattern=r"^[A-Za-z0-9._-]+$")
    """Prefix of every topic: <prefix>.requests, <prefix>.outputs, ..."""
    partitions: int = Field(6, ge=1, le=1024)
    """Partitions of the requests and outputs topics (they must be equal for the join)."""

    state_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"))
    """Where the local stack keeps its data, logs and process records."""
    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))
    """Where downloaded Kafka jars are kept (shared by every checkout of this user)."""
    kafka_version: str = "3.9.1"
    """Apache Kafka version the local stack runs."""
    stack_secure: bool = False
    """The local stack also opens a Kafka SASL_SSL listener (SCRAM-SHA-512 over TLS) and
    runs Redis with an ACL user and password instead of the open default user."""

    @field_validator("kafka_bootstrap", "redis_url", "prometheus_url")
    @classmethod
    def _blank_is_unset(cls, v: str | None) -> str | None:
        return v or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then shadow.toml.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    def __repr_args__(self) -> Any:
        # A Redis URL may carry a password; SecretStr fields hide themselves.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" and value else value

    def topic(self, name: str) -> str:
        """Full topic name for one of TOPIC_NAMES."""
        return topic_name(self.topic_prefix, name)

    def confluent_config(self, bootstrap: str) -> dict[str, str]:
        """librdkafka configuration (confluent-kafka) for the given bootstrap servers."""
        conf = {"bootstrap.servers": bootstrap, "security.protocol": self.kafka_security_protocol}
        optional = {
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": _reveal(self.kafka_sasl_password),
            "ssl.ca.location": self.kafka_ssl_cafile,
            "ssl.certificate.location": self.kafka_ssl_certfile,
            "ssl.key.location": self.kafka_ssl_keyfile,
            "ssl.key.password": _reveal(self.kafka_ssl_key_password),
        }
        conf.update({k: str(v) for k, v in optional.items() if v is not None})
        return conf

    def aiokafka_config(self, bootstrap: str) -> dict[str, Any]:
        """aiokafka keyword arguments (also what Faust's broker credentials are built from)."""
        conf: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl_mechanism"] = self.kafka_sasl_mechanism
            conf["sasl_plain_username"] = self.kafka_sasl_username
            conf["sasl_plain_password"] = _reveal(self.kafka_sasl_password)
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            conf["ssl_context"] = self.ssl_context()
        return conf

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile:
            ctx.load_cert_chain(
                str(self.kafka_ssl_certfile),
                str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                _reveal(self.kafka_ssl_key_password),
            )
        return ctx


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ./shadow.toml. A mistake (an unknown key or
    variable, a wrong type) is one ConfigError naming where it is and the closest valid
    name, never a silent default."""
    fields = set(Settings.model_fields)
    for var in sorted(os.environ):
        if var.startswith(ENV_PREFIX) and var[len(ENV_PREFIX):].lower() not in fields:
            hint = closest(var[len(ENV_PREFIX):].lower(), fields)
            raise ConfigError(var, "unknown setting", hint=f"{ENV_PREFIX}{hint.upper()}"
                              if hint else "")
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(Path(TOML_FILE).resolve()), f"not TOML: {exc}") from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        env = f"{ENV_PREFIX}{key.upper()}"
        source = env if env in os.environ else str(Path(TOML_FILE).resolve())
        if err["type"] == "extra_forbidden":
            raise ConfigError(source, f"unknown key {key!r}",
                              hint=closest(key, fields)) from None
        got = "" if "password" in key else f" (got {err.get('input')!r})"
        raise ConfigError(source, f"{err['msg']}{got}", key=key) from None


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def redact_url(url: str) -> str:
    """The URL with the password of its user info replaced by ***, for logs and screens."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
