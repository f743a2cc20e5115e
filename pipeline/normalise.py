"""Normalise and price: a span batch (``schemas.spans.SPAN_BATCH``) -> calls table.

The pure core of stage 1 (no Kafka, no Faust): :func:`normalise` turns every GenAI
span of a batch, whatever convention it follows (:mod:`pipeline.conventions`), into one
row of ``schemas.calls.CALLS`` priced exactly by :mod:`pipeline.pricing`, and counts
what it saw and every data problem in ``stats``. It never drops a call silently: bad
values are repaired or nulled, flagged in the row's ``issues`` and counted.

What is a call: ``llm`` spans (chat, text_completion, generate_content, embeddings;
OpenInference LLM/EMBEDDING; OpenLLMetry ``llm.request.type``) are priced; ``tool``
spans (execute_tool, OpenInference TOOL, Traceloop tool) are kept at cost 0 for loop
detection; agent and chain/workflow spans are never calls (they may repeat their
children's tokens) but lend their agent name and id to the calls beneath them.

Also here: the ``llm_calls`` NDJSON codec (:func:`calls_to_ndjson`,
:func:`ndjson_to_calls`) and Kafka's default partitioner (:func:`murmur2_partition`).

This module is the reference, one span and one call at a time: the stage runs the
columnar equivalents (:mod:`pipeline.normalise_columnar`, :mod:`pipeline.calls_ndjson`),
which the tests hold equal to it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from kafka.partitioner.default import murmur2

from pipeline import conventions as cv
from pipeline import pricing, privacy
from pipeline.config import AttributionSettings, Settings
from schemas import calls as C
from schemas import spans as S

#: A span starting more than this after ``now`` is flagged as clock skew.
CLOCK_SKEW_NS = 5 * 60 * 10**9
#: Latencies above this are implausible for one call and flagged (kept).
ABSURD_LATENCY_NS = 3600 * 10**9
_MAX_ANCESTORS = 256

#: Every stats key and what it counts (README table; a test checks it stays complete).
STATS: Mapping[str, str] = {
    "spans_seen": "spans in the batch",
    "llm_calls": "LLM call rows written",
    "tool_calls": "tool execution rows written",
    "agent_spans_skipped": "agent spans (invoke_agent, AGENT...): not calls",
    "chain_spans_skipped": "workflow/chain spans (invoke_workflow, CHAIN...): not calls",
    "other_spans_skipped": "spans that are no GenAI call (HTTP, DB...)",
    "duplicate_spans": "second copies of a span in one batch (same call_id), dropped",
    "unpriced": "LLM calls without a cost (unknown model, no usage, no price yet...)",
    "kind_inferred": "no kind marker, but a model and token counts: counted as llm",
    "negative_tokens": "negative token count, nulled",
    "non_integer_tokens": "token count not an integer (text, fraction, bool), nulled",
    "no_usage": "LLM call without any token count (unpriced)",
    "input_excluded_cache": "input reported without cached tokens; cache added back",
    "cached_above_input": "cache read + write above input tokens, clamped",
    "reasoning_above_output": "reasoning above output tokens, clamped",
    "missing_model": "LLM call naming no model (kept, unpriced)",
    "model_not_in_catalog": "model unknown to the catalog (kept, unpriced)",
    "response_model_not_in_catalog": "response model unknown; priced by request model",
    "before_first_price": "call older than the model's first catalog price (unpriced)",
    "unknown_provider": "provider missing or not recognised; priced by model alone",
    "provider_fallback": "priced with another provider's entry for the same model",
    "batch_discount_unknown": "batch call, but the catalog has no batch multiplier",
    "gpu_pricing_needs_latency": "GPU-second model without a latency (unpriced)",
    "missing_start_time": "span without a start time",
    "missing_end_time": "span without an end time (latency null)",
    "end_before_start": "end before start (latency null)",
    "absurd_latency": "latency above one hour (kept)",
    "clock_skew_future": "start more than 5 minutes after the processing time",
    "bad_ttft": "time to first token not a non-negative number (nulled)",
    "bad_app_cost": "app-reported cost not a number (nulled)",
    "bad_sampling": "sampling threshold or rate unreadable (ratio null)",
}


#: The span batch columns :func:`_row` reads as Python lists (the rest: attribute maps).
ROW_COLUMNS = ("tenant", "trace_id", "span_id", "parent_span_id", "trace_state", "name",
               "start_time_unix_nano", "end_time_unix_nano", "status_code", "status_message",
               "scope_name")


@dataclass
class NormaliseResult:
    """The calls table and the counters of what :func:`normalise` saw."""

    calls: pa.Table
    stats: Counter = field(default_factory=Counter)


# ------------------------------------------------------------------ span batch access


def _attr_maps(column: pa.ChunkedArray) -> tuple[list[dict[str, Any]], list[set[str]]]:
    """Per-row attribute dicts from the columnar ``ATTRIBUTES`` list (one pass, no
    per-value struct objects), and per row the keys holding JSON arrays/maps."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_pylist()
    vals = arr.values
    keys = vals.field("key").to_pylist()
    types = vals.field("type").to_pylist()
    strs, ints = vals.field("str").to_pylist(), vals.field("int").to_pylist()
    dbls, bools = vals.field("dbl").to_pylist(), vals.field("bool").to_pylist()
    by_type = {S.STRING: strs, S.ARRAY: strs, S.KVLIST: strs, S.BYTES: strs, S.INT: ints,
               S.DOUBLE: dbls, S.BOOL: bools}
    out, structured = [], []
    for r in range(len(offsets) - 1):
        d: dict[str, Any] = {}
        js: set[str] = set()
        for i in range(offsets[r], offsets[r + 1]):
            t = types[i]
            d[keys[i]] = by_type[t][i] if t in by_type else None
            if t in (S.ARRAY, S.KVLIST):
                js.add(keys[i])
        out.append(d)
        structured.append(js)
    return out, structured


