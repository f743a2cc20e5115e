"""The aggregate stage in a real Faust worker on the real broker: generator traffic in,
merged partials equal to the truth; late, out-of-order and duplicate calls. (Crashes:
test_aggregate_fault.py.)"""

from __future__ import annotations

import json
import random
import time
import uuid
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from pipeline import sketch
from pipeline.aggregate import merge_partials
from pipeline.clients import producer
from pipeline.normalise import calls_to_ndjson, murmur2_partition, partition_key
from pipeline.traffic.generator import Options, generate
from schemas import calls as C
from schemas.latency_buckets import N_BUCKETS
from schemas.topics import LLM_AGG_1M, LLM_CALLS
from tests.integration.kafka_helpers import (
    end_offsets,
    read_records,
    receiver,
    worker_process,
)

pytestmark = pytest.mark.integration
HASH_KEY = "aggregate-test-hash-key-0123456789abcdef"
#: Short windows so tests need not wait for minutes to close (the logic is the same).
FAST = {"LLMSPEND_HASH_KEY": HASH_KEY, "LLMSPEND_AGGREGATE_WINDOW_S": "5",
        "LLMSPEND_AGGREGATE_ALLOWED_LATENESS_S": "2", "LLMSPEND_AGGREGATE_CLOSE_GRACE_S": "2",
        "LLMSPEND_AGGREGATE_DEDUP_HORIZON_S": "60",
        "LLMSPEND_AGGREGATE_SESSION_RULE_WINDOW_S": "30",
        "LLMSPEND_STREAM_HEARTBEAT_S": "0.5", "LLMSPEND_STREAM_SESSION_TIMEOUT_S": "10",
        "LLMSPEND_STREAM_STAGES": "normalise,aggregate"}


def _merged(kafka_settings, start, tenant: str, done, timeout_s: float = 120.0):
    """Group-view totals of ``tenant`` from llm_agg_1m, read until ``done(totals)``."""
    out: dict = {}

    def check(records) -> bool:
        parts = []
        for r in records:
            rec = json.loads(r.value)
            if rec["tenant"] == tenant and rec["view"] == "group":
                parts.append(rec)
        out.clear()
        out.update(merge_partials(parts))
        return done(out)

    read_records(kafka_settings, start, check, timeout_s=timeout_s)
    return out


def _sum(totals, field):
    if field in ("cost_usd", "list_cost_usd"):
        return sum((t[field] for t in totals.values()), Decimal(0))
    return sum(t[field] for t in totals.values())


def test_generator_traffic_aggregates_to_the_truth(kafka_settings, tmp_path):
    tenant = f"agg-{uuid.uuid4().hex[:10]}"
    token = f"tok-{uuid.uuid4().hex}"
    agg_start = end_offsets(kafka_settings, LLM_AGG_1M)
    calls_start = end_offsets(kafka_settings, LLM_CALLS)
    with worker_process(tmp_path, FAST), \
            receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                      "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep:
        res = generate(Options(seed=11, calls=400, scenarios=("retry-storm",)),
                       protocol="http", endpoint=ep["http"], tenant_tokens={tenant: token},
                       max_rate=True)
        t = res.truth
        assert t.duplicate_spans > 0
        totals = _merged(kafka_settings, agg_start, tenant,
                         lambda tot: _sum(tot, "calls") >= t.calls)
    assert _sum(totals, "calls") == t.calls  # retry-storm twins counted once
    assert _sum(totals, "list_cost_usd") == t.list_cost_usd
    assert _sum(totals, "cost_usd") == t.list_cost_usd  # no tenant discount configured
    assert _sum(totals, "input_tokens") == t.totals.input_tokens
    assert _sum(totals, "output_tokens") == t.totals.output_tokens
    assert _sum(totals, "cached_input_tokens") == t.totals.cached_input_tokens
    assert _sum(totals, "errors") == t.totals.errors
    assert _sum(totals, "unpriced_calls") == t.totals.unpriced_calls
    assert _sum(totals, "tool_calls") == t.totals.tool_calls

    # P95 per model from the merged sketches vs the exact lower nearest rank of the calls.
    rows: dict[str, dict] = {}
    read_records(kafka_settings, calls_start, lambda rs: _collect(rs, tenant, rows) >= t.calls,
                 timeout_s=30)
    by_model: dict[str, list[float]] = {}
    for r in rows.values():
        if r["latency_ms"] is not None:
            m = r["model"] or r["response_model"] or r["request_model"]
            by_model.setdefault(m, []).append(r["latency_ms"])
    for model, lat in by_model.items():
        merged = sum((v["latency"] for k, v in totals.items() if k[2][3] == model),
                     np.zeros(N_BUCKETS, np.int64))
        exact = sketch.exact_lower_nearest_rank(np.array(lat), 0.95)
        got = sketch.quantile(merged, 0.95)
        assert abs(got - exact) / max(exact, 1.0) <= 0.01 + 1e-9, model


