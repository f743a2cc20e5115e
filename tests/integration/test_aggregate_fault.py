"""Exactness under failure: ``kill -9`` the aggregate worker once it has committed a known
offset midway through 200k calls, restart it, and the merged partials equal both the
calls' own truth and an uninterrupted run of the same records."""

from __future__ import annotations

import json
import random
import time
import uuid
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from pipeline import clients, sketch
from pipeline.aggregate import (
    HEARTBEAT_HEADER,
    AggregateConfig,
    PartitionAggregator,
    merge_partials,
)
from pipeline.normalise import calls_to_ndjson, murmur2_partition, partition_key
from schemas import calls as C
from schemas.latency_buckets import N_BUCKETS
from schemas.topics import LLM_AGG_1M, LLM_CALLS
from tests.integration.kafka_helpers import end_offsets, read_records, worker_process

pytestmark = pytest.mark.integration

N_CALLS = 200_000
N_BATCHES = 400  # one record per partition per batch: ~83 calls per record
BATCH_MS = 2_000  # simulated time between batches (the stream spans ~13 minutes)
PARTITIONS = 6
ENV = {"LLMSPEND_AGGREGATE_WINDOW_S": "10", "LLMSPEND_AGGREGATE_ALLOWED_LATENESS_S": "5",
       "LLMSPEND_AGGREGATE_CLOSE_GRACE_S": "5", "LLMSPEND_AGGREGATE_DEDUP_HORIZON_S": "60",
       "LLMSPEND_AGGREGATE_SESSION_RULE_WINDOW_S": "30",
       "LLMSPEND_AGGREGATE_ESCALATION_LADDERS": "gpt-4o-mini<gpt-4o",
       "LLMSPEND_STREAM_STAGES": "aggregate", "LLMSPEND_STREAM_SESSION_TIMEOUT_S": "10",
       "LLMSPEND_AGGREGATE_SEGMENT_RECORDS": "40"}
CONFIG = AggregateConfig(window_ms=10_000, allowed_lateness_ms=5_000, close_grace_ms=5_000,
                         dedup_horizon_ms=60_000, session_rule_window_ms=30_000,
                         ladders=(("gpt-4o-mini", "gpt-4o"),), segment_records=40)


def _records(tenant: str, base_ms: int) -> list[tuple[int, int, list[dict]]]:
    """(partition, record timestamp, calls) in production order: sessions that escalate
    and fall back, errors and timeouts, late calls, and twins within and across records."""
    rng = random.Random(7)
    per_batch = N_CALLS // N_BATCHES
    out, i = [], 0
    previous: dict[int, list[dict]] = {}
    for b in range(N_BATCHES):
        now = base_ms + b * BATCH_MS
        by_part: dict[int, list[dict]] = {}
        for _ in range(per_batch):
            i += 1
            session = f"s{rng.randrange(3000)}"
            late = rng.random() < 0.01
            start = now - (rng.randrange(20_000, 40_000) if late else rng.randrange(3_000))
            error = rng.random() < 0.04
            row = {name: None for name in C.NAMES}
            row.update({
                C.CALL_ID: f"{tenant}-{i:09d}", C.KIND: C.KIND_LLM, C.TENANT: tenant,
                C.SERVICE: rng.choice(["support-bot", "doc-summariser", "code-review"]),
                C.PROVIDER: "openai", C.MODEL: rng.choice(["gpt-4o", "gpt-4o-mini"] * 2
                                                          + ["gpt-4.1"]),
                C.TEAM: rng.choice(["red", "blue", "green"]), C.USE_CASE: "uc",
                C.USER_ID: f"u{rng.randrange(200)}", C.SESSION_ID: session,
                C.TRACE_ID: f"{i:032x}", C.SPAN_ID: f"{i:016x}",
                C.START_TIME: start * 1000, C.LATENCY_MS: rng.lognormvariate(6.5, 0.9),
                C.STATUS: "error" if error else "ok",
                C.ERROR_TYPE: rng.choice(["timeout", "RateLimitError"]) if error else None,
                C.INPUT_TOKENS: rng.randrange(10, 8000), C.OUTPUT_TOKENS: rng.randrange(1, 900),
                C.CACHED_INPUT_TOKENS: rng.choice([0, 0, 1024]),
                C.COST_USD: Decimal(rng.randrange(10**10)) / 10**12, C.PRICED: True,
                C.BATCH: False, C.CONVENTION: "semconv"})
            row[C.LIST_COST_USD] = row[C.COST_USD]
            part = murmur2_partition(partition_key(tenant, session), PARTITIONS)
            by_part.setdefault(part, []).append(row)
        for part, rows in sorted(by_part.items()):
            if previous.get(part) and rng.random() < 0.2:
                rows.append(dict(rng.choice(previous[part])))  # replayed by a client
            if rng.random() < 0.1:
                rows.append(dict(rows[0]))  # a twin in the same record
            out.append((part, now + 500, rows))
            previous[part] = rows
    return out


