"""The calls table (``llm_calls``): one row per priced LLM call or tool execution.

This module is the single source of truth of its shape: the Arrow schema :data:`CALLS`,
the column name constants every stage imports, each column's meaning (:data:`COLUMNS`,
also the README table) and the JSON Schema of one ``llm_calls`` NDJSON line
(:func:`json_schema`, written to ``schemas/llm_calls.schema.json``; a unit test keeps the
file and this module in step).

Money is ``decimal128(38, 12)``: a cached token can cost 1.875e-8 USD, so 12 fractional
digits keep every per-call cost exact; floats never hold money.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, NamedTuple

import pyarrow as pa

MONEY = pa.decimal128(38, 12)
MONEY_SCALE = 12
TIME = pa.timestamp("us", tz="UTC")


class Column(NamedTuple):
    name: str
    type: pa.DataType
    nullable: bool
    doc: str


# Column names (import these rather than repeating the strings).
CALL_ID = "call_id"
KIND = "kind"
TENANT = "tenant"
SERVICE = "service"
ENVIRONMENT = "environment"
TRACE_ID = "trace_id"
SPAN_ID = "span_id"
PARENT_SPAN_ID = "parent_span_id"
SESSION_ID = "session_id"
AGENT = "agent"
AGENT_ID = "agent_id"
OPERATION = "operation"
PROVIDER = "provider"
REQUEST_MODEL = "request_model"
RESPONSE_MODEL = "response_model"
MODEL = "model"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
CACHED_INPUT_TOKENS = "cached_input_tokens"
CACHE_WRITE_TOKENS = "cache_write_tokens"
REASONING_TOKENS = "reasoning_tokens"
START_TIME = "start_time"
END_TIME = "end_time"
LATENCY_MS = "latency_ms"
TTFT_MS = "ttft_ms"
STATUS = "status"
ERROR_TYPE = "error_type"
FINISH_REASON = "finish_reason"
TOOL_NAME = "tool_name"
TOOL_CALL_ID = "tool_call_id"
TOOL_ARGS_HASH = "tool_args_hash"
PROMPT_HASH = "prompt_hash"
LAST_MESSAGE_HASH = "last_message_hash"
TEAM = "team"
USER_ID = "user_id"
USE_CASE = "use_case"
UNIT_TYPE = "unit_type"
UNIT_ID = "unit_id"
PROMPT_VERSION = "prompt_version"
COST_USD = "cost_usd"
LIST_COST_USD = "list_cost_usd"
APP_REPORTED_COST_USD = "app_reported_cost_usd"
PRICED = "priced"
PRICE_VERSION = "price_version"
BATCH = "batch"
FEES = "fees"
SAMPLING_RATIO = "sampling_ratio"
SERVER_ADDRESS = "server_address"
CONVENTION = "convention"
ISSUES = "issues"
INPUT_MESSAGES = "input_messages"
OUTPUT_MESSAGES = "output_messages"

#: Values of ``kind`` and ``status``.
KIND_LLM, KIND_TOOL = "llm", "tool"
STATUS_OK, STATUS_ERROR = "ok", "error"

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()

COLUMNS: tuple[Column, ...] = (
    Column(CALL_ID, _S, False, "stable id: hash of tenant + trace id + span id (32 hex); "
           "the same span twice has the same id, tenants never collide"),
    Column(KIND, _S, False, "`llm` (a model call, priced) or `tool` (a tool execution, "
           "cost 0, kept for loop detection)"),
    Column(TENANT, _S, False, "tenant that sent the span (ingest token or Kafka header)"),
    Column(SERVICE, _S, True, "resource `service.name`"),
    Column(ENVIRONMENT, _S, True, "from `attribution.environment_keys`"),
    Column(TRACE_ID, _S, False, "trace id, 32 lowercase hex digits"),
    Column(SPAN_ID, _S, False, "span id, 16 lowercase hex digits"),
    Column(PARENT_SPAN_ID, _S, True, "parent span id (16 hex), null for a root span"),
    Column(SESSION_ID, _S, False, "conversation / session id; the trace id when none is "
           "given (the Kafka key is `tenant|session_id`)"),
    Column(AGENT, _S, True, "agent name: on the span, else the nearest agent ancestor in "
           "the same batch"),
    Column(AGENT_ID, _S, True, "agent id, found the same way"),
    Column(OPERATION, _S, True, "operation (`chat`, `embeddings`, `execute_tool`...)"),
    Column(PROVIDER, _S, True, "provider, canonical (`openai`, `anthropic`, `google`...)"),
    Column(REQUEST_MODEL, _S, True, "model asked for"),
    Column(RESPONSE_MODEL, _S, True, "model that answered"),
    Column(MODEL, _S, True, "catalog model that priced the call (null: unpriced)"),
    Column(INPUT_TOKENS, _I, True, "input tokens INCLUDING cached and cache-write tokens"),
    Column(OUTPUT_TOKENS, _I, True, "output tokens INCLUDING reasoning tokens"),
    Column(CACHED_INPUT_TOKENS, _I, True, "input tokens read from the prompt cache"),
    Column(CACHE_WRITE_TOKENS, _I, True, "input tokens written to the prompt cache"),
    Column(REASONING_TOKENS, _I, True, "reasoning (thinking) output tokens"),
    Column(START_TIME, TIME, False, "span start (UTC, microseconds)"),
    Column(END_TIME, TIME, True, "span end (UTC); null when the span has none"),
    Column(LATENCY_MS, _F, True, "end - start in ms; null when unknown or negative"),
    Column(TTFT_MS, _F, True, "time to first token/chunk in ms, when the span reports it"),
    Column(STATUS, _S, False, "`ok`, or `error` (OTLP status ERROR or `error.type` set)"),
    Column(ERROR_TYPE, _S, True, "`error.type`, else the status message of an error"),
    Column(FINISH_REASON, _S, True, "finish reason(s), comma-separated"),
    Column(TOOL_NAME, _S, True, "tool name (tool calls)"),
    Column(TOOL_CALL_ID, _S, True, "tool call id (tool calls)"),
    Column(TOOL_ARGS_HASH, _S, True, "keyed hash of the tool arguments"),
    Column(PROMPT_HASH, _S, True, "keyed hash of the whole input"),
    Column(LAST_MESSAGE_HASH, _S, True, "keyed hash of the last input message"),
    Column(TEAM, _S, True, "from `attribution.team_keys`"),
    Column(USER_ID, _S, True, "from `attribution.user_keys` (keyed hash when "
           "`privacy.pseudonymise_users`)"),
    Column(USE_CASE, _S, True, "from `attribution.use_case_keys`"),
    Column(UNIT_TYPE, _S, True, "from `attribution.unit_type_keys`"),
    Column(UNIT_ID, _S, True, "from `attribution.unit_id_keys`"),
    Column(PROMPT_VERSION, _S, True, "from `attribution.prompt_version_keys`: the prompt "
           "or variant the call used (compare variants with `llmspend report --compare`)"),
    Column(COST_USD, MONEY, True, "what the call cost this tenant (negotiated prices); "
           "null when unpriced, never a made-up zero"),
    Column(LIST_COST_USD, MONEY, True, "the same call at list prices"),
    Column(APP_REPORTED_COST_USD, MONEY, True, "cost the instrumentation itself reported "
           "(OpenLIT `gen_ai.usage.cost`), kept beside ours, never instead"),
    Column(PRICED, _B, False, "true when cost_usd is known"),
    Column(PRICE_VERSION, _S, True, "catalog price that priced it, `provider/model@date`"),
    Column(BATCH, _B, False, "the span says it ran through a batch API (`llmspend.batch`)"),
    Column(FEES, _S, True, "per-request fees the span reported (`llmspend.<fee>_calls`), "
           "`fee=count` comma-separated, so a reprice charges them again"),
    Column(SAMPLING_RATIO, _F, True, "probability this span was sampled (W3C tracestate "
           "`ot=th:`, or a sampling-rate attribute); null when unknown"),
    Column(SERVER_ADDRESS, _S, True, "`server.address` (endpoint, e.g. an Azure resource)"),
    Column(CONVENTION, _S, False, "convention the span followed: `semconv`, `openllmetry`, "
           "`openinference`, `openlit`"),
    Column(ISSUES, _S, True, "data-quality flags, comma-separated (see the stats keys)"),
    Column(INPUT_MESSAGES, _S, True, "input messages (JSON); only for tenants in "
           "`privacy.keep_content_tenants`"),
    Column(OUTPUT_MESSAGES, _S, True, "output messages (JSON); same opt-in"),
)

CALLS = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in COLUMNS])
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
MONEY_COLUMNS = tuple(c.name for c in COLUMNS if c.type == MONEY)
TIME_COLUMNS = tuple(c.name for c in COLUMNS if c.type == TIME)
HEX_ID_COLUMNS = {CALL_ID: 32, TRACE_ID: 32, SPAN_ID: 16, PARENT_SPAN_ID: 16}


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


def rfc3339(us: int) -> str:
    """Microseconds since the epoch in the record's time format: RFC 3339 UTC, 6
    fractional digits, ``Z`` (every time in llm_calls and llm_alerts)."""
    return (_EPOCH + us * _US).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time back to microseconds since the epoch (exact); UTC only."""
    d = dt.datetime.fromisoformat(text)
    if d.utcoffset() != dt.timedelta(0):
        raise ValueError(f"timestamp {text!r} is not UTC")
    return (d - _EPOCH) // _US


