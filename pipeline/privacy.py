"""Message content is personal data: keep keyed hashes of it, never the text.

The ingest receivers, the SDK exporter and (for the collector path) the normaliser all
call :func:`content_hashes` and :func:`is_content_key` so that a prompt hashes to the
same value whichever convention carried it and whichever path it took.

Three hashes survive (span attributes set at ingest, columns of ``llm_calls``):

* ``llmspend.prompt_hash``: the whole input (identical, cacheable requests);
* ``llmspend.last_message_hash``: the last input message only, the "same step again"
  signal for loop detection (a looping agent's full prompt grows every step);
* ``llmspend.tool_args_hash``: the tool call arguments.

Hashes are keyed BLAKE2b MACs under a secret key (``LLMSPEND_HASH_KEY`` or a key file),
128 bits (32 hex digits): enough to make collisions irrelevant, short enough to store;
without the key nobody can test a guessed prompt against a stored hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring as _json_string
from typing import Any

PROMPT_HASH = "llmspend.prompt_hash"
LAST_MESSAGE_HASH = "llmspend.last_message_hash"
TOOL_ARGS_HASH = "llmspend.tool_args_hash"
HASH_ATTRIBUTES = (PROMPT_HASH, LAST_MESSAGE_HASH, TOOL_ARGS_HASH)

#: Attribute keys that carry message content, exactly.
CONTENT_KEYS = frozenset({
    # OTel GenAI semantic conventions
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "gen_ai.tool.definitions",
    "gen_ai.prompt", "gen_ai.completion",
    # OpenInference
    "input.value", "output.value", "llm.prompts", "llm.prompt_template.template",
    "llm.prompt_template.variables", "tool.parameters",
    # OpenLIT
    "gen_ai.content.prompt", "gen_ai.content.completion",
    # Traceloop / OpenLLMetry entity I/O
    "traceloop.entity.input", "traceloop.entity.output",
})
#: Attribute key prefixes whose every key carries content (indexed flattened messages).
CONTENT_PREFIXES = (
    "gen_ai.prompt.", "gen_ai.completion.",          # OpenLLMetry gen_ai.prompt.0.content
    "llm.input_messages.", "llm.output_messages.",   # OpenInference
    "llm.prompts.",
)
#: Span events that carry content (older semconv event-based messages and OpenLLMetry).
CONTENT_EVENT_PREFIXES = ("gen_ai.",)
#: Event names whose attributes are content even without a content key.
CONTENT_EVENT_NAMES = frozenset({
    "gen_ai.content.prompt", "gen_ai.content.completion", "gen_ai.user.message",
    "gen_ai.system.message", "gen_ai.assistant.message", "gen_ai.tool.message",
    "gen_ai.choice", "gen_ai.client.inference.operation.details",
})

HASH_HEX_DIGITS = 32


class HashKeyError(ValueError):
    """No usable hashing key is configured."""


def is_content_key(key: str) -> bool:
    """True if an attribute with this key carries message content."""
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


def keyed_hash(key: bytes, data: str | bytes) -> str:
    """Keyed BLAKE2b (a MAC, like HMAC but one pass) of ``data``: 32 lowercase hex digits.

    Keys longer than BLAKE2b's 64-byte limit are first reduced with SHA-256.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    return hashlib.blake2b(data, key=key, digest_size=HASH_HEX_DIGITS // 2).hexdigest()


# ------------------------------------------------------------ message canonical form