def _hex(b: bytes | None) -> str | None:
    return b.hex() if b else None


def call_id(tenant: str, trace_id: bytes, span_id: bytes) -> str:
    """Stable id of a call: the same span gives the same id; tenants never collide."""
    t = tenant.encode()
    h = hashlib.blake2b(len(t).to_bytes(4, "big") + t + trace_id + span_id, digest_size=16)
    return h.hexdigest()


# ------------------------------------------------------------------ value helpers


def _tokens(value: Any, flags: list[str]) -> int | None:
    """A token count: non-negative integer, else None with a flag."""
    if value is None:
        return None
    if isinstance(value, bool):
        flags.append("non_integer_tokens")
        return None
    if isinstance(value, float):
        if not value.is_integer():
            flags.append("non_integer_tokens")
            return None
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            flags.append("non_integer_tokens")
            return None
    if value < 0:
        flags.append("negative_tokens")
        return None
    return value


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, int | str) and str(value).strip().lower()
                             in ("1", "true", "yes"))


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _list_text(value: Any) -> str | None:
    """A string or JSON array attribute as comma-separated text."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("["):
        try:
            items = json.loads(value)
            return ",".join(str(x) for x in items) or None
        except ValueError:
            return value
    return str(value)


def _lookup(keys: Iterable[str], attrs: Mapping[str, Any], res: Mapping[str, Any]) -> Any:
    """First configured key present on the span, then on its resource."""
    for source in (attrs, res):
        for k in keys:
            v = source.get(k)
            if v is not None and v != "":
                return str(v)
    return None


def sampling_ratio(trace_state: str, attrs: Mapping[str, Any], flags: list[str]
                   ) -> float | None:
    """Probability the span was sampled: W3C ``ot=th:`` threshold, else an attribute.

    ``th`` is up to 14 hex digits, right-padded with zeros: the rejection threshold out
    of 2^56, so the ratio is ``1 - th / 2^56``. A rate attribute above 1 means 1-in-N.
    """
    for member in trace_state.split(","):
        k, _, v = member.strip().partition("=")
        if k != "ot":
            continue
        for part in v.split(";"):
            sk, _, sv = part.partition(":")
            if sk == "th":
                if not re.fullmatch(r"[0-9a-f]{1,14}", sv):
                    flags.append("bad_sampling")
                    return None
                return 1.0 - int(sv.ljust(14, "0"), 16) / 2**56
    for key in cv.SAMPLING_ATTRIBUTES:
        if key in attrs:
            rate = _number(attrs[key])
            if rate is None or rate <= 0:
                flags.append("bad_sampling")
                return None
            return float(rate) if rate <= 1 else float(1 / rate)
    return None


# ------------------------------------------------------------------ content and hashes


def _content_text(value: Any, structured: bool) -> str:
    """A content attribute as ingest stringifies it (so hashes agree across paths)."""
    if structured:
        return json.dumps(json.loads(value), sort_keys=True, ensure_ascii=False)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                           ensure_ascii=False)


def _event_content(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Older conventions' message events merged as prompt attributes (as ingest does)."""
    merged: dict[str, Any] = {}
    i = 0
    for e in events:
        ev_attrs = {a["key"]: a["str"] if a["str"] is not None else
                    next((a[f] for f in ("int", "dbl", "bool") if a[f] is not None), None)
                    for a in e["attributes"]}
        if not privacy.is_content_event(e["name"], ev_attrs):
            continue
        if e["name"] == "gen_ai.content.prompt" and "gen_ai.prompt" in ev_attrs:
            merged["gen_ai.prompt"] = ev_attrs["gen_ai.prompt"]
        elif e["name"].endswith(".message"):
            role = e["name"].removeprefix("gen_ai.").removesuffix(".message")
            merged[f"gen_ai.prompt.{i}.role"] = role
            merged[f"gen_ai.prompt.{i}.content"] = ev_attrs.get(
                "content", ev_attrs.get("gen_ai.event.content", ""))
            i += 1
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)
            for k, v in merged.items()}


