"""A ``SpanExporter`` for the OpenTelemetry Python SDK that writes straight to Kafka.

For Python apps that prefer no extra hop: each export becomes the same ``otlp_spans``
records the receivers write (an OTLP ExportTraceServiceRequest, content replaced by keyed
hashes, split under the record limit, tenant in the ``llmspend-tenant`` header).

Use it behind the SDK's ``BatchSpanProcessor`` so spans are batched::

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from pipeline.ingest.exporter import KafkaSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(KafkaSpanExporter()))
    ...
    provider.shutdown()   # flushes the processor, then the exporter's Kafka producer

``export`` returns SUCCESS only after Kafka acknowledged every record (``acks=all``);
``force_flush`` waits for records in flight; ``shutdown`` flushes and closes the producer
(call ``TracerProvider.shutdown()`` at exit, or spans still queued are lost).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pipeline import otlp
from pipeline.config import Settings, load_settings
from pipeline.ingest.core import RECORD_OVERHEAD
from schemas.topics import OTLP_SPANS

log = logging.getLogger(__name__)


def span_records(spans: Sequence[ReadableSpan], settings: Settings, tenant: str,
                 hash_key: bytes) -> list[bytes]:
    """The ``otlp_spans`` record values of one export: the spans as an OTLP request,
    content replaced by keyed hashes (unless ``tenant`` opted in), split under the record
    limit. Pure, so benchmarks measure the very records the exporter writes."""
    req = encode_spans(spans)
    otlp.sanitise_request(req, hash_key=hash_key,
                          keep_content=tenant in settings.privacy.keep_content)
    return otlp.split_request(req, settings.kafka.max_message_bytes - RECORD_OVERHEAD)


class KafkaSpanExporter(SpanExporter):
    """Exports SDK spans to ``otlp_spans`` with kafka-python."""

    def __init__(self, settings: Settings | None = None, tenant: str = "default",
                 topic: str = OTLP_SPANS, timeout_s: float = 30.0) -> None:
        from pipeline.clients import producer

        self.settings = settings or load_settings()
        self.tenant = tenant
        self.topic = topic
        self.timeout_s = timeout_s
        self._hash_key = self.settings.hash_key_bytes()   # no key: fail here, not later
        self._producer = producer(self.settings, client_id="llmspend-sdk-exporter",
                                  enable_idempotence=True)
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        headers = [(otlp.TENANT_HEADER, self.tenant.encode()),
                   ("content-type", otlp.PROTOBUF.encode())]
        try:
            records = span_records(spans, self.settings, self.tenant, self._hash_key)
            futures = [self._producer.send(self.topic, value=r, headers=headers)
                       for r in records]
            for f in futures:
                f.get(timeout=self.timeout_s)
        except Exception:
            log.exception("exporting %d spans to Kafka failed", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            self._producer.flush(timeout=timeout_millis / 1000)
        except Exception:
            log.exception("flushing the Kafka producer failed")
            return False
        return True

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.force_flush()
        self._producer.close(timeout=self.timeout_s)