def _produce(settings, records, heartbeat_ms: int | None = None) -> None:
    p = clients.producer(settings, linger_ms=20)
    futures = []
    for part, stamp, rows in records:
        body = b"\n".join(calls_to_ndjson(pa.Table.from_pylist(rows, schema=C.CALLS)))
        futures.append(p.send(LLM_CALLS, body + b"\n", partition=part, timestamp_ms=stamp))
    if heartbeat_ms is not None:  # far enough ahead to close every window
        for part in range(PARTITIONS):
            futures.append(p.send(LLM_CALLS, b"", partition=part, timestamp_ms=heartbeat_ms,
                                  headers=[(HEARTBEAT_HEADER, b"1")]))
    for f in futures:
        f.get(timeout=120)
    p.close()


def _committed(settings, group: str) -> dict[int, int]:
    admin = clients.admin_client(settings)
    try:
        return clients.group_offsets(admin, group, LLM_CALLS)
    finally:
        admin.close()


def _keep_latest(latest: dict[str, dict], records, tenant: str) -> int:
    """Fold ``tenant``'s partials into ``latest`` (agg_id -> newest version); returns the
    change in group-view calls."""
    delta = 0
    for r in records:
        rec = json.loads(r.value) if r.value else None
        if rec is None or rec["tenant"] != tenant:
            continue
        old = latest.get(rec["agg_id"])
        if rec["view"] == "group":
            delta += rec["calls"] - (old["calls"] if old else 0)
        latest[rec["agg_id"]] = rec
    return delta


def _partials(settings, start, tenant: str, want_calls: int | None, timeout_s: float
              ) -> list[dict]:
    """``tenant``'s partials from ``start``, until the latest version of each adds up to
    ``want_calls`` group-view calls (None: whatever arrives within the timeout)."""
    latest: dict[str, dict] = {}
    parsed = [0, 0]  # records parsed so far, group-view calls of the latest versions

    def check(records) -> bool:
        parsed[1] += _keep_latest(latest, records[parsed[0]:], tenant)
        parsed[0] = len(records)
        return want_calls is not None and parsed[1] >= want_calls

    read_records(settings, start, check, timeout_s=timeout_s)
    return list(latest.values())


def _read_all(settings, start, tenant: str) -> list[dict]:
    """Every record from ``start`` to the topic's current end, read afresh (the polling
    reader above only waits for the worker)."""
    end = {tp: off for tp, off in end_offsets(settings, LLM_AGG_1M).items()
           if off > start.get(tp, 0)}
    last: dict[int, int] = {}  # partition -> highest offset read
    counted = [0]

    def done(records) -> bool:
        for r in records[counted[0]:]:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        counted[0] = len(records)
        return all(last.get(tp.partition, -1) >= off - 1 for tp, off in end.items())

    records = read_records(settings, start, done, timeout_s=300)
    assert done(records), f"read up to {last} of {end}"
    latest: dict[str, dict] = {}
    _keep_latest(latest, records, tenant)
    return list(latest.values())


