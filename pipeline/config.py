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
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
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
    #: Codec our producers compress record batches with; consumers read any. zstd shrinks
    #: ``llm_calls`` about 7.5x and ``otlp_spans`` about 6.6x, and the stages then fetch
    #: a fraction of the bytes (bench/README.md). aiokafka's lz4 is level 9: slow.
    compression: str = "zstd"
    #: zstd level of those batches (Kafka's own default is 3). On ``llm_calls`` level 1
    #: compresses about 1.4x faster than 3 and packs as tightly (bench_compression).
    #: Neither client library takes a level per producer: it is set process-wide.
    zstd_level: int = 1

    @property
    def managed(self) -> bool:
        """True when llmspend starts and stops the broker itself."""
        return not self.bootstrap

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap or f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class PrivacySettings:
    """Message content is personal data: what is kept, and the key of its hashes."""

    #: Comma-separated tenants whose message content may be kept (opt-in).
    keep_content_tenants: str = ""
    #: Replace user ids by their keyed hash in llm_calls.
    pseudonymise_users: bool = False

    @property
    def keep_content(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.keep_content_tenants.split(",") if t.strip())


@dataclass(frozen=True)
class IngestSettings:
    """The OTLP receivers (HTTP and gRPC) that produce to ``otlp_spans``."""

    host: str = "127.0.0.1"
    http_port: int = 4318
    grpc_port: int = 4317
    #: Largest accepted request body after decompression (413 above it).
    max_body_bytes: int = 32 * 1024 * 1024
    #: ``token=tenant,token2=tenant2``; empty: auth off, tenant ``default``.
    tokens: str = ""
    #: File with one ``token=tenant`` per line (``#`` comments allowed).
    tokens_file: Path | None = None
    #: Seconds to wait for Kafka's acknowledgement before answering 503.
    produce_timeout_s: float = 10.0
    #: Requests waiting for Kafka at once before answering 429.
    max_inflight: int = 64
    #: ``Retry-After`` seconds sent with 503/429.
    retry_after_s: int = 2


@dataclass(frozen=True)
class AttributionSettings:
    """Which span (then resource) attributes name the team, user, use case and unit.

    Each value is a comma-separated list of attribute keys tried in order, first on the
    span, then on its resource.
    """

    team_keys: str = "llmspend.team,team,team.name"
    user_keys: str = "user.id,enduser.id,llmspend.user_id"
    use_case_keys: str = "llmspend.use_case,use_case"
    unit_type_keys: str = "llmspend.unit_type"
    unit_id_keys: str = "llmspend.unit_id"
    prompt_version_keys: str = "llmspend.prompt_version,prompt.version,langfuse.prompt.version"
    environment_keys: str = "deployment.environment.name,deployment.environment"

    @staticmethod
    def keys(value: str) -> tuple[str, ...]:
        return tuple(k.strip() for k in value.split(",") if k.strip())