def span_hashes(key: bytes, attrs: Mapping[str, Any], structured: set[str],
                events: list[dict[str, Any]] | None) -> dict[str, str]:
    """The three content hashes: from ingest's attributes, else computed like ingest."""
    have = {k: str(attrs[k]) for k in privacy.HASH_ATTRIBUTES if attrs.get(k)}
    if events:
        merged = _event_content(events)
        if merged and not have:
            have = privacy.content_hashes(key, merged)
    content = {k: _content_text(v, k in structured) for k, v in attrs.items()
               if privacy.is_content_key(k) and v is not None}
    if content:
        content.update({k: attrs[k] for k in privacy.KIND_KEYS if attrs.get(k) is not None})
        for k, v in privacy.content_hashes(key, content).items():
            have.setdefault(k, v)
    return have


_OUT_INDEXED = re.compile(r"^(gen_ai\.completion|llm\.output_messages)\.(\d+)\.(.+)$")


def kept_content(attrs: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(input, output) messages as JSON text, for tenants that opted in to content."""
    msgs = privacy.input_messages(attrs)
    inp = json.dumps([{"role": r, "content": c} for r, c in msgs], ensure_ascii=False) \
        if msgs else None
    if "gen_ai.output.messages" in attrs:
        return inp, str(attrs["gen_ai.output.messages"])
    indexed: dict[int, dict[str, Any]] = {}
    for k, v in attrs.items():
        m = _OUT_INDEXED.match(k)
        if m:
            indexed.setdefault(int(m[2]), {})[m[3].removeprefix("message.")] = v
    if indexed:
        return inp, json.dumps([{"role": indexed[i].get("role", ""),
                                 "content": indexed[i].get("content", "")}
                                for i in sorted(indexed)], ensure_ascii=False)
    for k in ("output.value", "gen_ai.completion", "gen_ai.content.completion",
              "traceloop.entity.output"):
        if k in attrs:
            return inp, str(attrs[k])
    return inp, None


# ------------------------------------------------------------------ one span


@dataclass
class _Context:
    """What every row of one batch needs: settings, catalog, key, overrides, clock."""

    settings: Settings
    catalog: pricing.Catalog
    key: bytes
    overrides: Mapping[str, pricing.TenantOverride]
    now_ns: int
    keep_content: frozenset[str]
    attribution: dict[str, tuple[str, ...]]


def _usage(attrs: Mapping[str, Any], conv: str, provider: str | None, flags: list[str]
           ) -> dict[str, int | None]:
    """Token counts in the canonical meaning (input includes cache, output reasoning)."""
    t = {f: _tokens(cv.first(attrs, f)[0], flags)
         for f in ("input_tokens", "output_tokens", "cache_read_tokens",
                   "cache_write_tokens", "reasoning_tokens", "total_tokens")}
    inp, out = t["input_tokens"], t["output_tokens"]
    cached = (t["cache_read_tokens"] or 0) + (t["cache_write_tokens"] or 0)
    if inp is not None and cached and (
            cv.input_excludes_cache(conv, provider, attrs)
            or (out is not None and t["total_tokens"] == inp + out + cached)):
        t["input_tokens"] = inp = inp + cached
        flags.append("input_excluded_cache")
    if cached and cached > (inp or 0):
        cr = min(t["cache_read_tokens"] or 0, inp or 0)
        t["cache_read_tokens"] = cr if t["cache_read_tokens"] is not None else None
        if t["cache_write_tokens"] is not None:
            t["cache_write_tokens"] = min(t["cache_write_tokens"], (inp or 0) - cr)
        flags.append("cached_above_input")
    if (t["reasoning_tokens"] or 0) > (out or 0):
        t["reasoning_tokens"] = out or 0
        flags.append("reasoning_above_output")
    return t


def _times(start: int, end: int, now_ns: int, flags: list[str]
           ) -> tuple[int | None, float | None]:
    """(end ns or None, latency ms or None), flagging impossible or suspicious times."""
    if start == 0:
        flags.append("missing_start_time")
    if start > now_ns + CLOCK_SKEW_NS:
        flags.append("clock_skew_future")
    if end == 0:
        flags.append("missing_end_time")
        return None, None
    if end < start:
        flags.append("end_before_start")
        return end, None
    if end - start > ABSURD_LATENCY_NS:
        flags.append("absurd_latency")
    return end, (end - start) / 1e6


def _fee_counts(attrs: Mapping[str, Any], flags: list[str]) -> dict[str, int]:
    """``llmspend.<fee>_calls`` attributes: how many paid requests of each fee."""
    out = {}
    for k, v in attrs.items():
        if k.startswith("llmspend.") and k.endswith("_calls"):
            n = _tokens(v, flags)
            if n:
                out[k.removeprefix("llmspend.").removesuffix("_calls")] = n
    return out


def _price(row: dict[str, Any], kind: str, attrs: Mapping[str, Any], usage: dict, start: int,
           latency_ns: int | None, ctx: _Context, flags: list[str]) -> None:
    """Fill model, costs, priced and price_version of a row."""
    if kind == C.KIND_TOOL:
        row.update(cost_usd=pricing.ZERO.quantize(pricing.QUANTUM),
                   list_cost_usd=pricing.ZERO.quantize(pricing.QUANTUM), priced=True)
        return
    if not (row[C.RESPONSE_MODEL] or row[C.REQUEST_MODEL]):
        flags.append("missing_model")
        return
    if usage["input_tokens"] is None and usage["output_tokens"] is None and \
            not _is_gpu_priced(row, ctx):
        flags.append("no_usage")
        return
    u = pricing.Usage(
        input_tokens=usage["input_tokens"] or 0, output_tokens=usage["output_tokens"] or 0,
        cache_read=usage["cache_read_tokens"] or 0, cache_write=usage["cache_write_tokens"] or 0,
        reasoning=usage["reasoning_tokens"] or 0, latency_ns=latency_ns, batch=row[C.BATCH],
        fee_counts=_fee_counts(attrs, flags))
    row[C.FEES] = pricing.fees_text(u.fee_counts)
    q = pricing.quote(ctx.catalog, (row[C.RESPONSE_MODEL], row[C.REQUEST_MODEL]),
                      row[C.PROVIDER], u, start, tenant=row[C.TENANT],
                      overrides=ctx.overrides, aliases=ctx.settings.pricing.aliases)
    flags.extend(q.issues)
    row.update(model=q.model, cost_usd=q.cost, list_cost_usd=q.list_cost, priced=q.priced,
               price_version=q.price_version if q.priced else None)


def _is_gpu_priced(row: dict[str, Any], ctx: _Context) -> bool:
    name = row[C.RESPONSE_MODEL] or row[C.REQUEST_MODEL]
    entry, _ = ctx.catalog.resolve(name, row[C.PROVIDER], ctx.settings.pricing.aliases)
    return entry is not None and entry.unit == pricing.UNIT_GPU_SECOND


def _row(i: int, kind: str, cols: Mapping[str, list], attrs: dict[str, Any],
         res: dict[str, Any], structured: set[str], events: list | None,
         agent: tuple[str | None, str | None], ctx: _Context) -> dict[str, Any]:
    """One calls-table row (a dict of every column) for the span at index ``i``."""
    flags: list[str] = []
    tenant, trace, span = cols["tenant"][i], cols["trace_id"][i], cols["span_id"][i]
    conv = cv.convention(attrs, cols["scope_name"][i], res)
    raw_provider, _ = cv.first(attrs, "provider")
    provider, known = cv.canonical_provider(raw_provider)
    if kind == C.KIND_LLM and not known:
        flags.append("unknown_provider")
    usage = _usage(attrs, conv, provider, flags)
    start, end_raw = cols["start_time_unix_nano"][i], cols["end_time_unix_nano"][i]
    end, latency_ms = _times(start, end_raw, ctx.now_ns, flags)
    error_type = cv.first(attrs, "error_type")[0]
    is_error = cols["status_code"][i] == S.STATUS_ERROR or error_type is not None
    if is_error and error_type is None:
        error_type = cols["status_message"][i] or None
    hashes = span_hashes(ctx.key, attrs, structured, events)
    row: dict[str, Any] = {
        C.CALL_ID: call_id(tenant, trace, span), C.KIND: kind, C.TENANT: tenant,
        C.SERVICE: _text(res.get("service.name")), C.TRACE_ID: trace.hex(), C.SPAN_ID: span.hex(),
        C.PARENT_SPAN_ID: _hex(cols["parent_span_id"][i]),
        C.SESSION_ID: str(cv.first(attrs, "session_id")[0] or trace.hex()),
        C.AGENT: _str(cv.first(attrs, "agent_name")[0]) or agent[0],
        C.AGENT_ID: _str(cv.first(attrs, "agent_id")[0]) or agent[1],
        C.OPERATION: _str(cv.first(attrs, "operation")[0]), C.PROVIDER: provider,
        C.REQUEST_MODEL: _str(cv.first(attrs, "request_model")[0]),
        C.RESPONSE_MODEL: _str(cv.first(attrs, "response_model")[0]), C.MODEL: None,
        C.INPUT_TOKENS: usage["input_tokens"], C.OUTPUT_TOKENS: usage["output_tokens"],
        C.CACHED_INPUT_TOKENS: usage["cache_read_tokens"],
        C.CACHE_WRITE_TOKENS: usage["cache_write_tokens"],
        C.REASONING_TOKENS: usage["reasoning_tokens"],
        C.START_TIME: start // 1000, C.END_TIME: None if end is None else end // 1000,
        C.LATENCY_MS: latency_ms, C.TTFT_MS: _ttft(attrs, flags),
        C.STATUS: C.STATUS_ERROR if is_error else C.STATUS_OK,
        C.ERROR_TYPE: _str(error_type),
        C.FINISH_REASON: _list_text(cv.first(attrs, "finish_reasons")[0]),
        C.TOOL_NAME: _str(cv.first(attrs, "tool_name")[0]),
        C.TOOL_CALL_ID: _str(cv.first(attrs, "tool_call_id")[0]),
        C.TOOL_ARGS_HASH: hashes.get(privacy.TOOL_ARGS_HASH),
        C.PROMPT_HASH: hashes.get(privacy.PROMPT_HASH),
        C.LAST_MESSAGE_HASH: hashes.get(privacy.LAST_MESSAGE_HASH),
        C.COST_USD: None, C.LIST_COST_USD: None,
        C.APP_REPORTED_COST_USD: _app_cost(attrs, flags), C.PRICED: False,
        C.PRICE_VERSION: None, C.BATCH: _truthy(attrs.get(cv.BATCH_ATTRIBUTE)),
        C.FEES: None,
        C.SAMPLING_RATIO: sampling_ratio(cols["trace_state"][i], attrs, flags),
        C.SERVER_ADDRESS: _str(cv.first(attrs, "server_address")[0]), C.CONVENTION: conv,
        C.INPUT_MESSAGES: None, C.OUTPUT_MESSAGES: None,
    }
    _attribute(row, attrs, res, ctx)
    if tenant in ctx.keep_content:
        row[C.INPUT_MESSAGES], row[C.OUTPUT_MESSAGES] = kept_content(attrs)
    latency_ns = None if latency_ms is None else end_raw - start
    _price(row, kind, attrs, usage, start, latency_ns, ctx, flags)
    row[C.ISSUES] = ",".join(dict.fromkeys(flags)) or None
    return row


def _text(v: Any) -> str | None:
    """Any attribute value as text (kept as sent, even empty)."""
    return None if v is None else str(v)


def _str(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def _ttft(attrs: Mapping[str, Any], flags: list[str]) -> float | None:
    raw, _ = cv.first(attrs, "ttft_s")
    if raw is None:
        return None
    d = _number(raw)
    if d is None or d < 0:
        flags.append("bad_ttft")
        return None
    return float(d * 1000)


def _app_cost(attrs: Mapping[str, Any], flags: list[str]) -> Decimal | None:
    raw, _ = cv.first(attrs, "app_reported_cost")
    if raw is None:
        return None
    d = _number(raw)
    if d is None or abs(d) >= Decimal(10) ** 20:
        flags.append("bad_app_cost")
        return None
    return pricing.to_money(d)


def _attribute(row: dict[str, Any], attrs: Mapping[str, Any], res: Mapping[str, Any],
               ctx: _Context) -> None:
    """Team, user, use case, unit and environment from the configured keys."""
    a = ctx.attribution
    row[C.TEAM] = _lookup(a["team"], attrs, res)
    row[C.USE_CASE] = _lookup(a["use_case"], attrs, res)
    row[C.UNIT_TYPE] = _lookup(a["unit_type"], attrs, res)
    row[C.UNIT_ID] = _lookup(a["unit_id"], attrs, res)
    row[C.PROMPT_VERSION] = _str(_lookup(a["prompt_version"], attrs, res))
    row[C.ENVIRONMENT] = _lookup(a["environment"], attrs, res)
    user = _lookup(a["user"], attrs, res) or _str(cv.first(attrs, "user_id")[0])
    if user is not None and ctx.settings.privacy.pseudonymise_users:
        user = privacy.keyed_hash(ctx.key, user)
    row[C.USER_ID] = user


# ------------------------------------------------------------------ the batch


def _agent_of(attrs: Mapping[str, Any], name: str) -> tuple[str | None, str | None]:
    """(name, id) an agent span lends its descendants."""
    agent = _str(cv.first(attrs, "agent_name")[0])
    if agent is None:
        agent = name.removeprefix("invoke_agent").strip() or None
    return agent, _str(cv.first(attrs, "agent_id")[0])


def _kind(attrs: Mapping[str, Any]) -> tuple[str, bool]:
    """(kind, inferred): markers first; a model with token counts is an llm call."""
    kind = cv.span_kind(attrs)
    if kind != "other":
        return kind, False
    has_model = any(cv.first(attrs, f)[0] for f in ("request_model", "response_model"))
    has_tokens = any(cv.first(attrs, f)[0] is not None
                     for f in ("input_tokens", "output_tokens"))
    return ("llm", True) if has_model and has_tokens else ("other", False)


def _context(settings: Settings, catalog: pricing.Catalog, hash_key: bytes,
             now: dt.datetime | None) -> _Context:
    a = settings.attribution
    keys = AttributionSettings.keys
    return _Context(
        settings=settings, catalog=catalog, key=hash_key,
        overrides=pricing.parse_overrides(settings.pricing.overrides),
        now_ns=time.time_ns() if now is None else int(now.timestamp() * 1e6) * 1000,
        keep_content=settings.privacy.keep_content,
        attribution={"team": keys(a.team_keys), "user": keys(a.user_keys),
                     "use_case": keys(a.use_case_keys), "unit_type": keys(a.unit_type_keys),
                     "unit_id": keys(a.unit_id_keys),
                     "prompt_version": keys(a.prompt_version_keys),
                     "environment": keys(a.environment_keys)})


def normalise(spans: pa.Table, settings: Settings, catalog: pricing.Catalog,
              hash_key: bytes, *, now: dt.datetime | None = None) -> NormaliseResult:
    """Every GenAI call of a span batch as a priced calls table, plus counters.

    ``now`` (default: the wall clock) is the reference for clock-skew flags. Duplicate
    spans in the batch (same call_id) keep one row.
    """
    ctx = _context(settings, catalog, hash_key, now)
    stats: Counter = Counter(spans_seen=spans.num_rows)
    cols = {c: spans.column(c).to_pylist() for c in ROW_COLUMNS}
    attrs, structured = _attr_maps(spans.column("attributes"))
    res, _ = _attr_maps(spans.column("resource_attributes"))
    has_events = pc.list_value_length(spans.column("events")).to_pylist()
    events = spans.column("events").to_pylist() if any(has_events) else None
    kinds = [_kind(a) for a in attrs]
    index = {(t, tr, s): i for i, (t, tr, s) in
             enumerate(zip(cols["tenant"], cols["trace_id"], cols["span_id"], strict=True))}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, (kind, inferred) in enumerate(kinds):
        if kind in ("agent", "chain", "other"):
            stats[f"{kind}_spans_skipped"] += 1
            continue
        cid = call_id(cols["tenant"][i], cols["trace_id"][i], cols["span_id"][i])
        if cid in seen:
            stats["duplicate_spans"] += 1
            continue
        seen.add(cid)
        agent = _ancestor_agent(i, cols, index, kinds, attrs)
        row = _row(i, kind, cols, attrs[i], res[i], structured[i],
                   events[i] if events else None, agent, ctx)
        if inferred:
            row[C.ISSUES] = ",".join(filter(None, ("kind_inferred", row[C.ISSUES])))
        rows.append(row)
        stats["llm_calls" if kind == C.KIND_LLM else "tool_calls"] += 1
        stats.update((row[C.ISSUES] or "").split(",") if row[C.ISSUES] else ())
        if kind == C.KIND_LLM and not row[C.PRICED]:
            stats["unpriced"] += 1
    table = pa.Table.from_pylist(rows, schema=C.CALLS) if rows else C.CALLS.empty_table()
    return NormaliseResult(table, stats)


def _ancestor_agent(i: int, cols: Mapping[str, list], index: Mapping[tuple, int],
                    kinds: list[tuple[str, bool]], attrs: list[dict[str, Any]]
                    ) -> tuple[str | None, str | None]:
    """The nearest agent span above span ``i`` within this batch (cycle-safe)."""
    tenant, trace = cols["tenant"][i], cols["trace_id"][i]
    parent = cols["parent_span_id"][i]
    for _ in range(_MAX_ANCESTORS):
        j = index.get((tenant, trace, parent)) if parent else None
        if j is None:
            return None, None
        if kinds[j][0] == "agent":
            return _agent_of(attrs[j], cols["name"][j])
        parent = cols["parent_span_id"][j]
    return None, None


# ------------------------------------------------------------------ NDJSON and routing

_rfc3339, _from_rfc3339 = C.rfc3339, C.parse_rfc3339


def calls_to_ndjson(calls: pa.Table) -> list[bytes]:
    """One compact JSON object per call: hex ids, RFC 3339 UTC times ('Z'), money as
    decimal strings without exponent, nulls as null (the ``llm_calls`` record format)."""
    prepared = calls
    for name in C.TIME_COLUMNS:
        idx = prepared.schema.get_field_index(name)
        prepared = prepared.set_column(idx, name, pc.cast(prepared.column(name), pa.int64()))
    out = []
    for row in prepared.to_pylist():
        for name in C.TIME_COLUMNS:
            if row[name] is not None:
                row[name] = _rfc3339(row[name])
        for name in C.MONEY_COLUMNS:
            if row[name] is not None:
                row[name] = format(row[name], "f")
        out.append(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
    return out


def ndjson_to_calls(lines: Iterable[bytes | str]) -> pa.Table:
    """The inverse of :func:`calls_to_ndjson` (exact round trip). Accepts a record body
    (newline-separated) or single lines; raises ValueError on a malformed line."""
    rows = []
    for chunk in lines:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        for line in text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or set(row) != set(C.NAMES):
                raise ValueError(f"llm_calls line does not have the calls columns: "
                                 f"{line[:200]}")
            for name in C.TIME_COLUMNS:
                if row[name] is not None:
                    row[name] = _from_rfc3339(row[name])
            for name in C.MONEY_COLUMNS:
                if row[name] is not None:
                    row[name] = Decimal(row[name])
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=C.CALLS) if rows else C.CALLS.empty_table()


def partition_key(tenant: str, session_id: str) -> bytes:
    """Kafka key of a call: one session's calls land, in order, on one partition."""
    return f"{tenant}|{session_id}".encode()


def murmur2_partition(key: bytes, n: int) -> int:
    """Kafka's default partition of ``key`` among ``n`` (Java client's murmur2)."""
    if n < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % n
