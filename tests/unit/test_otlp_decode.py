"""The reference OTLP decoder: protobuf and OTLP/JSON parse alike, bad input raises only
DecodeError, invalid spans are dropped and counted, oversized requests split losslessly."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from pipeline import otlp, privacy
from schemas import spans as S

KEY = b"unit-test-hash-key-0123456789abcdef"

_attr_values = st.one_of(
    st.text(max_size=30).map(lambda v: ("string_value", v)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda v: ("int_value", v)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: ("double_value", v)),
    st.booleans().map(lambda v: ("bool_value", v)),
    st.binary(max_size=8).map(lambda v: ("bytes_value", v)),
)


@st.composite
def requests(draw, max_spans: int = 8) -> ExportTraceServiceRequest:
    """Random valid export requests (ids of the right length, any attribute types)."""
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 3))):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", draw(st.text(max_size=10))
        ss = rs.scope_spans.add()
        ss.scope.name = draw(st.text(max_size=10))
        for _ in range(draw(st.integers(0, max_spans))):
            span = ss.spans.add()
            span.trace_id = draw(st.binary(min_size=16, max_size=16).filter(any))
            span.span_id = draw(st.binary(min_size=8, max_size=8).filter(any))
            span.parent_span_id = draw(st.sampled_from([b"", b"\x01" * 8]))
            span.name = draw(st.text(max_size=20))
            span.kind = draw(st.integers(0, 5))
            span.start_time_unix_nano = draw(st.integers(1, 2**63))
            span.end_time_unix_nano = draw(st.integers(0, 2**64 - 1))
            span.status.code = draw(st.integers(0, 2))
            for key, (field, value) in draw(st.dictionaries(
                    st.text(min_size=1, max_size=12), _attr_values, max_size=6)).items():
                a = span.attributes.add()
                a.key = key
                setattr(a.value, field, value)
    return req


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_otlp_json_and_protobuf_decode_to_the_same_batch(req):
    proto = req.SerializeToString()
    js = otlp.to_json(req)
    assert otlp.parse_request(js, otlp.JSON) == req
    a, b = otlp.decode_record(proto), otlp.decode_record(js)
    assert a.equals(b)
    assert a.schema.equals(S.SPAN_BATCH)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(data):
    try:
        otlp.decode_record(data)
    except otlp.DecodeError as exc:
        assert str(exc)


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["resourceSpans", "scopeSpans", "spans", "traceId",
                                         "spanId", "name", "attributes", "key", "value",
                                         "startTimeUnixNano", "kind"]), c, max_size=3),
                    max_leaves=12))
def test_random_json_raises_only_decode_error(doc):
    try:
        otlp.decode_record(json.dumps(doc).encode(), [("content-type", b"application/json")])
    except otlp.DecodeError as exc:
        assert str(exc)


def test_truncated_protobuf_is_a_decode_error(sample_request):
    data = sample_request.SerializeToString()
    with pytest.raises(otlp.DecodeError, match="invalid OTLP protobuf"):
        otlp.parse_request(data[: len(data) // 2])


def test_invalid_utf8_in_a_string_is_a_decode_error(sample_request):
    sample_request.resource_spans[0].scope_spans[0].spans[0].name = "MARKER"
    data = sample_request.SerializeToString().replace(b"MARKER", b"MA\xffKER")
    with pytest.raises(otlp.DecodeError):
        otlp.parse_request(data)


def test_a_protobuf_record_that_starts_like_blank_then_json_is_still_protobuf():
    """0x0a is protobuf's tag for the first ResourceSpans: with 123 bytes in it, a
    record starts 0x0a 0x7b, a blank then ``{``, and was taken for JSON when no content
    type says (an OpenTelemetry Collector's records carry none). JSON with leading
    blanks still reads."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    span = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8,
                                          name="chat", start_time_unix_nano=1)
    rs.schema_url = "x" * (123 - rs.ByteSize() - 2)
    assert rs.ByteSize() == 123
    body = req.SerializeToString()
    assert body[:2] == b"\n{"
    want = otlp.decode_record(body, [("content-type", otlp.PROTOBUF.encode())])
    assert otlp.decode_record(body).equals(want) and want.num_rows == 1
    assert span.name == "chat"
    js = b"\n\t " + otlp.to_json(req)
    assert otlp.decode_record(js).equals(want)
    with pytest.raises(otlp.DecodeError, match="invalid JSON"):
        otlp.decode_record(b"\n{not json, nor protobuf")


def test_empty_record_is_a_decode_error():
    with pytest.raises(otlp.DecodeError, match="empty"):
        otlp.decode_record(b"")


def test_ten_thousand_attributes_on_one_span_decode(sample_request):
    span = sample_request.resource_spans[0].scope_spans[0].spans[0]
    for i in range(10_000):
        kv = span.attributes.add()
        kv.key, kv.value.int_value = f"k{i}", i
    batch = otlp.decode_record(sample_request.SerializeToString())
    assert len(batch.column("attributes")[0]) >= 10_000


def test_tenant_comes_from_the_header_and_defaults_for_collector_records(sample_request):
    data = sample_request.SerializeToString()
    assert set(otlp.decode_record(data).column("tenant").to_pylist()) == {"default"}
    tenant = otlp.decode_record(data, [(otlp.TENANT_HEADER, b"acme")]).column("tenant")
    assert set(tenant.to_pylist()) == {"acme"}


def test_otlp_json_spec_example_with_string_int64_and_hex_ids():
    body = json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173", "name": "chat", "kind": 3,
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "attributes": [{"key": "gen_ai.usage.input_tokens",
                            "value": {"intValue": "1200"}}],
            "status": {"code": 2, "message": "boom"}}]}]}]}).encode()
    t = otlp.decode_record(body).to_pylist()[0]
    assert t["trace_id"].hex() == "5b8efff798038103d269b633813fc60c"
    assert t["span_id"].hex() == "eee19b7ec3c1b174"
    assert t["start_time_unix_nano"] == 1544712660000000000
    assert t["attributes"][0] == {"key": "gen_ai.usage.input_tokens", "type": S.INT,
                                  "str": None, "int": 1200, "dbl": None, "bool": None}
    assert (t["status_code"], t["status_message"]) == (S.STATUS_ERROR, "boom")