@dataclass(frozen=True)
class PricingSettings:
    """The pricing catalog and what this organisation changes about it."""

    #: The versioned catalog (a data file); see schemas/pricing/README.md.
    catalog: Path = PROJECT_ROOT / "schemas" / "pricing" / "catalog.toml"
    #: Model aliases beyond the catalog's own, e.g. Azure deployment names:
    #: ``{"my-gpt4o-deployment" = "gpt-4o"}`` (TOML table; JSON object in the env var).
    aliases: dict = field(default_factory=dict)
    #: Per-tenant negotiated prices: ``{tenant = {discount = "0.20"}}`` or per model
    #: ``{tenant = {models = {"gpt-4o" = {input = "2.00", output = "8.00"}}}}``.
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StreamSettings:
    """The Faust worker running the stream stages."""

    #: Faust app id, also the Kafka consumer group of every stage.
    app_id: str = "llmspend"
    #: Where a new consumer group starts: ``earliest`` (nothing missed) or ``latest``.
    auto_offset_reset: str = "earliest"
    #: Kafka group session timeout: how soon a dead worker's partitions move on.
    session_timeout_s: float = 30.0
    #: Seconds without output after which the normalise stage writes an empty heartbeat
    #: record to an ``llm_calls`` partition, so its windows close without traffic.
    heartbeat_s: float = 2.0
    #: The normalise stage takes up to this many ``otlp_spans`` records per batch (a
    #: batch costs milliseconds whatever its size) ...
    normalise_batch_records: int = 16
    #: ... waiting at most this long for them to arrive (added latency when quiet).
    normalise_batch_wait_s: float = 0.05
    #: Port of the worker's Prometheus ``/metrics`` (0: off).
    metrics_port: int = 9465
    #: Stages the worker runs, comma-separated: ``normalise``, ``aggregate``,
    #: ``detect`` (session detectors, partitioned), ``detect_windows`` (detectors on
    #: closed windows; they read every llm_agg_1m partition, so run them on ONE worker)
    #: and ``lake`` (the Parquet sink). detect_windows and lake need one of the first
    #: three beside them (they start on its consumer group's first rebalance).
    stages: str = "normalise,aggregate,detect,detect_windows,lake"
    #: Freeze the objects alive once the worker is built out of Python's garbage
    #: collections (they are never garbage; pipeline/gc_clock.py).
    gc_freeze: bool = True

    @property
    def stage_set(self) -> frozenset[str]:
        return frozenset(x.strip() for x in self.stages.split(",") if x.strip())


@dataclass(frozen=True)
class AggregateSettings:
    """Rolling windows of the aggregate stage (see pipeline/aggregate.py)."""

    window_s: float = 60.0
    #: Calls whose window ended this long before their record's time are late partials.
    allowed_lateness_s: float = 30.0
    #: A closed window stays in memory this long for stragglers (producer clock jitter).
    close_grace_s: float = 30.0
    #: Duplicates (same call_id) within this time count once; also the replay depth.
    dedup_horizon_s: float = 600.0
    #: Latency at or above which a call counts as a timeout.
    timeout_ms: float = 60_000.0
    #: Error types that count as timeouts (comma-separated).
    timeout_error_types: str = ("timeout,TimeoutError,APITimeoutError,ReadTimeout,"
                                "ReadTimeoutError,deadline_exceeded,DEADLINE_EXCEEDED,504")
    #: Fallback/escalation look-back within a session.
    session_rule_window_s: float = 300.0
    #: Model ladders, cheap to large: models separated by ``<``, ladders by ``;``.
    escalation_ladders: str = (
        "gpt-4.1-nano<gpt-4.1-mini<gpt-4.1;gpt-4o-mini<gpt-4o;gpt-5-mini<gpt-5;o4-mini<o3;"
        "claude-3-5-haiku<claude-haiku-4-5<claude-sonnet-4-5<claude-opus-4-1;"
        "gemini-2.0-flash<gemini-2.5-flash<gemini-2.5-pro;mistral-small<mistral-large")
    #: llm_calls records per segment: checkpoints (and offset commits) advance once per
    #: segment; a restarted worker replays at most one segment plus the dedup horizon.
    segment_records: int = 500