def _collect(records, tenant: str, rows: dict) -> int:
    for r in records:
        for line in (r.value or b"").splitlines():
            c = json.loads(line)
            if c["tenant"] == tenant:
                rows[c["call_id"]] = c
    return len(rows)


def _call(i: int, tenant: str, start_ms: int, rng: random.Random) -> dict:
    row = {name: None for name in C.NAMES}
    row.update({
        C.CALL_ID: f"{tenant}-{i:09d}", C.KIND: C.KIND_LLM, C.TENANT: tenant,
        C.SERVICE: rng.choice(["svc-a", "svc-b"]), C.PROVIDER: "openai",
        C.MODEL: rng.choice(["gpt-4o", "gpt-4o-mini"]), C.TEAM: rng.choice(["red", "blue"]),
        C.USE_CASE: "uc", C.USER_ID: f"u{rng.randrange(50)}", C.SESSION_ID: f"s{i % 997}",
        C.TRACE_ID: f"{i:032x}", C.SPAN_ID: f"{i:016x}", C.START_TIME: start_ms * 1000,
        C.LATENCY_MS: rng.lognormvariate(6.5, 0.8), C.STATUS: "ok",
        C.INPUT_TOKENS: rng.randrange(10, 5000), C.OUTPUT_TOKENS: rng.randrange(1, 500),
        C.CACHED_INPUT_TOKENS: 0, C.COST_USD: Decimal(rng.randrange(10**9)) / 10**12,
        C.PRICED: True, C.BATCH: False, C.CONVENTION: "semconv",
    })
    row[C.LIST_COST_USD] = row[C.COST_USD]
    return row


def _produce_calls(kafka_settings, batches: list[list[dict]]) -> None:
    """Each batch becomes one record per target partition, routed like the normalise
    stage routes (murmur2 of tenant|session): twins share their original's partition."""
    p = producer(kafka_settings, linger_ms=20)
    futures = []
    for rows in batches:
        by_part: dict[int, list[dict]] = {}
        for r in rows:
            part = murmur2_partition(partition_key(r[C.TENANT], r[C.SESSION_ID]), 6)
            by_part.setdefault(part, []).append(r)
        for part, group in sorted(by_part.items()):
            body = b"\n".join(calls_to_ndjson(pa.Table.from_pylist(group, schema=C.CALLS)))
            futures.append(p.send(LLM_CALLS, body + b"\n", partition=part,
                                  headers=[("content-type", b"application/x-ndjson")]))
    for f in futures:
        f.get(timeout=60)
    p.close()


def _expected(batches: list[list[dict]]) -> dict:
    unique = {r[C.CALL_ID]: r for rows in batches for r in rows}
    lat = np.array([r[C.LATENCY_MS] for r in unique.values()])
    counts = np.zeros((1, N_BUCKETS), np.int64)
    sketch.accumulate(counts, np.zeros(len(lat), np.int64), lat, np.ones(len(lat), np.bool_))
    return {"calls": len(unique),
            "cost": sum((r[C.COST_USD] for r in unique.values()), Decimal(0)),
            "input": sum(r[C.INPUT_TOKENS] for r in unique.values()),
            "latency": counts[0]}


def test_late_out_of_order_and_duplicate_calls(kafka_settings, tmp_path):
    tenant = f"late-{uuid.uuid4().hex[:10]}"
    rng = random.Random(3)
    agg_start = end_offsets(kafka_settings, LLM_AGG_1M)
    now = int(time.time() * 1000)
    batches, i = [], 0
    for b in range(30):
        rows = []
        for _ in range(20):
            i += 1
            lag = rng.choice([0, 1_000, 4_000, 120_000, 600_000])  # late and very late
            rows.append(_call(i, tenant, now - lag - rng.randrange(3_000), rng))
        rng.shuffle(rows)  # out of order within a record
        if b % 3 == 0:
            rows.append(dict(rows[0]))  # a twin in the same record
        recent = [r for r in batches[-1] if r[C.START_TIME] >= (now - 30_000) * 1000] \
            if batches else []
        if recent and b % 4 == 0:
            # A twin in another record, within the dedup horizon (older twins are
            # documented to count again, as late partials).
            rows.append(dict(recent[0]))
        batches.append(rows)
    want = _expected(batches)
    with worker_process(tmp_path, FAST):
        _produce_calls(kafka_settings, batches)
        totals = _merged(kafka_settings, agg_start, tenant,
                         lambda tot: _sum(tot, "calls") >= want["calls"])
        mine = [json.loads(r.value) for r in read_records(
            kafka_settings, agg_start, lambda rs: False, timeout_s=3)]
        late = [r for r in mine if r["tenant"] == tenant and r["late"]]
    assert _sum(totals, "calls") == want["calls"]
    assert _sum(totals, "cost_usd") == want["cost"]
    assert _sum(totals, "input_tokens") == want["input"]
    assert (sum(v["latency"] for v in totals.values()) == want["latency"]).all()
    assert late, "very late calls must arrive as late partials"
