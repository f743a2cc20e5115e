"""Kafka goes away under the receiver: 503 with Retry-After, recovery, nothing lost.

Runs its own broker (other ports, own state dir) so it can stop and restart it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import broker, otlp
from pipeline.cli import bring_up
from pipeline.config import load_settings
from schemas.topics import OTLP_SPANS
from tests.integration.kafka_helpers import free_port, read_records, receiver
from tests.integration.test_ingest import make_spans

pytestmark = pytest.mark.integration


def _post(url: str, body: bytes):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_503_with_retry_after_then_recovery_and_no_acknowledged_span_lost(tmp_path):
    env = {"LLMSPEND_STATE_DIR": str(tmp_path / "state"),
           "LLMSPEND_KAFKA_PORT": str(free_port()),
           "LLMSPEND_KAFKA_CONTROLLER_PORT": str(free_port()),
           "LLMSPEND_KAFKA_BOOTSTRAP": "",
           "LLMSPEND_INGEST_PRODUCE_TIMEOUT_S": "3",
           "LLMSPEND_INGEST_RETRY_AFTER_S": "7"}
    settings = load_settings(env=env)
    bring_up(settings, echo=lambda _l: None)
    acked: set[bytes] = set()
    try:
        with receiver(env) as ep:
            def send() -> tuple[int, dict, set[bytes]]:
                spans = make_spans(InMemorySpanExporter(), n=5)
                status, headers = _post(ep["traces"],
                                        encode_spans(spans).SerializeToString())
                return status, headers, {s.context.span_id.to_bytes(8, "big") for s in spans}

            status, _, ids = send()
            assert status == 200
            acked |= ids

            broker.stop(settings)
            status, headers, _ = send()
            assert status == 503
            assert headers["Retry-After"] == "7"

            broker.start(settings)
            for _ in range(20):  # the producer reconnects; clients retry as told
                status, _, ids = send()
                if status == 200:
                    acked |= ids
                    break
                assert status == 503
            assert status == 200
            status, _, ids = send()
            assert status == 200
            acked |= ids
            # The outage's reconnect chatter is collapsed (pipeline/logs.py): without
            # that, aiokafka wrote a line per retry, 20 a second.
            log = Path(ep["log"]).read_text()
            assert 1 <= log.count("Unable connect to node") <= 4, log[-3000:]

        from kafka import TopicPartition
        start = {TopicPartition(OTLP_SPANS, p): 0 for p in range(6)}
        seen: set[bytes] = set()

        def done(records) -> bool:
            seen.clear()
            for r in records:
                for rs in otlp.parse_request(r.value).resource_spans:
                    for ss in rs.scope_spans:
                        seen.update(s.span_id for s in ss.spans)
            return acked <= seen

        read_records(settings, start, done, timeout_s=30)
        assert acked <= seen, f"{len(acked - seen)} acknowledged spans missing"
    finally:
        broker.stop(settings)