@dataclass(frozen=True)
class DetectSettings:
    """Thresholds of the detectors (see the README's On-call section).

    Money is a decimal string (USD); a limit of 0 switches that check off.
    """

    #: Runaway loop: repetitions in a row of the same tool call, of the same last
    #: message to the same model, or of a short tool cycle: warning, then critical.
    loop_warn: int = 3
    loop_critical: int = 6
    #: Longest tool cycle (A-B-...-A-B) the loop detector looks for.
    cycle_max_period: int = 4
    #: Runaway session limits: steps (LLM + tool calls), tokens, cost, duration.
    session_steps_warn: int = 150
    session_steps_critical: int = 500
    session_tokens_warn: int = 2_000_000
    session_tokens_critical: int = 10_000_000
    session_cost_warn_usd: str = "5"
    session_cost_critical_usd: str = "25"
    session_duration_warn_s: float = 4 * 3600.0
    session_duration_critical_s: float = 0.0
    #: Cost velocity of one session: USD over the last minute of event time.
    cost_velocity_warn_usd_per_min: str = "2"
    cost_velocity_critical_usd_per_min: str = "10"
    #: A session incident resolves after this long without calls (event time).
    session_quiet_s: float = 120.0
    #: A session's state is forgotten this long after its last call (bounded memory).
    session_ttl_s: float = 3600.0
    #: Call ids remembered per session to ignore duplicates (client retries, replays).
    seen_calls_per_session: int = 256
    #: Spend anomaly per (tenant, service, team), on closed 1-minute windows (see
    #: pipeline/anomaly.py): minutes of baseline (median and robust scale), minutes of
    #: baseline needed before any verdict, robust z-scores and ratios to the median for
    #: warning and critical, the excess over the median (USD per minute) below which
    #: nothing fires, and how many high minutes in a row open an incident.
    spend_baseline_minutes: int = 30
    spend_warmup_minutes: int = 10
    spend_warn_z: float = 4.0
    spend_critical_z: float = 8.0
    spend_warn_ratio: float = 1.5
    spend_critical_ratio: float = 3.0
    spend_floor_usd_per_min: str = "0.05"
    spend_sustain_minutes: int = 2
    #: Minutes back under the warning level before a window incident resolves.
    window_resolve_minutes: int = 5
    #: Quality signals per (tenant, model): rates over this many minutes, with at
    #: least quality_min_calls LLM calls; warning and critical rates (a rate fires when
    #: the lower end of its 95 % Wilson interval is above the threshold; 0: off).
    quality_window_minutes: int = 5
    quality_min_calls: int = 50
    error_rate_warn: float = 0.10
    error_rate_critical: float = 0.30
    timeout_rate_warn: float = 0.05
    timeout_rate_critical: float = 0.20
    fallback_rate_warn: float = 0.10
    fallback_rate_critical: float = 0.30
    escalation_rate_warn: float = 0.40
    escalation_rate_critical: float = 0.0
    #: A closed window is evaluated once a later window was seen, or this many wall
    #: seconds after its first partial arrived.
    window_settle_s: float = 5.0
    #: A tenant with no partial for this many wall seconds is judged on the wall clock:
    #: its quiet minutes count as 0 (so its incidents resolve); window detectors
    #: otherwise follow each tenant's own event time.
    window_idle_s: float = 120.0
    #: Pipeline health (checked by the ingest server): seconds of arriving spans with
    #: no committed progress before "stalled"; the window over which a growing lag
    #: fires, and the lag (records) below which it never does; seconds between checks.
    pipeline_stall_s: float = 300.0
    pipeline_lag_window_s: float = 300.0
    pipeline_lag_floor: int = 1000
    pipeline_check_s: float = 15.0  # 0: no health checks


@dataclass(frozen=True)
class NotifySettings:
    """Where alerts are delivered (`llmspend notify`; see pipeline/notify.py)."""

    #: Targets by name: ``{oncall = {format = "slack", url = "https://hooks...",
    #: min_severity = "warning", tenants = "acme"}}``; formats ``webhook``, ``slack``,
    #: ``pagerduty`` (with ``routing_key``), ``alertmanager`` (TOML table; JSON in env).
    targets: dict = field(default_factory=dict)
    #: An incident that resolves and re-opens within this time is not re-announced.
    cooldown_s: float = 300.0
    #: HTTP timeout of one delivery.
    timeout_s: float = 10.0
    #: Longest wait between retries of a failing target (exponential backoff).
    retry_max_s: float = 60.0


