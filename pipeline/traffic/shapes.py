"""Span shapes of the real instrumentations: one function per span role and convention.

Three conventions, as their instrumentations write them:

* ``semconv``: OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name``,
  ``gen_ai.provider.name``, ``gen_ai.usage.input_tokens`` INCLUDING cached tokens,
  ``gen_ai.input.messages`` as JSON parts, ``gen_ai.conversation.id``, ``error.type``);
* ``openllmetry``: Traceloop's OpenLLMetry (``gen_ai.system``, ``llm.request.type``,
  ``gen_ai.usage.prompt_tokens``, flattened ``gen_ai.prompt.N.*``,
  ``traceloop.span.kind`` on agent/tool/workflow spans, session in
  ``traceloop.association.properties.session_id``);
* ``openinference``: Arize OpenInference (``openinference.span.kind``,
  ``llm.model_name``, ``llm.token_count.*``, ``llm.input_messages.N.message.*``,
  ``session.id``, tool arguments in ``input.value``).

Every function returns ``(span name, span kind, attributes)``; kinds are ``client``,
``internal`` or ``server``. Message text is synthetic; ingest hashes and drops it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pipeline.traffic.profiles import PROVIDER_NAMES, SERVER_ADDRESS

SEMCONV, OPENLLMETRY, OPENINFERENCE = "semconv", "openllmetry", "openinference"
CONVENTIONS = (SEMCONV, OPENLLMETRY, OPENINFERENCE)

#: Instrumentation scope of each (convention, role): what the real libraries report.
SCOPES = {
    (SEMCONV, "llm"): "opentelemetry.instrumentation.genai",
    (SEMCONV, "other"): "llmspend.generate",
    (OPENLLMETRY, "llm"): "opentelemetry.instrumentation.openai.v1",
    (OPENLLMETRY, "other"): "traceloop.tracer",
    (OPENINFERENCE, "llm"): "openinference.instrumentation.openai",
    (OPENINFERENCE, "other"): "openinference.instrumentation.agents",
}


class Msg(NamedTuple):
    """One chat message: text, or a tool call (assistant) / tool result (tool)."""

    role: str
    text: str
    call_id: str = ""      # tool call id (assistant tool call or tool result)
    tool: str = ""         # tool name (assistant tool call)
    arguments: str = ""    # tool arguments JSON (assistant tool call)


class Usage(NamedTuple):
    input_tokens: int       # INCLUDES cached and cache-write tokens
    output_tokens: int
    cache_read: int
    cache_write: int


# ------------------------------------------------------------------ messages


def _semconv_part(m: Msg) -> dict[str, Any]:
    if m.tool:
        return {"type": "tool_call", "id": m.call_id, "name": m.tool,
                "arguments": json.loads(m.arguments)}
    if m.role == "tool":
        return {"type": "tool_call_response", "id": m.call_id, "response": m.text}
    return {"type": "text", "content": m.text}


def semconv_messages(msgs: list[Msg]) -> str:
    return json.dumps([{"role": m.role, "parts": [_semconv_part(m)]} for m in msgs],
                      separators=(",", ":"))


def _indexed(attrs: dict[str, Any], prefix: str, msgs: list[Msg], inner: str) -> None:
    """Flattened messages: ``{prefix}.{i}.{inner}role`` etc."""
    for i, m in enumerate(msgs):
        base = f"{prefix}.{i}.{inner}"
        attrs[base + "role"] = m.role
        if m.tool:
            if inner:   # OpenInference
                tc = base + "tool_calls.0.tool_call."
                attrs[tc + "id"] = m.call_id
                attrs[tc + "function.name"] = m.tool
                attrs[tc + "function.arguments"] = m.arguments
            else:       # OpenLLMetry
                attrs[base + "tool_calls.0.id"] = m.call_id
                attrs[base + "tool_calls.0.name"] = m.tool
                attrs[base + "tool_calls.0.arguments"] = m.arguments
        else:
            attrs[base + "content"] = m.text
            if m.role == "tool":
                attrs[base + "tool_call_id"] = m.call_id


# ------------------------------------------------------------------ span roles


def chat(conv: str, *, provider: str, model: str, usage: Usage | None,
         messages: list[Msg], answer: Msg | None, session_id: str | None,
         error_type: str | None, response_id: str, temperature: float) -> tuple[str, str,
                                                                                dict]:
    """One LLM call (an attempt: errors report no usage)."""
    pname = PROVIDER_NAMES[conv][provider]
    finish = "tool_calls" if answer is not None and answer.tool else "stop"
    a: dict[str, Any] = {}
    if conv == SEMCONV:
        a["gen_ai.operation.name"] = "chat"
        a["gen_ai.provider.name"] = pname
        a["gen_ai.request.model"] = model
        a["gen_ai.request.temperature"] = temperature
        a["server.address"] = SERVER_ADDRESS[provider]
        a["server.port"] = 443
        if session_id:
            a["gen_ai.conversation.id"] = session_id
        a["gen_ai.input.messages"] = semconv_messages(messages)
        if usage is not None:
            a["gen_ai.response.model"] = model
            a["gen_ai.response.id"] = response_id
            a["gen_ai.response.finish_reasons"] = (finish,)
            a["gen_ai.usage.input_tokens"] = usage.input_tokens
            a["gen_ai.usage.output_tokens"] = usage.output_tokens
            if usage.cache_read:
                a["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
            if usage.cache_write:
                a["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write
            if answer is not None:
                a["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "parts": [_semconv_part(answer)],
                      "finish_reason": finish}], separators=(",", ":"))
        if error_type:
            a["error.type"] = error_type
        return f"chat {model}", "client", a
    if conv == OPENLLMETRY:
        a["llm.request.type"] = "chat"
        a["gen_ai.system"] = pname
        a["gen_ai.request.model"] = model
        a["gen_ai.request.temperature"] = temperature
        a["llm.is_streaming"] = False
        if session_id:
            a["traceloop.association.properties.session_id"] = session_id
        _indexed(a, "gen_ai.prompt", messages, "")
        if usage is not None:
            a["gen_ai.response.model"] = model
            a["gen_ai.response.id"] = response_id
            a["gen_ai.usage.prompt_tokens"] = usage.input_tokens
            a["gen_ai.usage.completion_tokens"] = usage.output_tokens
            a["llm.usage.total_tokens"] = usage.input_tokens + usage.output_tokens
            if usage.cache_read:
                a["gen_ai.usage.cache_read_input_tokens"] = usage.cache_read
            if usage.cache_write:
                a["gen_ai.usage.cache_creation_input_tokens"] = usage.cache_write
            if answer is not None:
                _indexed(a, "gen_ai.completion", [answer], "")
                a["gen_ai.completion.0.finish_reason"] = finish
        return f"{pname.lower()}.chat", "client", a
    # OpenInference
    a["openinference.span.kind"] = "LLM"
    a["llm.provider"] = pname
    a["llm.system"] = {"google": "vertexai"}.get(provider, pname)
    a["llm.model_name"] = model
    a["llm.invocation_parameters"] = json.dumps({"temperature": temperature})
    if session_id:
        a["session.id"] = session_id
    _indexed(a, "llm.input_messages", messages, "message.")
    if usage is not None:
        a["llm.token_count.prompt"] = usage.input_tokens
        a["llm.token_count.completion"] = usage.output_tokens
        a["llm.token_count.total"] = usage.input_tokens + usage.output_tokens
        if usage.cache_read:
            a["llm.token_count.prompt_details.cache_read"] = usage.cache_read
        if usage.cache_write:
            a["llm.token_count.prompt_details.cache_write"] = usage.cache_write
        if answer is not None:
            _indexed(a, "llm.output_messages", [answer], "message.")
    name = {"openai": "ChatCompletion", "anthropic": "Messages",
            "google": "GenerateContent"}.get(provider, "Completion")
    return name, "client", a


def tool(conv: str, *, name: str, call_id: str, arguments: str, result: str,
         session_id: str | None) -> tuple[str, str, dict]:
    """One tool execution (a call of kind ``tool``, cost 0)."""
    a: dict[str, Any] = {}
    if conv == SEMCONV:
        a["gen_ai.operation.name"] = "execute_tool"
        a["gen_ai.tool.name"] = name
        a["gen_ai.tool.type"] = "function"
        a["gen_ai.tool.call.id"] = call_id
        a["gen_ai.tool.call.arguments"] = arguments
        a["gen_ai.tool.call.result"] = result
        if session_id:
            a["gen_ai.conversation.id"] = session_id
        return f"execute_tool {name}", "internal", a
    if conv == OPENLLMETRY:
        a["traceloop.span.kind"] = "tool"
        a["traceloop.entity.name"] = name
        a["traceloop.entity.input"] = json.dumps({"args": [], "kwargs": json.loads(arguments)},
                                                 separators=(",", ":"))
        a["traceloop.entity.output"] = json.dumps(result)
        if session_id:
            a["traceloop.association.properties.session_id"] = session_id
        return f"{name}.tool", "internal", a
    a["openinference.span.kind"] = "TOOL"
    a["tool.name"] = name
    a["tool_call.id"] = call_id
    a["input.value"] = arguments
    a["input.mime_type"] = "application/json"
    a["output.value"] = result
    if session_id:
        a["session.id"] = session_id
    return name, "internal", a


def agent(conv: str, *, name: str, agent_id: str, provider: str,
          session_id: str | None) -> tuple[str, str, dict]:
    """The root ``invoke_agent`` span of one agent run (never a call)."""
    a: dict[str, Any] = {}
    if conv == SEMCONV:
        a["gen_ai.operation.name"] = "invoke_agent"
        a["gen_ai.provider.name"] = PROVIDER_NAMES[conv][provider]
        a["gen_ai.agent.name"] = name
        a["gen_ai.agent.id"] = agent_id
        if session_id:
            a["gen_ai.conversation.id"] = session_id
        return f"invoke_agent {name}", "internal", a
    if conv == OPENLLMETRY:
        a["traceloop.span.kind"] = "agent"
        a["traceloop.entity.name"] = name
        if session_id:
            a["traceloop.association.properties.session_id"] = session_id
        return f"{name}.agent", "internal", a
    a["openinference.span.kind"] = "AGENT"
    a["agent.name"] = name
    a["agent.id"] = agent_id
    if session_id:
        a["session.id"] = session_id
    return name, "internal", a


def workflow(conv: str, *, use_case: str, session_id: str | None) -> tuple[str, str, dict]:
    """The root span of a non-agent request (HTTP handler / workflow): not a call."""
    a: dict[str, Any] = {}
    if conv == SEMCONV:
        a["http.request.method"] = "POST"
        a["http.route"] = f"/v1/{use_case}"
        a["http.response.status_code"] = 200
        return f"POST /v1/{use_case}", "server", a
    if conv == OPENLLMETRY:
        a["traceloop.span.kind"] = "workflow"
        a["traceloop.workflow.name"] = use_case
        a["traceloop.entity.name"] = use_case
        if session_id:
            a["traceloop.association.properties.session_id"] = session_id
        return f"{use_case}.workflow", "internal", a
    a["openinference.span.kind"] = "CHAIN"
    if session_id:
        a["session.id"] = session_id
    return use_case, "internal", a