@pytest.mark.parametrize("mutate,reason", [
    (lambda s: setattr(s, "span_id", b"\x01\x02"), "span_id must be 8 bytes"),
    (lambda s: setattr(s, "trace_id", b"\x00" * 16), "trace_id must be 16 bytes"),
    (lambda s: setattr(s, "trace_id", b"\x01" * 15), "trace_id must be 16 bytes"),
    (lambda s: setattr(s, "parent_span_id", b"\x01" * 3), "parent_span_id"),
    (lambda s: setattr(s, "start_time_unix_nano", 0), "start_time"),
])
def test_invalid_spans_are_dropped_counted_and_the_rest_kept(sample_request, mutate, reason):
    spans = sample_request.resource_spans[0].scope_spans[0].spans
    good = [s.span_id for s in spans][1:]
    mutate(spans[0])
    report = otlp.sanitise_request(sample_request, hash_key=KEY)
    assert report.rejected == 1 and reason in report.message
    kept = [s.span_id for s in sample_request.resource_spans[0].scope_spans[0].spans]
    assert kept == good


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(requests(max_spans=30), st.integers(600, 4000))
def test_split_keeps_every_span_and_respects_the_limit(req, limit):
    try:
        parts = otlp.split_request(req, limit)
    except otlp.DecodeError as exc:
        assert "above the" in str(exc)  # a single span larger than the limit
        return
    assert all(len(p) <= limit for p in parts)
    ids = [s.span_id for p in parts
           for rs in otlp.parse_request(p).resource_spans
           for ss in rs.scope_spans for s in ss.spans]
    want = [s.span_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(ids) == sorted(want)


def test_content_attributes_and_events_become_hashes(sample_request):
    preexisting = sum(privacy.is_content_key(kv.key) for rs in sample_request.resource_spans
                      for ss in rs.scope_spans for s in ss.spans for kv in s.attributes)
    span = sample_request.resource_spans[0].scope_spans[0].spans[0]
    for key, value in [("gen_ai.input.messages",
                        '[{"role":"user","parts":[{"type":"text","content":"secret"}]}]'),
                       ("gen_ai.output.messages", '[{"role":"assistant"}]'),
                       ("gen_ai.tool.call.arguments", '{"city": "Paris"}'),
                       ("llm.input_messages.0.message.content", "secret")]:
        kv = span.attributes.add()
        kv.key, kv.value.string_value = key, value
    ev = span.events.add()
    ev.name = "gen_ai.user.message"
    kv = ev.attributes.add()
    kv.key, kv.value.string_value = "content", "secret"
    report = otlp.sanitise_request(sample_request, hash_key=KEY)
    assert report.content_removed == 5 + preexisting
    attrs = {kv.key: kv.value.string_value for kv in span.attributes}
    assert not any(privacy.is_content_key(k) for k in attrs)
    assert b"secret" not in sample_request.SerializeToString()
    assert len(span.events) == 0
    assert set(privacy.HASH_ATTRIBUTES) <= set(attrs)
    assert attrs[privacy.TOOL_ARGS_HASH] == privacy.keyed_hash(KEY, '{"city":"Paris"}')


def test_keep_content_tenants_keep_it(sample_request):
    span = sample_request.resource_spans[0].scope_spans[0].spans[0]
    kv = span.attributes.add()
    kv.key, kv.value.string_value = "gen_ai.input.messages", "[]"
    otlp.sanitise_request(sample_request, hash_key=KEY, keep_content=True)
    assert "gen_ai.input.messages" in {kv.key for kv in span.attributes}


@pytest.fixture
def sample_request() -> ExportTraceServiceRequest:
    from tests.sample_spans import sample_request as make

    return otlp.parse_request(make(4))
