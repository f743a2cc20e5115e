"""Attribute names of every GenAI convention, mapped to our fields: one table, data only.

Four conventions name the same facts differently: the OpenTelemetry GenAI semantic
conventions (``semconv``, with their deprecated names), OpenLLMetry / Traceloop
(``openllmetry``), OpenInference / Arize (``openinference``) and OpenLIT (``openlit``).
:data:`FIELDS` lists, per field, the attribute keys to try in order (the first present
wins); :data:`KIND_MARKERS` says which spans are calls; :data:`CACHE_EXCLUSIVE_RULES`
says which emitters report input tokens without the cached ones. Adding a convention is
adding rows here, never an ``if`` in the normaliser.

Canonical token meaning (semconv's): ``input_tokens`` INCLUDES cache-read and
cache-write tokens; ``output_tokens`` INCLUDES reasoning tokens. The uncached input is
``input - cache_read - cache_write``, each part priced at its own rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEMCONV, OPENLLMETRY, OPENINFERENCE, OPENLIT = "semconv", "openllmetry", "openinference", \
    "openlit"
CONVENTIONS = (SEMCONV, OPENLLMETRY, OPENINFERENCE, OPENLIT)

# Our own attributes (set by applications or by llmspend's SDK helpers).
BATCH_ATTRIBUTE = "llmspend.batch"
#: ``llmspend.<fee>_calls`` counts the requests of a per-request fee (e.g. web_search).
FEE_COUNT_ATTRIBUTE = "llmspend.{fee}_calls"
#: Sampling: a probability in (0, 1], or "1 in N" when above 1 (Honeycomb ``SampleRate``).
SAMPLING_ATTRIBUTES = ("llmspend.sampling_ratio", "sampling.ratio", "sampling.rate",
                       "SampleRate", "sample_rate")


@dataclass(frozen=True)
class Source:
    """One attribute that can carry a field: its key, its convention, and a guard.

    ``when`` = (key, value): use this source only if that attribute has that value
    (e.g. ``traceloop.entity.name`` is the agent name only on ``traceloop.span.kind =
    agent`` spans).
    """

    key: str
    convention: str
    note: str = ""
    when: tuple[str, str] | None = None


S, L, I, T = SEMCONV, OPENLLMETRY, OPENINFERENCE, OPENLIT  # noqa: E741 - table brevity

#: field -> attribute sources, first present wins. Token notes state what each
#: instrumentation puts in the value (checked against their sources).
FIELDS: Mapping[str, tuple[Source, ...]] = {
    "operation": (
        Source("gen_ai.operation.name", S),
        Source("llm.request.type", L, "chat / completion / embedding / rerank"),
    ),
    "provider": (
        Source("gen_ai.provider.name", S),
        Source("gen_ai.system", S, "deprecated semconv name; OpenLLMetry and OpenLIT use it"),
        Source("llm.provider", I, "hosting provider (openai, azure, aws, google...)"),
        Source("llm.system", I, "model family (openai, anthropic, vertexai...)"),
    ),
    "request_model": (
        Source("gen_ai.request.model", S, "also OpenLLMetry and OpenLIT"),
        Source("llm.model_name", I, "OpenInference has one model name (the response's)"),
        Source("embedding.model_name", I),
    ),
    "response_model": (
        Source("gen_ai.response.model", S, "also OpenLLMetry and OpenLIT"),
        Source("llm.model_name", I),
        Source("embedding.model_name", I),
    ),
    "input_tokens": (
        Source("gen_ai.usage.input_tokens", S,
               "includes cache per semconv; OpenLIT's Anthropic spans exclude it (rules)"),
        Source("gen_ai.usage.prompt_tokens", L,
               "includes cache: the Anthropic instrumentation adds cache_read + "
               "cache_creation to Anthropic's input_tokens; OpenAI's prompt_tokens does"),
        Source("llm.token_count.prompt", I,
               "includes cache: openinference-instrumentation-anthropic sums "
               "input + cache_creation + cache_read"),
    ),
    "output_tokens": (
        Source("gen_ai.usage.output_tokens", S, "includes reasoning tokens"),
        Source("gen_ai.usage.completion_tokens", L),
        Source("llm.token_count.completion", I),
    ),
    "cache_read_tokens": (
        Source("gen_ai.usage.cache_read.input_tokens", S),
        Source("gen_ai.usage.cache_read_input_tokens", L, "also Strands agents"),
        Source("llm.token_count.prompt_details.cache_read", I),
    ),
    "cache_write_tokens": (
        Source("gen_ai.usage.cache_creation.input_tokens", S),
        Source("gen_ai.usage.cache_creation_input_tokens", L),
        Source("gen_ai.usage.cache_write_input_tokens", L, "Strands agents' name"),
        Source("llm.token_count.prompt_details.cache_write", I),
    ),
    "reasoning_tokens": (
        Source("gen_ai.usage.reasoning.output_tokens", S),
        Source("gen_ai.usage.reasoning_tokens", L),
        Source("llm.token_count.completion_details.reasoning", I),
    ),
    "total_tokens": (
        Source("llm.usage.total_tokens", L),
        Source("llm.token_count.total", I),
        Source("gen_ai.usage.total_tokens", S, "not semconv; Strands and others set it"),
    ),
    "finish_reasons": (
        Source("gen_ai.response.finish_reasons", S, "string array"),
        Source("llm.response.finish_reason", L),
        Source("llm.response.stop_reason", L),
        Source("gen_ai.completion.0.finish_reason", L, "content prefix: collector path only"),
    ),
    "session_id": (
        Source("gen_ai.conversation.id", S),
        Source("session.id", I),
        Source("traceloop.association.properties.session_id", L),
    ),
    "agent_id": (
        Source("gen_ai.agent.id", S),
        Source("agent.id", I),
    ),
    "agent_name": (
        Source("gen_ai.agent.name", S),
        Source("agent.name", I),
        Source("traceloop.entity.name", L, when=("traceloop.span.kind", "agent")),
    ),
    "tool_name": (
        Source("gen_ai.tool.name", S),
        Source("tool.name", I),
        Source("traceloop.entity.name", L, when=("traceloop.span.kind", "tool")),
    ),
    "tool_call_id": (
        Source("gen_ai.tool.call.id", S),
        Source("tool_call.id", I),
    ),
    "error_type": (Source("error.type", S),),
    "server_address": (Source("server.address", S),),
    "app_reported_cost": (
        Source("gen_ai.usage.cost", T, "USD, a double: kept beside our cost"),
        Source("llm.cost.total", I, "USD"),
    ),
    "ttft_s": (
        Source("gen_ai.response.time_to_first_chunk", S, "seconds"),
        Source("gen_ai.server.time_to_first_token", T, "seconds"),
        Source("gen_ai.server.ttft", T, "seconds (older OpenLIT)"),
    ),
    "user_id": (  # after the configured attribution.user_keys
        Source("user.id", I),
        Source("traceloop.association.properties.user_id", L),
    ),
}

#: (attribute, value, kind): what a span is. Checked in order; the first attribute
#: present decides. Kinds: llm (priced call), tool (execution, cost 0), agent and chain
#: (never calls: they may carry their children's summed tokens), other.
KIND_MARKERS: tuple[tuple[str, str, str], ...] = (
    ("gen_ai.operation.name", "chat", "llm"),
    ("gen_ai.operation.name", "text_completion", "llm"),
    ("gen_ai.operation.name", "generate_content", "llm"),
    ("gen_ai.operation.name", "embeddings", "llm"),
    ("gen_ai.operation.name", "execute_tool", "tool"),
    ("gen_ai.operation.name", "invoke_agent", "agent"),
    ("gen_ai.operation.name", "create_agent", "agent"),
    ("gen_ai.operation.name", "invoke_workflow", "chain"),
    ("openinference.span.kind", "LLM", "llm"),
    ("openinference.span.kind", "EMBEDDING", "llm"),
    ("openinference.span.kind", "TOOL", "tool"),
    ("openinference.span.kind", "AGENT", "agent"),
    ("openinference.span.kind", "CHAIN", "chain"),
    ("llm.request.type", "chat", "llm"),
    ("llm.request.type", "completion", "llm"),
    ("llm.request.type", "embedding", "llm"),
    ("traceloop.span.kind", "tool", "tool"),
    ("traceloop.span.kind", "agent", "agent"),
    ("traceloop.span.kind", "workflow", "chain"),
    ("traceloop.span.kind", "task", "chain"),
)
KIND_KEYS = tuple(dict.fromkeys(k for k, _, _ in KIND_MARKERS))
_KIND_BY_MARKER = {(k, v.lower()): kind for k, v, kind in KIND_MARKERS}

#: Which convention a span follows: (convention, attribute keys, scope-name prefixes,
#: resource (key, value)). First match wins; nothing matched = semconv.
CONVENTION_MARKERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...],
                                tuple[str, str] | None], ...] = (
    (OPENINFERENCE, ("openinference.span.kind",), ("openinference.",), None),
    (OPENLIT, ("gen_ai.usage.cost",), ("openlit",), ("telemetry.sdk.name", "openlit")),
    (OPENLLMETRY, ("llm.request.type", "traceloop.span.kind", "llm.usage.total_tokens",
                   "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"),
     ("traceloop",), None),
)

#: Emitters whose input token count EXCLUDES cache reads and writes (Anthropic's API
#: style). Conditions on convention / canonical provider / ``gen_ai.system``. For them
#: canonical input = reported input + cache_read + cache_write.
CACHE_EXCLUSIVE_RULES: tuple[dict[str, str], ...] = (
    # openlit/instrumentation/anthropic/utils.py: "Anthropic's API reports input_tokens
    # exclusive of cache read / creation tokens" and sets gen_ai.usage.input_tokens to it.
    {"convention": OPENLIT, "provider": "anthropic"},
    # Strands agents: input_tokens + cache_read + cache_write + output == total_tokens.
    {"system": "strands-agents"},
)

#: Provider names of every convention -> our canonical provider (the catalog's names).
PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "azure.ai.openai": "azure", "az.ai.openai": "azure", "azure": "azure",
    "azure_openai": "azure", "azure.ai.inference": "azure", "az.ai.inference": "azure",
    "anthropic": "anthropic",
    "aws.bedrock": "aws.bedrock", "bedrock": "aws.bedrock", "aws": "aws.bedrock",
    "gcp.gemini": "google", "gcp.gen_ai": "google", "gcp.vertex_ai": "google",
    "vertex_ai": "google", "vertexai": "google", "gemini": "google", "google": "google",
    "google_genai": "google",
    "mistral_ai": "mistral", "mistralai": "mistral", "mistral": "mistral",
    "cohere": "cohere", "groq": "groq", "deepseek": "deepseek", "x_ai": "xai", "xai": "xai",
    "perplexity": "perplexity", "ibm.watsonx.ai": "ibm", "together": "together",
    "self-hosted": "self-hosted", "self_hosted": "self-hosted", "vllm": "self-hosted",
    "ollama": "self-hosted", "tgi": "self-hosted",
}


def first(attrs: Mapping[str, Any], field: str) -> tuple[Any, str | None]:
    """(value, convention) of the first source of ``field`` present in ``attrs``."""
    for src in FIELDS[field]:
        if src.key in attrs and attrs[src.key] is not None and attrs[src.key] != "":
            if src.when is not None and attrs.get(src.when[0]) != src.when[1]:
                continue
            return attrs[src.key], src.convention
    return None, None


def span_kind(attrs: Mapping[str, Any]) -> str:
    """llm / tool / agent / chain / other, from :data:`KIND_MARKERS`."""
    for key in KIND_KEYS:
        value = attrs.get(key)
        if value is not None:
            kind = _KIND_BY_MARKER.get((key, str(value).lower()))
            return kind or "other"
    return "other"


def convention(attrs: Mapping[str, Any], scope_name: str,
               resource: Mapping[str, Any]) -> str:
    """The convention a span follows, from :data:`CONVENTION_MARKERS`."""
    for name, keys, prefixes, res in CONVENTION_MARKERS:
        if any(k in attrs for k in keys) or scope_name.startswith(prefixes) or (
                res is not None and resource.get(res[0]) == res[1]):
            return name
    return SEMCONV


def canonical_provider(raw: Any) -> tuple[str | None, bool]:
    """(canonical provider, known?) for a provider name of any convention."""
    if raw is None or raw == "":
        return None, False
    name = str(raw).strip().lower()
    if name in PROVIDERS:
        return PROVIDERS[name], True
    return name, False


def input_excludes_cache(conv: str, provider: str | None, attrs: Mapping[str, Any]) -> bool:
    """True when this emitter's input token count leaves cache tokens out."""
    ctx = {"convention": conv, "provider": provider or "",
           "system": str(attrs.get("gen_ai.system", "")).lower()}
    return any(all(ctx.get(k) == v for k, v in rule.items()) for rule in CACHE_EXCLUSIVE_RULES)
