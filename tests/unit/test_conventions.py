"""Each convention's attribute names reach the same fields, with the same token meaning.

Spans are built the way the real instrumentations emit them (attribute names and value
shapes taken from their sources: opentelemetry-instrumentation-openai-v2, OpenLLMetry's
opentelemetry-instrumentation-openai/-anthropic, openinference-instrumentation-openai/
-anthropic, OpenLIT's anthropic instrumentation), recorded by the real OTel SDK and
decoded by pipeline.otlp, then normalised.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from pipeline import conventions as cv
from pipeline import normalise as N
from pipeline import otlp, pricing
from pipeline.config import Settings

KEY = b"k" * 32
T0 = int(dt.datetime(2025, 10, 20, 12, 0, tzinfo=dt.UTC).timestamp()) * 10**9
NOW = dt.datetime(2025, 10, 20, 13, 0, tzinfo=dt.UTC)
CATALOG = pricing.load_catalog()

pytestmark = pytest.mark.usefixtures("columnar_agrees")


# ------------------------------------------------------------------ span builders


def any_value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list | tuple):
        out = AnyValue()
        out.array_value.values.extend(any_value(x) for x in v)
        return out
    return AnyValue(string_value=str(v))


def request(*specs: dict[str, Any], resource: dict[str, Any] | None = None,
            scope: str = "test.scope") -> ExportTraceServiceRequest:
    """An OTLP request; each spec: attrs, name, trace, span, parent, start, end, status,
    status_message, trace_state, events [(name, attrs)]."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (resource or {"service.name": "svc"}).items():
        rs.resource.attributes.append(KeyValue(key=k, value=any_value(v)))
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    for n, spec in enumerate(specs, 1):
        s = ss.spans.add()
        s.trace_id = spec.get("trace", b"\x01" * 16)
        s.span_id = spec.get("span", n.to_bytes(8, "big"))
        s.parent_span_id = spec.get("parent", b"")
        s.name = spec.get("name", "chat")
        s.trace_state = spec.get("trace_state", "")
        s.start_time_unix_nano = spec.get("start", T0)
        s.end_time_unix_nano = spec.get("end", T0 + 1_500_000_000)
        s.status.code = spec.get("status", 0)
        s.status.message = spec.get("status_message", "")
        for k, v in spec.get("attrs", {}).items():
            s.attributes.append(KeyValue(key=k, value=any_value(v)))
        for ename, eattrs in spec.get("events", ()):
            e = s.events.add()
            e.name = ename
            e.time_unix_nano = T0
            for k, v in eattrs.items():
                e.attributes.append(KeyValue(key=k, value=any_value(v)))
    return req


def batch(*specs: dict[str, Any], tenant: str = "default", **kw: Any) -> pa.Table:
    return otlp.request_to_batch(request(*specs, **kw), tenant)


def run(spans: pa.Table, settings: Settings | None = None) -> N.NormaliseResult:
    return N.normalise(spans, settings or Settings(), CATALOG, KEY, now=NOW)


def one(*specs: dict[str, Any], settings: Settings | None = None, **kw: Any
        ) -> dict[str, Any]:
    rows = run(batch(*specs, **kw), settings).calls.to_pylist()
    assert len(rows) == 1, rows
    return rows[0]


