from __future__ import annotations

from pathlib import Path

import pytest

from shadow.settings import Settings


def test_env_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHADOW_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("SHADOW_TOPIC_PREFIX", "team-a")
    s = Settings()
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.topic("outputs") == "team-a.outputs"
    assert s.redis_url is None
    assert s.partitions == 6
    with pytest.raises(ValueError, match="unknown topic"):
        s.topic("nope")


def test_toml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shadow.toml").write_text('topic_prefix = "fromfile"\npartitions = 12\n')
    assert Settings().partitions == 12
    assert Settings().topic_prefix == "fromfile"
    monkeypatch.setenv("SHADOW_PARTITIONS", "3")
    assert Settings().partitions == 3


def test_blank_env_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_KAFKA_BOOTSTRAP", "")
    assert Settings().kafka_bootstrap is None


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="partitions"):
        Settings(partitions=0)
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        Settings(kafka_security_protocol="TLS")
    with pytest.raises(ValueError, match="topic_prefix"):
        Settings(topic_prefix="has space")


def test_sasl_ssl_pass_through_to_both_clients(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # ssl_context() is not built here: aiokafka gets it when TLS is on
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=ca,
    )
    conf = s.confluent_config("b:9092")
    assert conf == {
        "bootstrap.servers": "b:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(ca),
    }
    aio = s.aiokafka_config("b:9092")
    assert aio == {
        "bootstrap_servers": "b:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret",
    }


def test_secrets_stay_out_of_reprs() -> None:
    s = Settings(kafka_sasl_password="hunter2", kafka_ssl_key_password="hunter3")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert "hunter3" not in repr(s)


def test_unknown_keys_and_variables_are_refused_with_the_closest_name(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from schemas import ConfigError
    from shadow.settings import load_settings

    monkeypatch.chdir(tmp_path)
    # `topic_prefx` was accepted and the pipeline ran on shadow.* topics.
    (tmp_path / "shadow.toml").write_text('topic_prefx = "team-a"\n')
    with pytest.raises(ConfigError, match=r"shadow.toml: unknown key 'topic_prefx' "
                                          r"\(did you mean 'topic_prefix'\?\)"):
        load_settings()
    (tmp_path / "shadow.toml").write_text('partitions = "six"\n')
    with pytest.raises(ConfigError, match=r"shadow.toml: partitions: .*valid integer"):
        load_settings()
    (tmp_path / "shadow.toml").unlink()
    monkeypatch.setenv("SHADOW_TOPIC_PREFX", "team-a")
    with pytest.raises(ConfigError, match=r"SHADOW_TOPIC_PREFX: unknown setting \(did you "
                                          r"mean 'SHADOW_TOPIC_PREFIX'\?\)"):
        load_settings()
    monkeypatch.delenv("SHADOW_TOPIC_PREFX")
    monkeypatch.setenv("SHADOW_PARTITIONS", "0")
    with pytest.raises(ConfigError, match=r"SHADOW_PARTITIONS: partitions: .*greater than"):
        load_settings()


@pytest.mark.parametrize("shape", ["Tolerances", "RuleSet", "JudgeConfig"])
def test_every_config_file_fails_the_same_way(tmp_path: Path, shape: str) -> None:
    """One house rule: a file that is missing, not TOML or not text is one ConfigError
    naming the file, whatever it configures."""
    import consumers
    from consumers.verdict import JudgeConfig
    from schemas import ConfigError

    load = {"Tolerances": consumers.Tolerances, "RuleSet": consumers.RuleSet,
            "JudgeConfig": JudgeConfig}[shape].from_file
    bad = {"missing.toml": None, "syntax.toml": b"[default\n", "binary.toml": b"\xff\xfe\x00"}
    for name, content in bad.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    typo = tmp_path / "typo.toml"
    typo.write_text("defualt = {}\n" if shape == "Tolerances" else "rulez = []\n"
                    if shape == "RuleSet" else "alpah = 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean|known:"):
        load(typo)
