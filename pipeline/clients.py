"""Kafka clients built from one :class:`~pipeline.config.Settings`.

Every Kafka client in llmspend (kafka-python, aiokafka, Faust) is created here, so the
bootstrap servers, the security settings and the message-size limit are handed to all of
them identically.
"""

from __future__ import annotations

import ssl
from functools import partial
from typing import Any

from pipeline.config import KafkaSettings, Settings


def _ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    if "SSL" not in k.security_protocol:
        return None
    ctx = ssl.create_default_context(cafile=k.ssl_cafile or None)
    return ctx


def compression_type(settings: Settings) -> str | None:
    """The producers' batch codec (``kafka.compression``); None sends batches as they are.

    Every producer's configuration comes through here, so this is also where the zstd
    level (``kafka.zstd_level``) is put in place for both client libraries."""
    codec = settings.kafka.compression
    if codec == "zstd":
        use_zstd_level(settings.kafka.zstd_level)
    return None if codec == "none" else codec


def use_zstd_level(level: int) -> None:
    """Make aiokafka's and kafka-python's record batch builders compress zstd at
    ``level``. Neither takes a level (both always write Kafka's default, 3), and each
    builder calls a module-level ``zstd_encode``: that name is rebound, in the compiled
    builder and in the pure-Python one, to the library's own encoder at ``level``.
    Decompression does not depend on the level, so consumers are unaffected."""
    import aiokafka.codec
    import aiokafka.record.default_records as aio_py
    import kafka.record.default_records as kp_records

    encode = partial(aiokafka.codec.zstd_encode, level=level)
    modules = [aio_py]
    try:
        from aiokafka.record._crecords import default_records as aio_c
        modules.append(aio_c)
    except ImportError:     # aiokafka without its C extension: the Python builder only
        pass
    for module in modules:
        module.zstd_encode = encode
    kp_records.zstd_encode = partial(_kafka_python_zstd, level)


def _kafka_python_zstd(level: int, payload: bytes) -> bytes:
    """kafka-python's ``zstd_encode`` (python-zstandard), at ``level``."""
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(payload)


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Connection settings for kafka-python clients (producer, consumer, admin)."""
    k = settings.kafka
    cfg: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers.split(","),
        "security_protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        cfg.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                   sasl_plain_password=k.sasl_password)
    if k.ssl_cafile:
        cfg["ssl_cafile"] = k.ssl_cafile
    return cfg


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Connection settings for aiokafka clients (the library under Faust)."""
    k = settings.kafka
    cfg: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "security_protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        cfg.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                   sasl_plain_password=k.sasl_password)
    ctx = _ssl_context(k)
    if ctx is not None:
        cfg["ssl_context"] = ctx
    return cfg


def faust_broker_config(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments for the broker URL and credentials."""
    k = settings.kafka
    cfg: dict[str, Any] = {
        "broker": ";".join(f"kafka://{h}" for h in k.bootstrap_servers.split(",")),
        "producer_max_request_size": k.max_message_bytes,
        "consumer_max_fetch_size": k.max_message_bytes,
        "producer_compression_type": compression_type(settings),
    }
    if k.security_protocol == "PLAINTEXT":
        return cfg
    import faust

    ctx = _ssl_context(k)
    if k.sasl_mechanism:
        cfg["broker_credentials"] = faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password, ssl_context=ctx,
            mechanism=k.sasl_mechanism)
    elif ctx is not None:
        cfg["broker_credentials"] = faust.SSLCredentials(ctx)
    return cfg


def admin_client(settings: Settings, **overrides: Any):
    """A kafka-python admin client (callers close it)."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(client_id="llmspend-admin",
                            **{**kafka_python_config(settings), **overrides})


def producer(settings: Settings, **overrides: Any):
    """A kafka-python producer that waits for every in-sync replica (nothing lost)."""
    from kafka import KafkaProducer

    cfg: dict[str, Any] = {
        "acks": "all",
        "max_request_size": settings.kafka.max_message_bytes,
        "linger_ms": 5,
        "retries": 5,
        "client_id": "llmspend",
        "compression_type": compression_type(settings),
    }
    return KafkaProducer(**{**kafka_python_config(settings), **cfg, **overrides})


def consumer(settings: Settings, *topics: str, **overrides: Any):
    """A kafka-python consumer able to fetch our largest records."""
    from kafka import KafkaConsumer

    cfg: dict[str, Any] = {
        "max_partition_fetch_bytes": settings.kafka.max_message_bytes,
        "fetch_max_bytes": max(settings.kafka.max_message_bytes, 52428800),
        "client_id": "llmspend",
    }
    return KafkaConsumer(*topics, **{**kafka_python_config(settings), **cfg, **overrides})


def group_offsets(admin, group: str, topic: str) -> dict[int, int]:
    """partition -> committed offset of ``group`` on ``topic`` (partitions without a
    commit left out), through a kafka-python admin client."""
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if tp.topic == topic and meta.offset >= 0}


def committed_partitions(settings: Settings, group: str) -> set[tuple[str, int]]:
    """(topic, partition) of every partition ``group`` has committed an offset on."""
    admin = admin_client(settings)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition) for tp, meta in offsets.items() if meta.offset >= 0}


def end_offsets(settings: Settings, topic: str) -> dict[Any, int]:
    """TopicPartition -> end offset of every partition of ``topic``."""
    from kafka import TopicPartition

    c = consumer(settings)
    try:
        parts = c.partitions_for_topic(topic) or set()
        return c.end_offsets([TopicPartition(topic, p) for p in parts])
    finally:
        c.close()


def read_from(settings: Settings, start: dict[Any, int], done, timeout_s: float = 30.0,
              ) -> list[Any]:
    """Records from ``start`` offsets on, until ``done(records)`` is true or time is up.

    For tools and tests that follow what a stage wrote (no consumer group, no commits).
    """
    import time

    c = consumer(settings, enable_auto_commit=False)
    records: list[Any] = []
    try:
        c.assign(list(start))
        for tp, off in start.items():
            c.seek(tp, off)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(records):
            for batch in c.poll(timeout_ms=300).values():
                records.extend(batch)
    finally:
        c.close()
    return records


def read_to_end(settings: Settings, topic: str, partitions: list[int] | None = None,
                timeout_s: float = 120.0) -> list[Any]:
    """Every record of ``topic`` (or of ``partitions`` of it) from the beginning to the
    end offsets taken at the start: how stages load a changelog or an alert log."""
    import time

    from kafka import TopicPartition

    c = consumer(settings, enable_auto_commit=False)
    records: list[Any] = []
    try:
        if partitions is None:
            partitions = sorted(c.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return records
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to its end took over {timeout_s:.0f} s")
            for batch in c.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        c.close()
    return records
