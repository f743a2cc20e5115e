"""The real local Kafka broker: topics, produce/consume with both client libraries, and the
up/status/down lifecycle of the CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import TopicPartition

from pipeline import broker
from pipeline.clients import admin_client, aiokafka_config, consumer, producer
from pipeline.config import load_settings
from pipeline.topics import existing_partitions, load_topics
from schemas.topics import LLM_ALERTS, OTLP_SPANS
from tests.integration.kafka_helpers import free_port, processes_of

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_declared_topics_exist_with_declared_partitions(kafka_settings):
    admin = admin_client(kafka_settings)
    try:
        existing = existing_partitions(admin)
    finally:
        admin.close()
    for spec in load_topics(kafka_settings.topics_file):
        assert existing.get(spec.name) == spec.partitions, spec.name


def test_kafka_python_round_trip_of_a_large_otlp_sized_record(kafka_settings):
    """A record near the 8 MB limit (large OTLP batches) goes through and comes back."""
    payload = os.urandom(7 * 1024 * 1024)
    key = uuid.uuid4().bytes
    p = producer(kafka_settings)
    try:
        md = p.send(OTLP_SPANS, payload, key=key).get(timeout=30)
    finally:
        p.close()
    tp = TopicPartition(OTLP_SPANS, md.partition)
    c = consumer(kafka_settings, enable_auto_commit=False)
    try:
        c.assign([tp])
        c.seek(tp, md.offset)
        got = []
        for _ in range(30):
            got += [r for b in c.poll(timeout_ms=1000).values() for r in b]
            if got:
                break
    finally:
        c.close()
    assert got and got[0].key == key and got[0].value == payload


def test_aiokafka_round_trip(kafka_settings):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    value = uuid.uuid4().hex.encode()

    async def go() -> bytes:
        p = AIOKafkaProducer(acks="all", **aiokafka_config(kafka_settings))
        await p.start()
        try:
            md = await p.send_and_wait(LLM_ALERTS, value)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(enable_auto_commit=False, **aiokafka_config(kafka_settings))
        await c.start()
        try:
            tp = TopicPartition(LLM_ALERTS, md.partition)
            from aiokafka import TopicPartition as ATP
            atp = ATP(tp.topic, tp.partition)
            c.assign([atp])
            c.seek(atp, md.offset)
            record = await asyncio.wait_for(c.getone(), timeout=30)
            return record.value
        finally:
            await c.stop()

    assert asyncio.run(go()) == value


def test_auto_create_is_off(kafka_settings):
    from kafka.errors import KafkaTimeoutError

    p = producer(kafka_settings, max_block_ms=3000)
    try:
        with pytest.raises(KafkaTimeoutError):
            p.send(f"typo-{uuid.uuid4().hex}", b"x").get(timeout=5)
    finally:
        p.close()


def test_up_is_idempotent_and_status_reports_the_broker(kafka_settings):
    if not kafka_settings.kafka.managed:
        pytest.skip("external broker: llmspend does not manage it")
    before = broker.running_pid(kafka_settings)
    first = _cli("up", "--kafka-only")
    assert first.returncode == 0, first.stderr
    assert "already running" in first.stdout
    assert broker.running_pid(kafka_settings) == before
    st = _cli("status")
    assert st.returncode == 0, st.stderr
    assert f"running (pid {before})" in st.stdout
    assert "127.0.0.1:9092" in st.stdout
    for spec in load_topics(kafka_settings.topics_file):
        line = next(x for x in st.stdout.splitlines() if x.split()[:1] == [spec.name])
        assert line.split()[1] == str(spec.partitions)


def _our_java_processes(props: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"kafka.Kafka" in cmd and str(props).encode() in cmd:
                pids.append(int(entry.name))
    return pids


def test_full_lifecycle_on_other_ports_leaves_no_process(tmp_path):
    """up twice -> one broker, one receiver, one worker; status; down; nothing left."""
    state = tmp_path / "state"
    env = {"LLMSPEND_STATE_DIR": str(state),
           "LLMSPEND_KAFKA_PORT": str(free_port()),
           "LLMSPEND_KAFKA_CONTROLLER_PORT": str(free_port()),
           "LLMSPEND_INGEST_HTTP_PORT": str(free_port()),
           "LLMSPEND_INGEST_GRPC_PORT": str(free_port()),
           "LLMSPEND_KAFKA_BOOTSTRAP": ""}
    props = (state / "kafka" / "server.properties").resolve()
    try:
        first = _cli("up", env=env)
        assert first.returncode == 0, first.stderr
        again = _cli("up", env=env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("already running") == 3  # broker, receiver, worker
        assert len(_our_java_processes(props)) == 1
        assert len(processes_of(b"ingest", state)) == 1
        assert len(processes_of(b"worker", state)) == 1
        st = _cli("status", env=env)
        assert st.returncode == 0
        assert st.stdout.count("running (pid") == 3
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0 and "kafka     stopped" in down.stdout
    assert "ingest    stopped" in down.stdout and "worker    stopped" in down.stdout
    assert _our_java_processes(props) == []
    assert processes_of(b"ingest", state) == [] and processes_of(b"worker", state) == []
    second = _cli("down", env=env)
    assert second.returncode == 0 and "not running" in second.stdout
    st = _cli("status", env=env)
    assert st.returncode == 1 and "not running" in st.stdout


def test_port_taken_by_a_stranger_is_one_clear_line(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        out = _cli("up", env={"LLMSPEND_STATE_DIR": str(tmp_path),
                              "LLMSPEND_KAFKA_PORT": str(port),
                              "LLMSPEND_KAFKA_CONTROLLER_PORT": str(free_port()),
                              "LLMSPEND_KAFKA_BOOTSTRAP": ""})
    assert out.returncode == 2
    assert f"port {port} (kafka.port) is taken" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_java_is_one_clear_line(tmp_path):
    out = _cli("up", env={"LLMSPEND_STATE_DIR": str(tmp_path),
                          "LLMSPEND_KAFKA_PORT": str(free_port()),
                          "LLMSPEND_KAFKA_CONTROLLER_PORT": str(free_port()),
                          "LLMSPEND_KAFKA_JAVA": "/nonexistent/java",
                          "LLMSPEND_KAFKA_BOOTSTRAP": ""})
    assert out.returncode == 2
    assert "needs Java 17+" in out.stderr and "Traceback" not in out.stderr


def test_settings_of_the_test_session_point_at_a_live_broker(kafka_settings):
    st = broker.status(kafka_settings)
    assert st.reachable
    assert load_settings().kafka.bootstrap_servers == kafka_settings.kafka.bootstrap_servers


def test_compressed_batches_of_each_client_are_read_by_the_other_and_shrink_on_the_broker(
        kafka_settings):
    """kafka.compression (zstd, the default) reaches both client libraries: what one writes
    the other reads unchanged, and the broker keeps a fraction of the bytes (NDJSON lines
    like llm_calls compress well)."""
    from dataclasses import replace

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATP
    from kafka.admin import NewTopic

    from pipeline.clients import compression_type

    kafka_settings = replace(kafka_settings,
                             kafka=replace(kafka_settings.kafka, compression="zstd"))
    topic = f"llmspend-test-codec-{uuid.uuid4().hex[:8]}"
    admin = admin_client(kafka_settings)
    admin.create_topics([NewTopic(topic, 1, 1)])
    lines = [(f'{{"call_id":"{uuid.uuid4().hex}","tenant":"acme","service":"support",'
              f'"model":"gpt-4o-mini","input_tokens":{i},"cost_usd":"0.000{i}"}}\n' * 20
              ).encode() for i in range(200)]
    try:
        p = producer(kafka_settings)
        try:
            for v in lines[:100]:
                p.send(topic, v)
            p.flush(timeout=30)
        finally:
            p.close()

        async def aio_side() -> list[bytes]:
            ap = AIOKafkaProducer(acks="all", compression_type=compression_type(
                kafka_settings), **aiokafka_config(kafka_settings))
            await ap.start()
            try:
                for v in lines[100:]:
                    await ap.send(topic, v)
                await ap.flush()
            finally:
                await ap.stop()
            c = AIOKafkaConsumer(enable_auto_commit=False, **aiokafka_config(kafka_settings))
            await c.start()
            try:
                c.assign([ATP(topic, 0)])
                c.seek(ATP(topic, 0), 0)
                got: list[bytes] = []
                while len(got) < len(lines):
                    batches = await asyncio.wait_for(c.getmany(timeout_ms=1000), 30)
                    got += [r.value for rs in batches.values() for r in rs]
                return got
            finally:
                await c.stop()

        assert asyncio.run(aio_side()) == lines
        c = consumer(kafka_settings, enable_auto_commit=False)
        try:
            c.assign([TopicPartition(topic, 0)])
            c.seek(TopicPartition(topic, 0), 0)
            got: list[bytes] = []
            for _ in range(30):
                got += [r.value for b in c.poll(timeout_ms=1000).values() for r in b]
                if len(got) >= len(lines):
                    break
        finally:
            c.close()
        assert got == lines
        sizes = [part["partition_size"]
                 for b in admin.describe_log_dirs([topic]) for d in b["log_dirs"]
                 for t in d["topics"] if t["name"] == topic for part in t["partitions"]]
        assert sizes and 0 < sum(sizes) < sum(map(len, lines)) / 3
    finally:
        admin.delete_topics([topic])
        admin.close()