def sdk_batch(attrs: dict[str, Any], name: str, scope: str = "instr",
              resource: dict[str, Any] | None = None) -> pa.Table:
    """One span recorded by the real OpenTelemetry SDK, OTLP-encoded and decoded."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource or {"service.name": "app"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(scope)
    start = T0
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, start_time=start,
                                      end_on_exit=False) as span:
        span.set_attributes(attrs)
        span.end(end_time=start + 2_000_000_000)
    provider.shutdown()
    body = encode_spans(exporter.get_finished_spans()).SerializeToString()
    return otlp.decode_record(body)


# Anthropic usage of one call: 1000 fresh + 8000 cache read + 1000 cache write, 200 out.
# claude-sonnet-4-5: 1000*3 + 8000*0.30 + 1000*3.75 + 200*15 = 12150 per million tokens.
SONNET_COST = Decimal("0.012150000000")


def _check_anthropic(row: dict[str, Any]) -> None:
    assert row["model"] == "claude-sonnet-4-5"
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"],
            row["output_tokens"]) == (10000, 8000, 1000, 200)
    assert row["cost_usd"] == SONNET_COST == row["list_cost_usd"]
    assert row["priced"] is True


# ------------------------------------------------------------------ semconv


def test_semconv_openai_v2_shape() -> None:
    """opentelemetry-instrumentation-openai-v2: `chat {model}` CLIENT span."""
    spans = sdk_batch({
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model":
        "gpt-4o-mini-2024-07-18", "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop",), "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300, "server.address": "api.openai.com",
        "gen_ai.openai.response.service_tier": "default"},
        "chat gpt-4o-mini", scope="opentelemetry.instrumentation.openai_v2")
    row = run(spans).calls.to_pylist()[0]
    assert row["convention"] == "semconv"
    assert (row["provider"], row["operation"], row["model"]) == ("openai", "chat",
                                                                 "gpt-4o-mini")
    assert row["response_model"] == "gpt-4o-mini-2024-07-18"
    assert row["finish_reason"] == "stop" and row["server_address"] == "api.openai.com"
    # 1200*0.15 + 300*0.60 = 360 per million
    assert row["cost_usd"] == Decimal("0.000360000000")
    assert row["latency_ms"] == 2000.0 and row["service"] == "app"


def test_semconv_current_names_and_cache_included() -> None:
    row = one({"attrs": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5-20250929",
        "gen_ai.usage.input_tokens": 10000, "gen_ai.usage.output_tokens": 200,
        "gen_ai.usage.cache_read.input_tokens": 8000,
        "gen_ai.usage.cache_creation.input_tokens": 1000,
        "gen_ai.conversation.id": "conv-1", "gen_ai.agent.name": "planner",
        "gen_ai.agent.id": "agent-7", "gen_ai.response.time_to_first_chunk": 0.25}})
    _check_anthropic(row)
    assert (row["session_id"], row["agent"], row["agent_id"]) == ("conv-1", "planner",
                                                                  "agent-7")
    assert row["ttft_ms"] == 250.0 and row["issues"] is None


def test_semconv_reasoning_and_tool_fields() -> None:
    row = one({"attrs": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                         "gen_ai.request.model": "o3", "gen_ai.usage.input_tokens": 100,
                         "gen_ai.usage.output_tokens": 1000,
                         "gen_ai.usage.reasoning.output_tokens": 800}})
    assert row["reasoning_tokens"] == 800
    # output includes reasoning; o3 has no separate reasoning price: 100*2 + 1000*8
    assert row["cost_usd"] == Decimal("0.008200000000")
    tool = one({"attrs": {"gen_ai.operation.name": "execute_tool",
                          "gen_ai.tool.name": "search", "gen_ai.tool.call.id": "call_1"}})
    assert (tool["kind"], tool["tool_name"], tool["tool_call_id"]) == ("tool", "search",
                                                                       "call_1")


# ------------------------------------------------------------------ OpenLLMetry


def test_openllmetry_openai_shape() -> None:
    """OpenLLMetry's opentelemetry-instrumentation-openai: `openai.chat`, prompt_tokens
    including the cached ones (OpenAI's prompt_tokens does)."""
    spans = sdk_batch({
        "llm.request.type": "chat", "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.prompt_tokens": 5000, "gen_ai.usage.completion_tokens": 400,
        "llm.usage.total_tokens": 5400, "gen_ai.usage.cache_read_input_tokens": 4096,
        "llm.is_streaming": False, "gen_ai.openai.api_base": "https://api.openai.com/v1/",
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi",
        "gen_ai.completion.0.finish_reason": "stop", "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "hello",
        "traceloop.association.properties.session_id": "s-9"},
        "openai.chat", scope="opentelemetry.instrumentation.openai.v1")
    row = run(spans).calls.to_pylist()[0]
    assert row["convention"] == "openllmetry" and row["operation"] == "chat"
    assert (row["input_tokens"], row["cached_input_tokens"]) == (5000, 4096)
    # (5000-4096)*2.50 + 4096*1.25 + 400*10 = 2260 + 5120 + 4000 = 11380
    assert row["cost_usd"] == Decimal("0.011380000000")
    assert row["finish_reason"] == "stop" and row["session_id"] == "s-9"
    assert row["prompt_hash"] is not None


def test_openllmetry_anthropic_prompt_tokens_include_cache() -> None:
    """OpenLLMetry's anthropic instrumentation sets prompt_tokens = input + cache_read +
    cache_creation, so it is already canonical."""
    row = one({"name": "anthropic.chat", "attrs": {
        "llm.request.type": "chat", "gen_ai.system": "Anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.prompt_tokens": 10000,
        "gen_ai.usage.completion_tokens": 200, "llm.usage.total_tokens": 10200,
        "gen_ai.usage.cache_read_input_tokens": 8000,
        "gen_ai.usage.cache_creation_input_tokens": 1000}})
    _check_anthropic(row)
    assert row["provider"] == "anthropic"


def test_traceloop_workflow_agent_and_tool_kinds() -> None:
    rows = run(batch(
        {"span": b"\x00" * 7 + b"\x01", "name": "support.workflow",
         "attrs": {"traceloop.span.kind": "workflow", "traceloop.entity.name": "support"}},
        {"span": b"\x00" * 7 + b"\x02", "parent": b"\x00" * 7 + b"\x01",
         "attrs": {"traceloop.span.kind": "agent", "traceloop.entity.name": "triage"}},
        {"span": b"\x00" * 7 + b"\x03", "parent": b"\x00" * 7 + b"\x02",
         "attrs": {"traceloop.span.kind": "tool", "traceloop.entity.name": "lookup"}},
        {"span": b"\x00" * 7 + b"\x04", "parent": b"\x00" * 7 + b"\x02",
         "attrs": {"llm.request.type": "chat", "gen_ai.system": "openai",
                   "gen_ai.request.model": "gpt-4o", "gen_ai.usage.prompt_tokens": 1,
                   "gen_ai.usage.completion_tokens": 1}}))
    calls = rows.calls.to_pylist()
    assert [(c["kind"], c["agent"]) for c in calls] == [("tool", "triage"), ("llm", "triage")]
    assert calls[0]["tool_name"] == "lookup"
    assert rows.stats["chain_spans_skipped"] == 1 and rows.stats["agent_spans_skipped"] == 1


# ------------------------------------------------------------------ OpenInference


def test_openinference_openai_shape() -> None:
    """openinference-instrumentation-openai: `ChatCompletion`, kind LLM, llm.* names."""
    spans = sdk_batch({
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-2024-08-06",
        "llm.provider": "openai", "llm.system": "openai", "llm.token_count.prompt": 5000,
        "llm.token_count.completion": 400, "llm.token_count.total": 5400,
        "llm.token_count.prompt_details.cache_read": 4096,
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "hi", "input.value": '{"messages": []}',
        "input.mime_type": "application/json", "output.value": "hello",
        "llm.invocation_parameters": '{"model": "gpt-4o"}', "session.id": "sess-1",
        "user.id": "u-1"}, "ChatCompletion", scope="openinference.instrumentation.openai")
    row = run(spans).calls.to_pylist()[0]
    assert row["convention"] == "openinference"
    assert (row["model"], row["request_model"], row["provider"]) == (
        "gpt-4o", "gpt-4o-2024-08-06", "openai")
    assert row["cost_usd"] == Decimal("0.011380000000")
    assert (row["session_id"], row["user_id"]) == ("sess-1", "u-1")


def test_openinference_anthropic_prompt_includes_cache() -> None:
    """openinference-instrumentation-anthropic sums input + cache_creation + cache_read
    into llm.token_count.prompt."""
    row = one({"name": "Messages", "attrs": {
        "openinference.span.kind": "LLM", "llm.model_name": "claude-sonnet-4-5-20250929",
        "llm.provider": "anthropic", "llm.system": "anthropic",
        "llm.token_count.prompt": 10000, "llm.token_count.completion": 200,
        "llm.token_count.prompt_details.cache_read": 8000,
        "llm.token_count.prompt_details.cache_write": 1000}})
    _check_anthropic(row)


def test_openinference_kinds_and_agent_attachment() -> None:
    res = run(batch(
        {"span": b"\x00" * 7 + b"\x01", "name": "researcher",
         "attrs": {"openinference.span.kind": "AGENT", "agent.name": "researcher"}},
        {"span": b"\x00" * 7 + b"\x02", "parent": b"\x00" * 7 + b"\x01",
         "attrs": {"openinference.span.kind": "CHAIN", "llm.token_count.prompt": 999}},
        {"span": b"\x00" * 7 + b"\x03", "parent": b"\x00" * 7 + b"\x02",
         "attrs": {"openinference.span.kind": "TOOL", "tool.name": "web",
                   "tool.parameters": '{"q": "x"}'}},
        {"span": b"\x00" * 7 + b"\x04", "parent": b"\x00" * 7 + b"\x02",
         "attrs": {"openinference.span.kind": "EMBEDDING",
                   "embedding.model_name": "text-embedding-3-small",
                   "llm.token_count.prompt": 1000}},
        {"span": b"\x00" * 7 + b"\x05", "attrs": {"openinference.span.kind": "RETRIEVER"}}))
    calls = res.calls.to_pylist()
    assert [(c["kind"], c["agent"]) for c in calls] == [("tool", "researcher"),
                                                        ("llm", "researcher")]
    assert calls[0]["tool_args_hash"] is not None
    assert calls[1]["cost_usd"] == Decimal("0.000020000000")  # 1000 * 0.02 / 1e6
    assert res.stats["chain_spans_skipped"] == 1 and res.stats["other_spans_skipped"] == 1


# ------------------------------------------------------------------ OpenLIT


def test_openlit_anthropic_input_excludes_cache_and_app_cost_kept() -> None:
    """OpenLIT's anthropic instrumentation writes Anthropic's input_tokens (cache NOT
    included) into gen_ai.usage.input_tokens and its own cost into gen_ai.usage.cost."""
    spans = sdk_batch({
        "gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.response.model":
        "claude-sonnet-4-5-20250929", "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 200, "gen_ai.usage.cache_read.input_tokens": 8000,
        "gen_ai.usage.cache_creation.input_tokens": 1000, "gen_ai.usage.cost": 0.0121,
        "gen_ai.server.time_to_first_token": 0.5, "gen_ai.client.token.usage": 1200},
        "chat claude-sonnet-4-5", scope="openlit.otel.tracing",
        resource={"service.name": "app", "telemetry.sdk.name": "openlit"})
    row = run(spans).calls.to_pylist()[0]
    assert row["convention"] == "openlit"
    _check_anthropic(row)
    assert row["app_reported_cost_usd"] == Decimal("0.012100000000")
    assert row["ttft_ms"] == 500.0
    assert row["issues"] == "input_excluded_cache"


def test_openlit_openai_input_includes_cache() -> None:
    row = one({"attrs": {"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                         "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 5000,
                         "gen_ai.usage.output_tokens": 400,
                         "gen_ai.usage.cache_read.input_tokens": 4096,
                         "gen_ai.usage.cost": 0.01}}, scope="openlit.otel.tracing")
    assert row["convention"] == "openlit" and row["input_tokens"] == 5000
    assert row["cost_usd"] == Decimal("0.011380000000")


def test_total_tokens_reveal_cache_exclusive_input() -> None:
    """Strands-style spans: input excludes cache; total = input + cache + output."""
    row = one({"attrs": {"gen_ai.operation.name": "chat", "gen_ai.system": "strands-agents",
                         "gen_ai.request.model": "claude-sonnet-4-5",
                         "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 200,
                         "gen_ai.usage.cache_read_input_tokens": 8000,
                         "gen_ai.usage.cache_write_input_tokens": 1000,
                         "gen_ai.usage.total_tokens": 10200}})
    _check_anthropic(row)


# ------------------------------------------------------------------ the table itself


def test_every_field_source_names_a_known_convention() -> None:
    for fld, sources in cv.FIELDS.items():
        assert sources, fld
        for s in sources:
            assert s.convention in cv.CONVENTIONS, (fld, s)


def test_span_kind_table() -> None:
    assert cv.span_kind({"gen_ai.operation.name": "embeddings"}) == "llm"
    assert cv.span_kind({"gen_ai.operation.name": "invoke_workflow"}) == "chain"
    assert cv.span_kind({"gen_ai.operation.name": "retrieval"}) == "other"
    assert cv.span_kind({"openinference.span.kind": "AGENT"}) == "agent"
    assert cv.span_kind({"llm.request.type": "embedding"}) == "llm"
    assert cv.span_kind({"http.method": "GET"}) == "other"


def test_provider_names_canonical() -> None:
    assert cv.canonical_provider("gcp.vertex_ai") == ("google", True)
    assert cv.canonical_provider("az.ai.openai") == ("azure", True)
    assert cv.canonical_provider("Anthropic") == ("anthropic", True)
    assert cv.canonical_provider("acme-llm") == ("acme-llm", False)
    assert cv.canonical_provider(None) == (None, False)
