"""Configuration: defaults, TOML, environment precedence and clear errors."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, Settings, describe, load_settings


def test_defaults_without_file_or_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.kafka.managed
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.controller_port not in (9092, 9093)
    assert s.broker_dir == Path(".llmspend") / "kafka"
    assert s.lake_dir == Path(".llmspend") / "data"
    assert s.kafka.compression == "zstd"


def test_env_sets_nested_and_top_level_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={"LLMSPEND_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
                           "LLMSPEND_KAFKA_PORT": "39092",
                           "LLMSPEND_STATE_DIR": "/tmp/x"})
    assert not s.kafka.managed
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.kafka.port == 39092
    assert s.broker_dir == Path("/tmp/x/kafka")


def test_toml_file_then_env_wins(tmp_path):
    cfg = tmp_path / "llmspend.toml"
    cfg.write_text('state_dir = "/srv/llmspend"\n[kafka]\nport = 29092\nheap = "1g"\n')
    s = load_settings(env={"LLMSPEND_KAFKA_PORT": "39092"}, config_file=cfg)
    assert s.state_dir == Path("/srv/llmspend")
    assert s.kafka.heap == "1g"
    assert s.kafka.port == 39092  # environment beats the file


def test_llmspend_toml_in_working_directory_is_read(tmp_path, monkeypatch):
    (tmp_path / "llmspend.toml").write_text("[kafka]\ncontroller_port = 29093\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).kafka.controller_port == 29093


def test_llmspend_config_env_names_the_file(tmp_path):
    cfg = tmp_path / "other.toml"
    cfg.write_text("[kafka]\nversion = \"4.0.0\"\n")
    assert load_settings(env={"LLMSPEND_CONFIG": str(cfg)}).kafka.version == "4.0.0"


def test_missing_config_file_named_by_env_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(env={"LLMSPEND_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize("env,message", [
    ({"LLMSPEND_KAFKA_PORT": "ninety"}, "LLMSPEND_KAFKA_PORT"),
    ({"LLMSPEND_KAFKA_PORT": "70000"}, "not a TCP port"),
    ({"LLMSPEND_KAFKA_CONTROLLER_PORT": "9092"}, "must differ"),
    ({"LLMSPEND_KAFKA_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
    ({"LLMSPEND_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism"),
    ({"LLMSPEND_KAFKA_SASL_MECHANISM": "GSSAPI"}, "sasl_mechanism"),
    ({"LLMSPEND_BUDGETS_LIMITS": '{"team:acme": {"daily": "1"}}'}, "budgets.limits"),
    ({"LLMSPEND_BUDGETS_UNIT_COSTS": '{"acme": "0.05"}'}, "budgets.unit_costs"),
    ({"LLMSPEND_BUDGETS_UNIT_MIN_UNITS": "0"}, "unit_min_units"),
    ({"LLMSPEND_STREAM_STAGES": "normalise,sink"}, "unknown stage"),
    ({"LLMSPEND_KAFKA_COMPRESSION": "brotli"}, "kafka.compression"),
    ({"LLMSPEND_KAFKA_ZSTD_LEVEL": "23"}, "kafka.zstd_level"),
    ({"LLMSPEND_KAFKA_ZSTD_LEVEL": "-8"}, "kafka.zstd_level"),
    # A Faust app with no agent subscribes to nothing and crashed at start.
    ({"LLMSPEND_STREAM_STAGES": "lake"}, "run beside at least one of"),
    ({"LLMSPEND_STREAM_STAGES": "detect_windows,lake"}, "run beside at least one of"),
])
def test_bad_values_raise_config_error_naming_the_setting(env, message, tmp_path,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_toml_keys_are_rejected(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[kafka]\nbootstrapp = \"x\"\n")
    with pytest.raises(ConfigError, match="bootstrapp"):
        load_settings(env={}, config_file=cfg)


def test_invalid_toml_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[kafka\n")
    with pytest.raises(ConfigError, match=r"c\.toml"):
        load_settings(env={}, config_file=cfg)


def test_describe_lists_every_setting_with_its_env_name():
    rows = {env: dotted for env, dotted, _ in describe()}
    assert rows["LLMSPEND_KAFKA_BOOTSTRAP"] == "kafka.bootstrap"
    assert rows["LLMSPEND_STATE_DIR"] == "state_dir"
    assert rows["LLMSPEND_KAFKA_SASL_PASSWORD"] == "kafka.sasl_password"


def test_readme_documents_every_setting():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [env for env, _, _ in describe() if f"`{env}`" not in readme]
    assert not missing, f"README lacks: {missing}"


def test_security_settings_reach_every_client_alike():
    from pipeline.clients import aiokafka_config, faust_broker_config, kafka_python_config

    s = load_settings(env={"LLMSPEND_KAFKA_BOOTSTRAP": "b1:9096,b2:9096",
                           "LLMSPEND_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "LLMSPEND_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "LLMSPEND_KAFKA_SASL_USERNAME": "svc",
                           "LLMSPEND_KAFKA_SASL_PASSWORD": "pw"})
    kp, ak = kafka_python_config(s), aiokafka_config(s)
    for cfg in (kp, ak):
        assert cfg["security_protocol"] == "SASL_PLAINTEXT"
        assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
        assert (cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("svc", "pw")
    assert kp["bootstrap_servers"] == ["b1:9096", "b2:9096"]
    fa = faust_broker_config(s)
    assert fa["broker"] == "kafka://b1:9096;kafka://b2:9096"
    creds = fa["broker_credentials"]
    assert (creds.username, creds.password, creds.mechanism.value) == \
        ("svc", "pw", "SCRAM-SHA-512")


@pytest.mark.parametrize("codec", ["zstd", "lz4", "snappy", "gzip"])
def test_every_producer_compresses_with_the_configured_codec(codec):
    """The receivers (aiokafka), the stream stages (Faust) and the kafka-python producers
    (exporter, dead letters, alerts) write batches with one codec, and the codec's
    library is installed for both client libraries (a missing one only fails at the
    first send)."""
    import aiokafka.codec
    import kafka.codec

    from pipeline.clients import compression_type, faust_broker_config

    s = load_settings(env={"LLMSPEND_KAFKA_COMPRESSION": codec})
    assert compression_type(s) == codec
    assert faust_broker_config(s)["producer_compression_type"] == codec
    assert getattr(aiokafka.codec, f"has_{codec}")()
    assert getattr(kafka.codec, f"has_{codec}")()


def test_compression_none_sends_batches_as_they_are():
    from pipeline.clients import compression_type

    assert compression_type(load_settings(env={"LLMSPEND_KAFKA_COMPRESSION": "none"})) \
        is None


def test_settings_is_immutable():
    s = Settings()
    with pytest.raises(AttributeError):
        s.state_dir = Path("x")  # type: ignore[misc]