@dataclass(frozen=True)
class BudgetSettings:
    """Budgets (pipeline/budget.py), checked by the window detectors on llm_agg_1m."""

    #: ``{"team:acme/support" = {daily = "100", monthly = "2000"}}``: scopes
    #: ``tenant:T``, ``team:T/TEAM``, ``user:T/USER``, ``use_case:T/USE_CASE``; USD.
    limits: dict = field(default_factory=dict)
    #: Time zone of the day and month boundaries (IANA name).
    timezone: str = "UTC"
    #: Percentages of a budget that alert once each per period (the top one: critical).
    thresholds: str = "50,80,100"
    #: Part of a period that must have passed before a projected overrun may alert.
    projection_min_elapsed: float = 0.10
    #: ``{"acme/ticket-triage" = "0.05"}``: target USD per business unit (``unit_id``)
    #: of a tenant's use case; a day above it alerts once.
    unit_costs: dict = field(default_factory=dict)
    #: Distinct units a day must have before its cost per unit is judged.
    unit_min_units: int = 20

    @property
    def threshold_list(self) -> tuple[int, ...]:
        return tuple(sorted(int(x) for x in self.thresholds.split(",") if x.strip()))


@dataclass(frozen=True)
class LakeSettings:
    """The Parquet lake sink (pipeline/lake.py; the ``lake`` stage of the worker)."""

    #: Datasets landed, comma-separated: ``calls``, ``agg_1m``, ``alerts``.
    datasets: str = "calls,agg_1m,alerts"
    #: Flush a dataset's buffer when its oldest record has waited this long (data is
    #: queryable within about this time).
    flush_s: float = 60.0
    #: ... or when its buffered record bytes reach this size.
    flush_mb: float = 128.0

    @property
    def dataset_list(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.datasets.split(",") if x.strip())


@dataclass(frozen=True)
class JobsSettings:
    """The lake's maintenance jobs (``jobs/``; ``llmspend jobs``, scheduled by the worker)."""

    #: Run compaction, rollups and retention from the worker every this many seconds
    #: (0: never; run ``llmspend jobs run`` from cron instead).
    every_s: float = 3600.0
    #: A partition is closed (compacted, rolled up) once its end is this long past.
    closed_after_s: float = 7200.0
    #: Compact a closed partition when it has at least this many files.
    compact_min_files: int = 2
    #: Seconds the files a compaction merged stay on disk, so that a query which listed
    #: them before the swap can still open them (the views drop the twins meanwhile);
    #: the first job run after that removes them. 0: at once.
    replaced_files_grace_s: float = 600.0
    #: Days of call-level rows (``calls``) kept (0: forever).
    calls_days: int = 90
    #: ``{"acme" = 30}``: per-tenant days of call-level rows, overriding ``calls_days``.
    calls_days_by_tenant: dict = field(default_factory=dict)
    #: Days of 1-minute aggregates and alerts kept (0: forever).
    agg_1m_days: int = 400
    #: Days of hourly and daily rollups kept (0: forever).
    rollup_days: int = 0


@dataclass(frozen=True)
class ReportSettings:
    """The KPI report (``llmspend report``): fixed costs to allocate per request."""

    #: Fixed monthly infrastructure cost (USD, decimal) to spread over requests.
    infra_usd_per_month: str = "0"
    #: Fixed monthly operations cost (USD, decimal: people, support) to spread too.
    ops_usd_per_month: str = "0"