def _text_of(content: Any) -> str:
    """The text of a message's content, whatever shape the convention gives it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # semconv parts or OpenAI content blocks
        return "".join(_text_of(p) for p in content)
    if isinstance(content, Mapping):
        for k in ("content", "text", "value", "arguments", "result", "response"):
            if k in content:
                return _text_of(content[k])
        if "parts" in content:
            return _text_of(content["parts"])
        return json.dumps(content, sort_keys=True, separators=(",", ":"))
    return str(content)


def canonical_message(role: str, content: Any) -> str:
    """One message as canonical JSON (role + text) so conventions hash alike."""
    role, text = role or "", _text_of(content)
    if type(role) is str:      # what json.dumps writes for two strings, without its setup
        return f"[{_json_string(role)},{_json_string(text)}]"
    return json.dumps([role, text], ensure_ascii=False, separators=(",", ":"))


def _parse_json_messages(raw: str) -> list[tuple[str, Any]]:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return [("", raw)]
    if isinstance(value, Mapping):
        value = value.get("messages", [value])
    if not isinstance(value, list):
        return [("", value)]
    out = []
    for m in value:
        if isinstance(m, Mapping):
            out.append((str(m.get("role", "")), m.get("parts", m.get("content", m))))
        else:
            out.append(("", m))
    return out


_INDEXED = re.compile(r"^(?P<prefix>gen_ai\.prompt|llm\.input_messages)\.(?P<i>\d+)\."
                      r"(?P<field>.+)$")


def input_messages(attrs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The input messages of a span, from whichever convention carried them."""
    if "gen_ai.input.messages" in attrs:
        msgs = _parse_json_messages(attrs["gen_ai.input.messages"])
        if "gen_ai.system_instructions" in attrs:
            msgs.insert(0, ("system", _text_of(
                _parse_json_messages(attrs["gen_ai.system_instructions"]))))
        return msgs
    indexed: dict[int, dict[str, Any]] = {}
    for k, v in attrs.items():
        m = _INDEXED.match(k)
        if m:
            fld = m["field"].removeprefix("message.")
            indexed.setdefault(int(m["i"]), {})[fld] = v
    if indexed:
        return [(str(indexed[i].get("role", "")),
                 indexed[i].get("content", indexed[i].get("contents", "")))
                for i in sorted(indexed)]
    for k in ("gen_ai.prompt", "gen_ai.content.prompt", "input.value", "llm.prompts",
              "traceloop.entity.input"):
        if k in attrs:
            return _parse_json_messages(attrs[k])
    return []


#: Span-kind attributes that tell a tool span's content apart from messages; callers
#: pass them to :func:`content_hashes` beside the content attributes (a set: the
#: receiver tests every attribute key of every span against it).
KIND_KEYS = frozenset(("openinference.span.kind", "traceloop.span.kind",
                       "gen_ai.operation.name"))


def _is_tool_span(attrs: Mapping[str, Any]) -> bool:
    return (attrs.get("openinference.span.kind") == "TOOL"
            or attrs.get("traceloop.span.kind") == "tool"
            or attrs.get("gen_ai.operation.name") == "execute_tool")


def tool_arguments(attrs: Mapping[str, Any]) -> str | None:
    """The tool call arguments of a span as canonical text, if any."""
    if _is_tool_span(attrs) and "traceloop.entity.input" in attrs:
        raw = attrs["traceloop.entity.input"]
        try:  # Traceloop wraps them: {"args": [...], "kwargs": {...}}
            value = json.loads(raw)
            if isinstance(value, Mapping) and "kwargs" in value:
                raw = json.dumps(value["kwargs"])
        except (TypeError, ValueError):
            pass
        return tool_arguments({"gen_ai.tool.call.arguments": raw})
    for k in ("gen_ai.tool.call.arguments", "tool.parameters"):
        if k in attrs:
            raw = attrs[k]
            try:
                return json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False)
            except (TypeError, ValueError):
                return str(raw)
    if _is_tool_span(attrs) and "input.value" in attrs:
        return tool_arguments({"gen_ai.tool.call.arguments": attrs["input.value"]})
    return None


def content_hashes(key: bytes, attrs: Mapping[str, Any]) -> dict[str, str]:
    """The ``llmspend.*_hash`` attributes for one span's content attributes (plus its
    :data:`KIND_KEYS`, so a tool span's input counts as arguments, not messages)."""
    out: dict[str, str] = {}
    if _is_tool_span(attrs):
        args = tool_arguments(attrs)
        if args is not None:
            out[TOOL_ARGS_HASH] = keyed_hash(key, args)
            return out
    msgs = input_messages(attrs)
    if msgs:
        canon = [canonical_message(r, c) for r, c in msgs]
        out[PROMPT_HASH] = keyed_hash(key, "\n".join(canon))
        out[LAST_MESSAGE_HASH] = keyed_hash(key, canon[-1])
    args = tool_arguments(attrs)
    if args is not None:
        out[TOOL_ARGS_HASH] = keyed_hash(key, args)
    return out


def content_keys(keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` that carry content (to drop)."""
    return [k for k in keys if is_content_key(k)]


def is_content_event(name: str, attribute_keys: Iterable[str]) -> bool:
    """True if a span event carries message content and must be dropped."""
    return name in CONTENT_EVENT_NAMES or (
        name.startswith(CONTENT_EVENT_PREFIXES) and any(map(is_content_key, attribute_keys)))
