"""Hand-made GenAI spans through the real OpenTelemetry SDK, for tests that need a few
known calls (several teams, models and conventions, prompt text to strip) or an agent
stuck in a loop (the same tool with the same arguments, round after round)."""

from __future__ import annotations

import json
from collections import defaultdict

#: (team, service, model, provider, input tokens, cached, output tokens) per demo call.
SAMPLE_CALLS = [
    ("support", "support-bot", "gpt-4o-mini", "openai", 2_400, 1_024, 180),
    ("support", "support-bot", "gpt-4o-mini", "openai", 3_100, 2_048, 220),
    ("support", "support-bot", "gpt-4o", "openai", 5_200, 0, 640),
    ("legal", "contract-review", "claude-sonnet-4-5", "anthropic", 18_000, 12_000, 1_500),
    ("legal", "contract-review", "claude-sonnet-4-5", "anthropic", 21_000, 18_000, 900),
    ("search", "doc-search", "text-embedding-3-small", "openai", 8_000, 0, 0),
    ("search", "doc-search", "gemini-2.5-flash", "gcp.gemini", 4_000, 0, 350),
    ("labs", "prototype", "my-finetune-v0", "openai", 1_000, 0, 100),
]


def sample_request(n_calls: int = 3) -> bytes:
    """An ExportTraceServiceRequest of GenAI chat spans made by the real OTel SDK."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    emit_calls(exporter, SAMPLE_CALLS[:1] * n_calls, session="sample")
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


def emit_calls(exporter, calls, session: str) -> None:
    """Emit one chat span per call through the SDK to ``exporter``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    by_service: dict[str, list] = defaultdict(list)
    for call in calls:
        by_service[call[1]].append(call)
    for service, group in by_service.items():
        provider = TracerProvider(resource=Resource.create(
            {"service.name": service, "deployment.environment.name": "demo"}),
            shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("llmspend.samples")
        for i, (team, _svc, model, prov, inp, cached, out) in enumerate(group):
            op = "embeddings" if "embedding" in model else "chat"
            with tracer.start_as_current_span(f"{op} {model}") as span:
                span.set_attribute("gen_ai.operation.name", op)
                span.set_attribute("gen_ai.provider.name", prov)
                span.set_attribute("gen_ai.request.model", model)
                span.set_attribute("gen_ai.conversation.id", f"{session}-{service}")
                span.set_attribute("gen_ai.usage.input_tokens", inp)
                span.set_attribute("gen_ai.usage.cache_read.input_tokens", cached)
                span.set_attribute("gen_ai.usage.output_tokens", out)
                span.set_attribute("llmspend.team", team)
                span.set_attribute("user.id", f"user-{i}")
                span.set_attribute("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text",
                                                 "content": f"demo question {i}"}]}]))
        # Flush, not shutdown: shutting a provider down also shuts the shared exporter.
        provider.force_flush()


#: The demo's runaway agent: rounds of (decide with the model, call the same tool).
LOOP_ROUNDS = 7


def emit_loop(exporter, session: str) -> None:
    """An agent stuck in a loop: the same search with the same arguments, each answer
    empty, the model deciding to search again."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": "refund-agent", "deployment.environment.name": "demo"}),
        shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("llmspend.samples")
    with tracer.start_as_current_span("invoke_agent refund-agent") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.agent.name", "refund-agent")
        root.set_attribute("gen_ai.conversation.id", session)
        for i in range(LOOP_ROUNDS):
            with tracer.start_as_current_span("chat gpt-4o-mini") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.provider.name", "openai")
                span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                span.set_attribute("gen_ai.conversation.id", session)
                span.set_attribute("gen_ai.usage.input_tokens", 1_800 + 60 * i)
                span.set_attribute("gen_ai.usage.output_tokens", 35)
                span.set_attribute("llmspend.team", "support")
            with tracer.start_as_current_span("execute_tool search_kb") as span:
                span.set_attribute("gen_ai.operation.name", "execute_tool")
                span.set_attribute("gen_ai.tool.name", "search_kb")
                span.set_attribute("gen_ai.conversation.id", session)
                span.set_attribute("gen_ai.tool.call.arguments",
                                   '{"query": "refund policy for damaged items"}')
            provider.force_flush()   # one export per step, as a live agent would
    provider.force_flush()