def test_kill_9_midway_then_restart_equals_an_uninterrupted_run(kafka_settings, tmp_path):
    tenant = f"fault-{uuid.uuid4().hex[:10]}"
    group = f"llmspend-fault-{uuid.uuid4().hex[:8]}"
    base = int(time.time() * 1000) - 40 * 60_000  # in the past: no broker time limits
    records = _records(tenant, base)
    # Produce 70%, kill once 35% is committed everywhere (commits trail the input by a
    # segment plus the dedup horizon: 40 + 33 records per partition here).
    cut = len(records) * 7 // 10
    calls_start = {tp.partition: off for tp, off in end_offsets(kafka_settings,
                                                                LLM_CALLS).items()}
    agg_start = end_offsets(kafka_settings, LLM_AGG_1M)
    midway = dict(calls_start)
    for part, _, _ in records[: len(records) * 7 // 20]:
        midway[part] += 1
    env = {**ENV, "LLMSPEND_STREAM_APP_ID": group}

    with worker_process(tmp_path, env) as proc:
        _produce(kafka_settings, records[:cut])
        deadline = time.monotonic() + 300
        while True:  # wait for the known offsets to be committed, then kill -9
            committed = _committed(kafka_settings, group)
            if all(committed.get(p, -1) >= midway[p] for p in range(PARTITIONS)):
                break
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"commits stuck at {committed} < {midway}"
            time.sleep(0.2)
        proc.kill()
        proc.wait()
    before = _partials(kafka_settings, agg_start, tenant, None, timeout_s=3)
    assert before, "the killed worker had emitted partials"
    assert any(committed[p] < calls_start[p] + sum(1 for q, _, _ in records[:cut] if q == p)
               for p in range(PARTITIONS)), "the kill came before the end of the input"

    last_stamp = max(stamp for _, stamp, _ in records)
    with worker_process(tmp_path, env):
        _produce(kafka_settings, records[cut:], heartbeat_ms=last_stamp + 10 * 60_000)
        unique = {r[C.CALL_ID] for _, _, rows in records for r in rows}
        _partials(kafka_settings, agg_start, tenant, len(unique), timeout_s=300)
    got_parts = _read_all(kafka_settings, agg_start, tenant)
    got = merge_partials(got_parts)

    # The calls' own truth: every unique call counted once, exact money and sketches.
    first = {}
    for _, _, rows in records:
        for r in rows:
            first.setdefault(r[C.CALL_ID], r)
    group_view = {k: v for k, v in got.items() if k[0] == "group"}
    counted = sum(v["calls"] for v in group_view.values())
    if counted != len(first):  # say where: which source partition and windows differ
        by_part: dict[int, int] = {}
        for p in got_parts:
            if p["view"] == "group":
                by_part[p["source_partition"]] = by_part.get(p["source_partition"], 0) \
                    + p["calls"]
        want_part: dict[int, int] = {}
        for part, _, rows in records:
            want_part[part] = want_part.get(part, 0) + len({r[C.CALL_ID] for r in rows})
        windows = sorted({p["window_start"] for p in got_parts})
        pytest.fail(f"{counted} calls counted, {len(first)} expected; by source "
                    f"partition {sorted(by_part.items())}; records' rows by partition "
                    f"{sorted(want_part.items())}; windows {windows[0]}..{windows[-1]} "
                    f"({len(windows)})")
    assert sum((v["cost_usd"] for v in group_view.values()), Decimal(0)) == \
        sum((r[C.COST_USD] for r in first.values()), Decimal(0))
    assert sum(v["input_tokens"] for v in group_view.values()) == \
        sum(r[C.INPUT_TOKENS] for r in first.values())
    lat = np.array([r[C.LATENCY_MS] for r in first.values()])
    want_sketch = np.zeros((1, N_BUCKETS), np.int64)
    sketch.accumulate(want_sketch, np.zeros(len(lat), np.int64), lat,
                      np.ones(len(lat), np.bool_))
    assert (sum(v["latency"] for v in group_view.values()) == want_sketch[0]).all()

    # ... and exactly what one uninterrupted worker would have produced, key by key.
    aggs = {p: PartitionAggregator(p, CONFIG) for p in range(PARTITIONS)}
    offsets = dict(calls_start)
    whole = []
    for part, stamp, rows in records:
        whole += aggs[part].add(pa.Table.from_pylist(rows, schema=C.CALLS), offsets[part],
                                stamp).partials
        offsets[part] += 1
    for part in range(PARTITIONS):
        whole += aggs[part].add(C.CALLS.empty_table(), offsets[part],
                                last_stamp + 10 * 60_000).partials
    want = merge_partials(whole)
    missing, extra = want.keys() - got.keys(), got.keys() - want.keys()
    assert not missing and not extra, (len(missing), sorted(missing)[:3], len(extra),
                                       sorted(extra)[:3])
    for k, w in want.items():
        g = got[k]
        for name in [*w.keys()]:
            if isinstance(w[name], np.ndarray):
                assert (g[name] == w[name]).all(), (k, name)
            else:
                assert g[name] == w[name], (k, name, g[name], w[name])
    assert sum(v["fallbacks"] for v in group_view.values()) > 0
    assert sum(v["escalations"] for v in group_view.values()) > 0
    assert any(p["late"] for p in got_parts)