def _json_type(col: Column) -> dict[str, Any]:
    if col.name in HEX_ID_COLUMNS:
        t: dict[str, Any] = {"type": "string",
                             "pattern": f"^[0-9a-f]{{{HEX_ID_COLUMNS[col.name]}}}$"}
    elif col.type == MONEY:
        t = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,12})?$"}
    elif col.type == TIME:
        t = {"type": "string", "format": "date-time",
             "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"}
    elif col.type == _I:
        t = {"type": "integer", "minimum": 0}
    elif col.type == _F:
        t = {"type": "number"}
    elif col.type == _B:
        t = {"type": "boolean"}
    else:
        t = {"type": "string"}
    if col.nullable:
        t["type"] = [t["type"], "null"]
    t["description"] = col.doc.replace("`", "")
    return t


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one ``llm_calls`` NDJSON line, derived from COLUMNS."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://llmspend.dev/schemas/llm_calls.schema.json",
        "title": "llm_calls record",
        "description": "One LLM call or tool execution, normalised and priced. Ids are "
                       "lowercase hex, times RFC 3339 UTC, money decimal strings (USD).",
        "type": "object",
        "additionalProperties": False,
        "required": list(NAMES),
        "properties": {c.name: _json_type(c) for c in COLUMNS},
    }


def json_schema_text() -> str:
    """The exact text of ``schemas/llm_calls.schema.json``."""
    return json.dumps(json_schema(), indent=2) + "\n"
