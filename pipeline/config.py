"""One settings object for the whole pipeline.

Values come, lowest precedence first, from the dataclass defaults below, an optional
TOML file (``llmspend.toml`` in the working directory, or the file named by
``LLMSPEND_CONFIG``) and ``LLMSPEND_*`` environment variables.

The naming rule is mechanical so that the README table, the TOML file and the
environment never disagree: the field ``kafka.bootstrap`` is ``[kafka] bootstrap`` in
TOML and ``LLMSPEND_KAFKA_BOOTSTRAP`` in the environment; a top-level field such as
``state_dir`` is ``state_dir`` at the top of the TOML file and ``LLMSPEND_STATE_DIR``.
Later stages add their own section dataclasses to :class:`Settings`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "LLMSPEND_"
DEFAULT_CONFIG_FILE = "llmspend.toml"

#: The project checkout (``pipeline/..``): where ``infra/`` lives for an editable install.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is, how to reach it securely, and how to run a local one."""

    #: Existing cluster to use (``host:port[,host:port]``). Empty: llmspend runs its own.
    bootstrap: str = ""
    #: Client listener of the local broker (127.0.0.1).
    port: int = 9092
    #: KRaft controller listener of the local broker; not 9093 (Alertmanager's default).
    controller_port: int = 19093
    #: Apache Kafka version resolved from Maven Central for the local broker.
    version: str = "4.1.1"
    #: Where the resolved broker jars are cached, shared by every checkout.
    jar_cache: Path = Path(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    ) / "llmspend" / "kafka"
    #: Largest record the broker, the topics and our producers accept (large OTLP batches).
    max_message_bytes: int = 8 * 1024 * 1024
    #: Default log retention of the local broker (a laptop, not a data centre).
    log_retention_hours: int = 24
    #: Java heap of the local broker.
    heap: str = "512m"
    #: Seconds to wait for the local broker to answer a metadata request after start.
    start_timeout_s: float = 90.0
    java: str = "java"
    mvn: str = "mvn"
    # Security, handed identically to kafka-python, aiokafka and Faust (pipeline/clients.py).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""

    @property
    def managed(self) -> bool:
        """True when llmspend starts and stops the broker itself."""
        return not self.bootstrap

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap or f"127.0.0.1:{self.port}"


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Settings:
    """Every tunable of llmspend; build it with :func:`load_settings`."""

    #: Root of everything llmspend writes locally (broker data, pid files, lake).
    state_dir: Path = Path(".llmspend")
    #: Local broker's data folder; default ``<state_dir>/kafka``.
    kafka_dir: Path | None = None
    #: Parquet lake; default ``<state_dir>/data``.
    data_dir: Path | None = None
    #: The declarative topic list.
    topics_file: Path = PROJECT_ROOT / "infra" / "topics.toml"
    kafka: KafkaSettings = field(default_factory=KafkaSettings)

    @property
    def broker_dir(self) -> Path:
        return self.kafka_dir or self.state_dir / "kafka"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir or self.state_dir / "data"


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Turn a TOML value or an environment string into the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _coerce(name, raw, args[0])
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean, got {raw!r}")
        if annotation is int:
            if isinstance(raw, bool):
                raise ValueError(f"expected an integer, got {raw!r}")
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is Path:
            return Path(str(raw)).expanduser()
        if annotation is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError(f"expected a string, got {raw!r}")
            return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    raise ConfigError(f"{name}: unsupported setting type {annotation!r}")


def _build(cls: type, toml: Mapping[str, Any], env: Mapping[str, str], prefix: str,
           where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(toml) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where or 'top level'}: "
                          f"{', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        env_name = f"{prefix}{f.name.upper()}"
        dotted = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(annotation):
            section = toml.get(f.name, {})
            if not isinstance(section, Mapping):
                raise ConfigError(f"{dotted}: expected a [{f.name}] table")
            values[f.name] = _build(annotation, section, env, f"{env_name}_", dotted)
            continue
        if env_name in env:
            values[f.name] = _coerce(env_name, env[env_name], annotation)
        elif f.name in toml:
            values[f.name] = _coerce(dotted, toml[f.name], annotation)
    return cls(**values)


def _validate(s: Settings) -> None:
    k = s.kafka
    for name, port in (("kafka.port", k.port), ("kafka.controller_port", k.controller_port)):
        if not 0 < port < 65536:
            raise ConfigError(f"{name}: {port} is not a TCP port")
    if k.port == k.controller_port:
        raise ConfigError("kafka.port and kafka.controller_port must differ")
    if k.security_protocol not in _SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: {k.security_protocol!r} is not one of "
                          f"{', '.join(_SECURITY_PROTOCOLS)}")
    if k.sasl_mechanism not in _SASL_MECHANISMS:
        raise ConfigError(f"kafka.sasl_mechanism: {k.sasl_mechanism!r} is not one of "
                          f"{', '.join(m for m in _SASL_MECHANISMS if m)}")
    if k.security_protocol.startswith("SASL") and not (k.sasl_mechanism and k.sasl_username):
        raise ConfigError("kafka.security_protocol SASL_* needs kafka.sasl_mechanism and "
                          "kafka.sasl_username")
    if k.max_message_bytes < 1024:
        raise ConfigError("kafka.max_message_bytes: must be at least 1024")


def load_settings(env: Mapping[str, str] | None = None,
                  config_file: Path | str | None = None) -> Settings:
    """Read the settings; ``env`` defaults to ``os.environ`` (tests pass their own)."""
    env = os.environ if env is None else env
    path = Path(config_file) if config_file else None
    if path is None and env.get(f"{ENV_PREFIX}CONFIG"):
        path = Path(env[f"{ENV_PREFIX}CONFIG"])
        if not path.is_file():
            raise ConfigError(f"LLMSPEND_CONFIG: no such file {path}")
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = Path(DEFAULT_CONFIG_FILE)
    toml: dict[str, Any] = {}
    if path is not None:
        try:
            toml = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    settings = _build(Settings, toml, env, ENV_PREFIX, "")
    _validate(settings)
    return settings


def describe(cls: type = Settings, prefix: str = ENV_PREFIX,
             where: str = "") -> list[tuple[str, str, str]]:
    """(env var, TOML key, default) rows for every setting: the README table's source."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        env_name = f"{prefix}{f.name.upper()}"
        dotted = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{env_name}_", dotted)
        else:
            rows.append((env_name, dotted, repr(getattr(defaults, f.name))))
    return rows