#: Codecs both client libraries can write here (cramjam for aiokafka; python-snappy, lz4
#: and zstandard for kafka-python). "none" sends batches as they are.
COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
#: zstd's fast (negative) levels down to -7, then 1 to 22.
ZSTD_LEVELS = (-7, 22)
#: The zstd level Kafka's clients write when given none (aiokafka and kafka-python do).
KAFKA_DEFAULT_ZSTD_LEVEL = 3
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
    #: Secret key of the content hashes (keyed BLAKE2b). Prefer hash_key_file in production.
    hash_key: str = ""
    #: File holding the key. Without either, a random key is created once in
    #: ``<state_dir>/hash.key`` (fine for one machine; share one key across a fleet).
    hash_key_file: Path | None = None
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    lake: LakeSettings = field(default_factory=LakeSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    @property
    def broker_dir(self) -> Path:
        return self.kafka_dir or self.state_dir / "kafka"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir or self.state_dir / "data"

    def hash_key_bytes(self) -> bytes:
        """The content-hash key: configured, from a file, or created once per state dir."""
        if self.hash_key:
            return self.hash_key.encode()
        path = self.hash_key_file or self.state_dir / "hash.key"
        if self.hash_key_file is None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"hash_key_file: {exc}") from None
        if len(key) < 16:
            raise ConfigError(f"hash_key_file: key in {path} is shorter than 16 "
                              f"characters")
        return key.encode()

    def ingest_tokens(self) -> dict[str, str]:
        """Bearer token -> tenant; empty when auth is off."""
        text = self.ingest.tokens.replace(",", "\n")
        if self.ingest.tokens_file is not None:
            try:
                text += "\n" + self.ingest.tokens_file.read_text()
            except OSError as exc:
                raise ConfigError(f"ingest.tokens_file: {exc}") from None
        out: dict[str, str] = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            token, sep, tenant = line.partition("=")
            if not sep or not token.strip() or not tenant.strip():
                raise ConfigError(f"ingest tokens: expected token=tenant, got {line!r}")
            out[token.strip()] = tenant.strip()
        return out


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Turn a TOML value or an environment string into the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _coerce(name, raw, args[0])
    try:
        if annotation is dict:
            if isinstance(raw, Mapping):
                return dict(raw)
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {raw!r}")
            return value
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
    for name, port in (("kafka.port", k.port), ("kafka.controller_port", k.controller_port),
                       ("ingest.http_port", s.ingest.http_port),
                       ("ingest.grpc_port", s.ingest.grpc_port)):
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
    if k.compression not in COMPRESSION_CODECS:
        raise ConfigError(f"kafka.compression: {k.compression!r} is not one of "
                          f"{', '.join(COMPRESSION_CODECS)}")
    if not ZSTD_LEVELS[0] <= k.zstd_level <= ZSTD_LEVELS[1]:
        raise ConfigError(f"kafka.zstd_level: {k.zstd_level} is not between "
                          f"{ZSTD_LEVELS[0]} and {ZSTD_LEVELS[1]}")
    if s.stream.auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError("stream.auto_offset_reset: expected earliest or latest, got "
                          f"{s.stream.auto_offset_reset!r}")
    if s.stream.normalise_batch_records < 1 or s.stream.normalise_batch_wait_s <= 0:
        raise ConfigError("stream: normalise_batch_records must be >= 1 and "
                          "normalise_batch_wait_s > 0")
    unknown = s.stream.stage_set - {"normalise", "aggregate", "detect", "detect_windows",
                                    "lake"}
    if unknown:
        raise ConfigError(f"stream.stages: unknown stage(s) {', '.join(sorted(unknown))}")
    if s.stream.stage_set and not s.stream.stage_set & {"normalise", "aggregate", "detect"}:
        # detect_windows and lake keep their own consumers and start on the Faust app's
        # first rebalance; a Faust app with no agent subscribes to nothing and crashes.
        raise ConfigError("stream.stages: detect_windows and lake run beside at least "
                          "one of normalise, aggregate, detect (got "
                          f"{', '.join(sorted(s.stream.stage_set))})")
    a = s.aggregate
    if a.window_s <= 0 or a.allowed_lateness_s < 0 or a.close_grace_s < 0:
        raise ConfigError("aggregate: window_s must be > 0, lateness and grace >= 0")
    if a.dedup_horizon_s < max(a.window_s + a.allowed_lateness_s + a.close_grace_s,
                               a.session_rule_window_s):
        raise ConfigError("aggregate.dedup_horizon_s must cover window_s + "
                          "allowed_lateness_s + close_grace_s and session_rule_window_s")
    d = s.detect
    if not 2 <= d.loop_warn <= d.loop_critical:
        raise ConfigError("detect: need 2 <= loop_warn <= loop_critical")
    if d.session_quiet_s >= d.session_ttl_s:
        raise ConfigError("detect.session_quiet_s must be shorter than session_ttl_s")
    for name in ("session_cost_warn_usd", "session_cost_critical_usd",
                 "cost_velocity_warn_usd_per_min", "cost_velocity_critical_usd_per_min",
                 "spend_floor_usd_per_min"):
        try:
            if Decimal(getattr(d, name)) < 0:
                raise InvalidOperation
        except InvalidOperation:
            raise ConfigError(f"detect.{name}: expected a decimal amount of USD, got "
                              f"{getattr(d, name)!r}") from None
    if d.pipeline_stall_s <= 0 or d.pipeline_lag_window_s <= 0 or d.pipeline_lag_floor < 0:
        raise ConfigError("detect: pipeline_stall_s and pipeline_lag_window_s must be > 0, "
                          "pipeline_lag_floor >= 0")
    if d.pipeline_check_s >= min(d.pipeline_stall_s, d.pipeline_lag_window_s):
        raise ConfigError("detect.pipeline_check_s must be shorter than pipeline_stall_s "
                          "and pipeline_lag_window_s (several checks per window)")
    if d.spend_warmup_minutes > d.spend_baseline_minutes or d.spend_warmup_minutes < 3:
        raise ConfigError("detect: need 3 <= spend_warmup_minutes <= "
                          "spend_baseline_minutes")
    b = s.budgets
    try:
        ts = b.threshold_list
    except ValueError:
        raise ConfigError(f"budgets.thresholds: expected percentages like 50,80,100, got "
                          f"{b.thresholds!r}") from None
    if not ts or any(not 0 < t <= 1000 for t in ts):
        raise ConfigError("budgets.thresholds: percentages between 1 and 1000")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(b.timezone)
    except (ValueError, KeyError, OSError):
        raise ConfigError(f"budgets.timezone: unknown time zone {b.timezone!r}") from None
    if b.limits:
        from pipeline.budget import BudgetError, parse_budgets

        try:
            parse_budgets(b.limits)
        except BudgetError as exc:
            raise ConfigError(f"budgets.limits: {exc}") from None
    if b.unit_costs:
        from pipeline.budget import BudgetError, unit_targets

        try:
            unit_targets(b.unit_costs)
        except BudgetError as exc:
            raise ConfigError(f"budgets.unit_costs: {exc}") from None
    if b.unit_min_units < 1:
        raise ConfigError("budgets.unit_min_units: must be at least 1")
    from schemas.lake import DATASETS

    bad = set(s.lake.dataset_list) - set(DATASETS)
    if bad or not s.lake.dataset_list:
        raise ConfigError(f"lake.datasets: expected some of {', '.join(DATASETS)}, got "
                          f"{s.lake.datasets!r}")
    if s.lake.flush_s <= 0 or s.lake.flush_mb <= 0:
        raise ConfigError("lake.flush_s and lake.flush_mb must be positive")
    j = s.jobs
    if j.every_s < 0 or j.closed_after_s < 0 or j.compact_min_files < 2:
        raise ConfigError("jobs: every_s and closed_after_s >= 0, compact_min_files >= 2")
    if min(j.calls_days, j.agg_1m_days, j.rollup_days) < 0:
        raise ConfigError("jobs: retention days must be >= 0 (0: keep forever)")
    for tenant, days in j.calls_days_by_tenant.items():
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise ConfigError(f"jobs.calls_days_by_tenant.{tenant}: days >= 0, got {days!r}")
    for name in ("infra_usd_per_month", "ops_usd_per_month"):
        try:
            if Decimal(getattr(s.report, name)) < 0:
                raise InvalidOperation
        except InvalidOperation:
            raise ConfigError(f"report.{name}: expected a decimal amount of USD, got "
                              f"{getattr(s.report, name)!r}") from None
    if s.notify.targets:
        from pipeline.notify import parse_targets

        parse_targets(s.notify.targets)
    if s.ingest.http_port == s.ingest.grpc_port:
        raise ConfigError("ingest.http_port and ingest.grpc_port must differ")
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
