"""The ways in, end to end through the real broker: stock OTel exporters (OTLP/HTTP
protobuf, OTLP/gRPC), OTLP/JSON from a plain HTTP client, and the SDK Kafka exporter."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import uuid

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import otlp, privacy
from schemas.topics import OTLP_SPANS
from tests.integration.kafka_helpers import end_offsets, read_records, receiver

pytestmark = pytest.mark.integration

HASH_KEY = "integration-test-hash-key-0123456789"
MESSAGES = json.dumps([{"role": "user", "parts": [{"type": "text",
                                                    "content": "my IBAN is DE89 3704"}]}])


def make_spans(exporter, n: int = 3, service: str = "checkout-bot"):
    """Emit GenAI spans (with content) through the SDK to ``exporter`` and a recorder."""
    recorder = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(recorder))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    marker = uuid.uuid4().hex
    for i in range(n):
        with tracer.start_as_current_span(f"chat gpt-4o {marker}") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "gpt-4o")
            span.set_attribute("gen_ai.usage.input_tokens", 100 + i)
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", 20)
            span.set_attribute("gen_ai.input.messages", MESSAGES)
            span.set_attribute("gen_ai.output.messages", '[{"role":"assistant"}]')
            span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
    provider.shutdown()
    return recorder.get_finished_spans()


def landed(settings, start, trace_ids: set[bytes], expected: int):
    """Spans with these trace ids found in otlp_spans after ``start``, with record info."""
    found: dict[bytes, tuple] = {}

    def collect(records) -> bool:
        for r in records[len(collect.seen):]:
            req = otlp.parse_request(r.value)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        if s.trace_id in trace_ids:
                            found[s.span_id] = (s, rs, dict(r.headers))
        collect.seen = list(records)
        return len(found) >= expected

    collect.seen = []
    read_records(settings, start, collect, timeout_s=30)
    return found


def assert_same_spans(sent, found, tenant: str = "default"):
    assert len(found) == len(sent)
    key = HASH_KEY.encode()
    for s in sent:
        got, rs, headers = found[s.context.span_id.to_bytes(8, "big")]
        assert got.trace_id == s.context.trace_id.to_bytes(16, "big")
        assert got.name == s.name
        assert got.start_time_unix_nano == s.start_time
        assert got.end_time_unix_nano == s.end_time
        attrs = {kv.key: otlp.any_value(kv.value) for kv in got.attributes}
        for k, v in s.attributes.items():
            if privacy.is_content_key(k):
                assert k not in attrs, f"content attribute {k} reached Kafka"
            else:
                assert attrs[k] == (list(v) if isinstance(v, tuple) else v)
        expected = privacy.content_hashes(key, {"gen_ai.input.messages": MESSAGES})
        assert attrs[privacy.PROMPT_HASH] == expected[privacy.PROMPT_HASH]
        assert attrs[privacy.LAST_MESSAGE_HASH] == expected[privacy.LAST_MESSAGE_HASH]
        res = {kv.key: otlp.any_value(kv.value) for kv in rs.resource.attributes}
        assert res["service.name"] == "checkout-bot"
        assert headers[otlp.TENANT_HEADER] == tenant.encode()
        assert b"IBAN" not in got.SerializeToString()


@pytest.fixture(scope="module")
def endpoints(kafka_settings):
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY}) as ep:
        yield ep


def test_stock_otlp_http_protobuf_exporter(kafka_settings, endpoints):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    start = end_offsets(kafka_settings, OTLP_SPANS)
    sent = make_spans(OTLPSpanExporter(endpoint=endpoints["traces"]))
    found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                           for s in sent}, len(sent))
    assert_same_spans(sent, found)


def test_stock_otlp_http_exporter_with_gzip(kafka_settings, endpoints):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    start = end_offsets(kafka_settings, OTLP_SPANS)
    sent = make_spans(OTLPSpanExporter(endpoint=endpoints["traces"],
                                       compression=Compression.Gzip))
    found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                           for s in sent}, len(sent))
    assert_same_spans(sent, found)


def test_stock_otlp_grpc_exporter(kafka_settings, endpoints):
    from grpc import Compression
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    start = end_offsets(kafka_settings, OTLP_SPANS)
    sent = make_spans(OTLPSpanExporter(endpoint=endpoints["grpc"], insecure=True,
                                       compression=Compression.Gzip))
    found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                           for s in sent}, len(sent))
    assert_same_spans(sent, found)


def _post(url: str, body: bytes, ctype: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _request_of(spans):
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans)


def test_otlp_json_with_gzip_from_a_plain_http_client(kafka_settings, endpoints):
    sent = make_spans(InMemorySpanExporter())
    body = gzip.compress(otlp.to_json(_request_of(sent)))
    assert b'"traceId":"' in gzip.decompress(body)  # hex ids, as OTLP/JSON writes them
    start = end_offsets(kafka_settings, OTLP_SPANS)
    status, headers, resp = _post(endpoints["traces"], body, "application/json",
                                  {"Content-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(resp) == {}  # full success: no partialSuccess
    found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                           for s in sent}, len(sent))
    assert_same_spans(sent, found)


def test_partial_success_keeps_the_valid_spans(kafka_settings, endpoints):
    sent = make_spans(InMemorySpanExporter(), n=4)
    req = _request_of(sent)
    spans = req.resource_spans[0].scope_spans[0].spans
    spans[1].span_id = b"\x01\x02"  # wrong length
    spans[2].trace_id = b"\x00" * 16  # invalid all-zero id
    start = end_offsets(kafka_settings, OTLP_SPANS)
    status, _, body = _post(endpoints["traces"], req.SerializeToString(),
                            "application/x-protobuf")
    assert status == 200
    resp = ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 2
    assert "span_id must be 8 bytes" in resp.partial_success.error_message
    good = [sent[0], sent[3]]
    found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                           for s in good}, 2)
    assert_same_spans(good, found)


@pytest.mark.parametrize("body,ctype,headers,status,message", [
    (b"\xff\xfe garbage", "application/x-protobuf", {}, 400, "invalid OTLP protobuf"),
    (b"{not json", "application/json", {}, 400, "invalid JSON"),
    (b'{"resourceSpans": 5}', "application/json", {}, 400, "invalid OTLP/JSON"),
    (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}',
     "application/json", {}, 400, "not hex"),
    (b"hello", "text/plain", {}, 415, "unsupported Content-Type"),
    (b"x", "application/x-protobuf", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    (b"not gzip", "application/x-protobuf", {"Content-Encoding": "gzip"}, 400, "gzip"),
])
def test_bad_bodies_get_a_clear_status(endpoints, body, ctype, headers, status, message):
    code, hdrs, resp = _post(endpoints["traces"], body, ctype, headers)
    assert code == status
    err = status_pb2.Status()
    if hdrs["Content-Type"].startswith("application/json"):
        err.message = json.loads(resp)["message"]
    else:
        err.ParseFromString(resp)
    assert message in err.message


def test_empty_request_is_accepted_and_produces_nothing(endpoints):
    status, _, body = _post(endpoints["traces"], b"", "application/x-protobuf")
    assert status == 200
    assert ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans == 0


def test_metrics_and_health(endpoints):
    with urllib.request.urlopen(endpoints["http"] + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok", "kafka": True}
    with urllib.request.urlopen(endpoints["http"] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "# TYPE llmspend_ingest_requests_total counter" in text
    assert "llmspend_ingest_kafka_produce_seconds_bucket" in text


def test_body_above_the_limit_is_413(kafka_settings):
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_INGEST_MAX_BODY_BYTES": "1000"}) as ep:
        code, _, _ = _post(ep["traces"], b"\x0a" + b"\x00" * 5000, "application/x-protobuf")
        assert code == 413
        bomb = gzip.compress(b"\x00" * 100_000)
        code, _, _ = _post(ep["traces"], bomb, "application/x-protobuf",
                           {"Content-Encoding": "gzip"})
        assert code == 413


def test_auth_maps_tokens_to_tenants_and_rejects_others(kafka_settings):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_INGEST_TOKENS": "tok-a=tenant-a,tok-b=tenant-b"}) as ep:
        body = _request_of(make_spans(InMemorySpanExporter())).SerializeToString()
        assert _post(ep["traces"], body, "application/x-protobuf")[0] == 401
        assert _post(ep["traces"], body, "application/x-protobuf",
                     {"Authorization": "Bearer wrong"})[0] == 401
        start = end_offsets(kafka_settings, OTLP_SPANS)
        sent = make_spans(OTLPSpanExporter(endpoint=ep["traces"],
                                           headers={"Authorization": "Bearer tok-b"}))
        found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                               for s in sent}, len(sent))
        assert_same_spans(sent, found, tenant="tenant-b")
        start = end_offsets(kafka_settings, OTLP_SPANS)
        sent = make_spans(GrpcExporter(endpoint=ep["grpc"], insecure=True,
                                       headers={"authorization": "Bearer tok-a"}))
        found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                               for s in sent}, len(sent))
        assert_same_spans(sent, found, tenant="tenant-a")


def test_python_sdk_kafka_exporter(kafka_settings):
    import dataclasses

    from pipeline.ingest.exporter import KafkaSpanExporter

    settings = dataclasses.replace(kafka_settings, hash_key=HASH_KEY)
    start = end_offsets(kafka_settings, OTLP_SPANS)
    exporter = KafkaSpanExporter(settings, tenant="sdk-tenant")
    sent = make_spans(exporter)  # provider.shutdown() flushes and closes the exporter
    found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                           for s in sent}, len(sent))
    assert_same_spans(sent, found, tenant="sdk-tenant")


def test_large_request_is_split_not_dropped(kafka_settings):
    """A request above the record limit lands as several records, every span kept."""
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_KAFKA_MAX_MESSAGE_BYTES": "65536"}) as ep:
        sent = make_spans(InMemorySpanExporter(), n=400)
        req = _request_of(sent)
        for s in req.resource_spans[0].scope_spans[0].spans:
            kv = s.attributes.add()
            kv.key, kv.value.string_value = "padding", "x" * 300
        body = req.SerializeToString()
        assert len(body) > 65536 * 2
        start = end_offsets(kafka_settings, OTLP_SPANS)
        assert _post(ep["traces"], body, "application/x-protobuf")[0] == 200
        found = landed(kafka_settings, start, {s.context.trace_id.to_bytes(16, "big")
                                               for s in sent}, len(sent))
        assert len(found) == 400
        assert len({h[otlp.TENANT_HEADER] for _, _, h in found.values()}) == 1


APP = """
import sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint from env
trace.set_tracer_provider(provider)
with trace.get_tracer("app").start_as_current_span(sys.argv[1]) as span:
    span.set_attribute("gen_ai.operation.name", "chat")
    print(format(span.get_span_context().trace_id, "032x"))
provider.shutdown()
"""


def test_an_unchanged_app_only_needs_the_endpoint_variable(kafka_settings, endpoints):
    """A stock app configured by OTEL_EXPORTER_OTLP_ENDPOINT alone reaches Kafka."""
    import os
    import subprocess
    import sys

    name = f"unchanged-app-{uuid.uuid4().hex}"
    start = end_offsets(kafka_settings, OTLP_SPANS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoints["http"]
    out = subprocess.run([sys.executable, "-c", APP, name], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    trace_id = bytes.fromhex(out.stdout.strip())
    found = landed(kafka_settings, start, {trace_id}, 1)
    assert [s.name for s, _, _ in found.values()] == [name]
