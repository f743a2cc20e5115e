"""The end-to-end demo (`llmspend demo`, the README's first command).

Today it proves the foundation: real GenAI spans made by the OpenTelemetry SDK are
encoded as an OTLP ``ExportTraceServiceRequest``, produced to ``otlp_spans`` on the real
broker with ``acks=all``, consumed back and decoded. Later stages extend it with the
generator, pricing, aggregates, alerts, the lake and the dashboard.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.config import Settings
from schemas.topics import OTLP_SPANS

OTLP_TOPIC = OTLP_SPANS


def sample_request(n_calls: int = 3) -> bytes:
    """An ExportTraceServiceRequest of GenAI chat spans made by the real OTel SDK."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "demo-support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("llmspend.demo")
    for i in range(n_calls):
        with tracer.start_as_current_span("chat gpt-4o-mini") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.provider.name", "openai")
            span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
            span.set_attribute("gen_ai.usage.input_tokens", 1200 + 100 * i)
            span.set_attribute("gen_ai.usage.output_tokens", 150 + 10 * i)
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


def run(settings: Settings, echo: Callable[[str], Any]) -> None:
    """Produce one real OTLP batch through the broker and print what comes back."""
    from kafka import TopicPartition
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from pipeline.clients import consumer, producer

    payload = sample_request()
    marker = uuid.uuid4().hex.encode()
    p = producer(settings)
    try:
        md = p.send(OTLP_TOPIC, payload, headers=[("llmspend-demo", marker)]).get(timeout=30)
    finally:
        p.close()
    echo(f"produced  {len(payload)} bytes of OTLP to {OTLP_TOPIC}[{md.partition}] "
         f"@ offset {md.offset} (acks=all)")

    tp = TopicPartition(OTLP_TOPIC, md.partition)
    c = consumer(settings, enable_auto_commit=False)
    try:
        c.assign([tp])
        c.seek(tp, md.offset)
        deadline = time.monotonic() + 30
        record = None
        while record is None and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=1000).values():
                for r in batch:
                    if dict(r.headers or []).get("llmspend-demo") == marker:
                        record = r
    finally:
        c.close()
    if record is None:
        raise RuntimeError("the produced record did not come back within 30 s")
    req = ExportTraceServiceRequest()
    req.ParseFromString(record.value)
    echo(f"consumed  offset {record.offset}: {len(req.resource_spans)} resource span group(s)")
    for rs in req.resource_spans:
        service = next((a.value.string_value for a in rs.resource.attributes
                        if a.key == "service.name"), "?")
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {a.key: a.value for a in span.attributes}
                echo(f"  span {span.span_id.hex()} {service} '{span.name}' "
                     f"model={attrs['gen_ai.request.model'].string_value} "
                     f"in={attrs['gen_ai.usage.input_tokens'].int_value} "
                     f"out={attrs['gen_ai.usage.output_tokens'].int_value} "
                     f"{(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6:.2f} ms")
    echo("demo      ok: spans went through the real broker and came back intact")
