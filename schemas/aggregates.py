"""The 1-minute aggregate partials (``llm_agg_1m`` records and the ``agg_1m`` dataset).

Each record is a *partial*: the sums of one (view, window, key) from one ``llm_calls``
partition, either its on-time calls from one *segment* of that partition's offsets
(``late = false``, ``segment`` = offset // segment_records; a window open across a
segment boundary has one partial per segment) or the late calls of one source record
(``late = true``, ``late_offset`` = that record's offset). Totals are sums of partials
after keeping the latest record per ``agg_id`` (a re-emission replaces its predecessor).

Views: ``group`` is keyed by (tenant, service, provider, model, team, use_case); ``user``
by (tenant, team, user_id); ``unit`` by (tenant, use_case, unit_type), for the calls
that name a business unit only, with the hashes of the distinct units they worked on
(cost per ticket, per document; ``pipeline/distinct.py``). Key columns keep their
``llm_calls`` names; a view's other key columns are null. ``model`` is the catalog
model that priced the call, else the response model, else the requested model, so
unpriced traffic stays visible.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from schemas import calls as C
from schemas.latency_buckets import N_BUCKETS, SKETCH

#: Field names the jobs and views address (keys keep their llm_calls names).
AGG_ID, VIEW, WINDOW_START, UNPRICED_CALLS = "agg_id", "view", "window_start", "unpriced_calls"
#: Exact decimal sums of a partial (same names as the calls columns they add up).
MONEY_FIELDS = (C.COST_USD, C.LIST_COST_USD)

VIEW_GROUP, VIEW_USER, VIEW_UNIT = "group", "user", "unit"
VIEWS = (VIEW_GROUP, VIEW_USER, VIEW_UNIT)
VIEW_KEYS: dict[str, tuple[str, ...]] = {
    VIEW_GROUP: (C.TENANT, C.SERVICE, C.PROVIDER, C.MODEL, C.TEAM, C.USE_CASE),
    VIEW_USER: (C.TENANT, C.TEAM, C.USER_ID),
    VIEW_UNIT: (C.TENANT, C.USE_CASE, C.UNIT_TYPE),
}
KEY_COLUMNS = (C.TENANT, C.SERVICE, C.PROVIDER, C.MODEL, C.TEAM, C.USE_CASE, C.USER_ID,
               C.UNIT_TYPE)

#: Integer sums of a partial, in record order.
COUNT_FIELDS = ("calls", "llm_calls", "tool_calls", "errors", "timeouts", "fallbacks",
                "escalations", "cache_hits", "input_tokens", "output_tokens",
                "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
                "unpriced_calls")

#: Calls columns the aggregator reads.
NEEDED_COLUMNS = [C.CALL_ID, C.KIND, C.TENANT, C.SERVICE, C.PROVIDER, C.MODEL,
                  C.REQUEST_MODEL, C.RESPONSE_MODEL, C.TEAM, C.USE_CASE, C.USER_ID,
                  C.UNIT_TYPE, C.UNIT_ID,
                  C.SESSION_ID, C.STATUS, C.ERROR_TYPE, C.LATENCY_MS, C.INPUT_TOKENS,
                  C.OUTPUT_TOKENS, C.CACHED_INPUT_TOKENS, C.CACHE_WRITE_TOKENS,
                  C.REASONING_TOKENS, C.COST_USD, C.LIST_COST_USD, C.PRICED]

#: Meaning of every field (README table).
FIELDS: dict[str, str] = {
    "agg_id": "deterministic id of the partial (the Kafka key): view, window, key, "
              "source partition, segment or late offset",
    "view": "`group` (tenant, service, provider, model, team, use_case), `user` "
            "(tenant, team, user_id) or `unit` (tenant, use_case, unit_type; only calls "
            "that name a business unit)",
    "tenant": "key", "service": "key (group view)", "provider": "key (group view)",
    "model": "key (group view): priced catalog model, else response, else request model",
    "team": "key (group and user views)", "use_case": "key (group and unit views)",
    "user_id": "key (user view)", "unit_type": "key (unit view): ticket, document...",
    "window_start": "window start, RFC 3339 UTC (event time: the calls' start_time)",
    "window_end": "window end (exclusive)",
    "source_partition": "the llm_calls partition these calls came from",
    "segment": "on-time partials: the llm_calls offset segment (offset // "
               "segment_records) whose calls they sum; null for late partials",
    "late": "true for calls that arrived after their window closed",
    "late_offset": "for late partials: offset of the llm_calls record that carried them",
    "calls": "calls (llm + tool), duplicates (same call_id) counted once",
    "llm_calls": "LLM calls", "tool_calls": "tool executions",
    "errors": "calls with status error",
    "timeouts": "errors whose error_type is a timeout type, or latency >= the threshold",
    "fallbacks": "LLM calls after an error in the same session, on another model/provider",
    "escalations": "LLM calls after a success in the same session, on a larger model of "
                   "the same ladder",
    "cache_hits": "calls that read tokens from the prompt cache",
    "input_tokens": "sum (includes cached)", "output_tokens": "sum (includes reasoning)",
    "cached_input_tokens": "sum", "cache_write_tokens": "sum", "reasoning_tokens": "sum",
    "unpriced_calls": "LLM calls without a cost",
    "cost_usd": "exact sum of cost_usd (decimal string)",
    "list_cost_usd": "exact sum of list_cost_usd (decimal string)",
    "latency_buckets": "latency sketch: [{bucket, count}] on schemas/latency_buckets.py",
    "ttft_buckets": "time-to-first-token sketch, same layout",
    "units": "unit view: distinct business units (unit_id) the calls worked on; exact "
             "when it equals the length of unit_hashes, else a K-minimum-values estimate",
    "unit_hashes": "unit view: sorted 63-bit hashes of those units (all of them, or the "
                   "4,096 smallest past 8,191); unite them across partials to count "
                   "distinct units over any span",
}

_TIME = pa.timestamp("ms", tz="UTC")
AGG_1M = pa.schema(
    [pa.field("agg_id", pa.string(), nullable=False), pa.field("view", pa.string(), False)]
    + [pa.field(c, pa.string()) for c in KEY_COLUMNS]
    + [pa.field("window_start", _TIME, False), pa.field("window_end", _TIME, False),
       pa.field("source_partition", pa.int32(), False), pa.field("segment", pa.int64()),
       pa.field("late", pa.bool_(), False),
       pa.field("late_offset", pa.int64())]
    + [pa.field(n, pa.int64(), False) for n in COUNT_FIELDS]
    + [pa.field("cost_usd", C.MONEY, False), pa.field("list_cost_usd", C.MONEY, False),
       pa.field("latency_buckets", SKETCH, False), pa.field("ttft_buckets", SKETCH, False),
       pa.field("units", pa.int64()), pa.field("unit_hashes", pa.list_(pa.int64()))])

#: Hourly and daily rollups (``agg_1h``, ``agg_1d`` datasets, written by
#: ``jobs/rollup.py``): the ``agg_1m`` view's rows summed per hour or day, one row per
#: (view, key, window); latency sketches merged (canonical: each bucket once, ascending),
#: distinct units united (``units`` exact when it equals the length of ``unit_hashes``).
ROLLUP = pa.schema(
    [pa.field("view", pa.string(), False)]
    + [pa.field(c, pa.string()) for c in KEY_COLUMNS]
    + [pa.field("window_start", _TIME, False), pa.field("window_end", _TIME, False)]
    + [pa.field(n, pa.int64(), False) for n in COUNT_FIELDS]
    + [pa.field("cost_usd", C.MONEY, False), pa.field("list_cost_usd", C.MONEY, False),
       pa.field("latency_buckets", SKETCH, False), pa.field("ttft_buckets", SKETCH, False),
       pa.field("units", pa.int64()), pa.field("unit_hashes", pa.list_(pa.int64())),
       pa.field("partials", pa.int64(), False)])

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def rfc3339_ms(ms: int) -> str:
    return (_EPOCH + dt.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


__all__ = ["AGG_1M", "AGG_ID", "COUNT_FIELDS", "FIELDS", "KEY_COLUMNS", "N_BUCKETS", "ROLLUP",
           "VIEWS", "VIEW_KEYS", "VIEW_UNIT"]
