"""1-minute aggregate partials: sums, duplicates, lateness, heartbeats, session rules, and
the property that matters most: a restart from the committed offset changes nothing."""

from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import sketch
from pipeline.aggregate import (
    AggregateConfig,
    Checkpoint,
    PartitionAggregator,
    is_heartbeat,
    merge_partials,
)
from pipeline.distinct import DistinctCount
from schemas import calls as C

T0 = 1_764_000_000_000 - 1_764_000_000_000 % 60_000  # a minute boundary, ms
MIN = 60_000


def call(i: int, start_ms: int, *, model: str = "gpt-4o", team: str = "a",
         cost: str = "0.001", status: str = "ok", latency: float = 500.0,
         cached: int = 0, session: str | None = None, error_type: str | None = None,
         priced: bool = True, call_id: str | None = None, user: str = "u1") -> dict:
    row = {name: None for name in C.NAMES}
    row.update({
        C.CALL_ID: call_id or f"c{i:08d}", C.KIND: C.KIND_LLM, C.TENANT: "t",
        C.SERVICE: "svc", C.PROVIDER: "openai", C.MODEL: model if priced else None,
        C.REQUEST_MODEL: model, C.TEAM: team, C.USE_CASE: "uc", C.USER_ID: user,
        C.SESSION_ID: session or f"s{i}", C.TRACE_ID: "0" * 32, C.SPAN_ID: "0" * 16,
        C.START_TIME: start_ms * 1000, C.LATENCY_MS: latency, C.STATUS: status,
        C.ERROR_TYPE: error_type, C.INPUT_TOKENS: 100, C.OUTPUT_TOKENS: 10,
        C.CACHED_INPUT_TOKENS: cached, C.COST_USD: Decimal(cost) if priced else None,
        C.LIST_COST_USD: Decimal(cost) if priced else None, C.PRICED: priced,
        C.BATCH: False, C.CONVENTION: "semconv",
    })
    return row


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=C.CALLS) if rows else C.CALLS.empty_table()


def totals(partials, view="group"):
    return {k: v for k, v in merge_partials(partials).items() if k[0] == view}


def test_sums_are_exact_and_windows_close_when_time_passes():
    agg = PartitionAggregator(3)
    rows = [call(i, T0 + i * 1000, cost="0.000000018750") for i in range(10)]
    out = agg.add(table(rows), offset=0, timestamp_ms=T0 + 11_000)
    assert out.partials == []  # the window is still open
    out = agg.add(table([]), offset=1, timestamp_ms=T0 + MIN + 30_000)  # heartbeat
    group = [p for p in out.partials if p["view"] == "group"]
    assert len(group) == 1
    p = group[0]
    assert (p["calls"], p["source_partition"], p["late"]) == (10, 3, False)
    assert Decimal(p["cost_usd"]) == Decimal("0.000000187500")
    assert p["window_start"].endswith(":00.000Z")
    assert sum(b["count"] for b in p["latency_buckets"]) == 10


def test_duplicates_count_once_within_and_across_records():
    agg = PartitionAggregator(0)
    a = call(1, T0)
    out1 = agg.add(table([a, a]), 0, T0 + 1000)
    out2 = agg.add(table([a, call(2, T0 + 5)]), 1, T0 + 2000)
    out3 = agg.add(table([]), 2, T0 + 2 * MIN)
    assert out1.stats["duplicates_dropped"] == 1 and out2.stats["duplicates_dropped"] == 1
    (t,) = totals(out1.partials + out2.partials + out3.partials).values()
    assert t["calls"] == 2


def test_late_calls_become_flagged_partials_and_merge_into_the_window():
    agg = PartitionAggregator(1)
    parts = agg.add(table([call(1, T0)]), 0, T0 + 1000).partials
    parts += agg.add(table([]), 1, T0 + MIN + 30_000).partials  # closes the window
    late = agg.add(table([call(2, T0 + 10)]), 2, T0 + MIN + 40_000)
    assert late.stats["late_calls"] == 1
    (lp,) = [p for p in late.partials if p["view"] == "group"]
    assert lp["late"] is True and lp["late_offset"] == 2
    (t,) = totals(parts + late.partials).values()
    assert t["calls"] == 2


def test_straggler_within_grace_reemits_the_main_partial_with_the_same_id():
    agg = PartitionAggregator(0, AggregateConfig(allowed_lateness_ms=0, close_grace_ms=30_000))
    first = agg.add(table([call(1, T0)]), 0, T0 + 1000).partials
    first += agg.add(table([]), 1, T0 + MIN).partials  # closes and emits the window
    assert [p["calls"] for p in first if p["view"] == "group"] == [1]
    # Record timestamp jitter: the next record is stamped earlier, so this call is on time.
    again = agg.add(table([call(2, T0 + 1)]), 2, T0 + MIN - 1).partials
    again += agg.add(table([]), 3, T0 + MIN + 1).partials
    ids = {p["agg_id"] for p in first if p["view"] == "group"}
    re = [p for p in again if p["view"] == "group"]
    assert {p["agg_id"] for p in re} == ids and re[-1]["calls"] == 2
    (t,) = totals(first + again).values()  # latest per id, not summed twice
    assert t["calls"] == 2


def test_timeouts_errors_unpriced_cache_hits_and_user_view():
    agg = PartitionAggregator(0, AggregateConfig(timeout_ms=10_000))
    rows = [call(1, T0, status="error", error_type="timeout"),
            call(2, T0, latency=12_000.0),
            call(3, T0, status="error", error_type="rate_limited"),
            call(4, T0, priced=False, model="mystery"),
            call(5, T0, cached=50, user="u2")]
    parts = agg.add(table(rows), 0, T0).partials + agg.add(table([]), 1, T0 + 3 * MIN).partials
    by_model = {k[2][3]: v for k, v in totals(parts).items()}
    assert by_model["gpt-4o"]["errors"] == 2 and by_model["gpt-4o"]["timeouts"] == 2
    assert by_model["mystery"]["unpriced_calls"] == 1  # unpriced stays visible by name
    assert sum(v["cache_hits"] for v in by_model.values()) == 1
    users = {k[2][2]: v["calls"] for k, v in totals(parts, "user").items()}
    assert users == {"u1": 4, "u2": 1}


def test_unit_view_sums_the_calls_that_name_a_unit_and_counts_each_unit_once():
    agg = PartitionAggregator(0)

    def unit_call(i: int, start: int, unit: str | None, cost: str) -> dict:
        return {**call(i, start, cost=cost), C.UNIT_TYPE: "ticket" if unit else None,
                C.UNIT_ID: unit}

    rows = [unit_call(1, T0, "TCK-1", "0.01"), unit_call(2, T0, "TCK-1", "0.02"),
            unit_call(3, T0, "TCK-2", "0.04"), unit_call(4, T0, None, "1"),
            unit_call(5, T0 + MIN, "TCK-2", "0.01")]
    parts = agg.add(table(rows), 0, T0).partials + agg.add(table([]), 1, T0 + 3 * MIN).partials
    # A late call of TCK-1 gets its own partial; the merge still sees two tickets.
    parts += agg.add(table([unit_call(6, T0, "TCK-1", "0.08")]), 2, T0 + 3 * MIN).partials
    per_minute = {k[1]: (v["calls"], Decimal(v["cost_usd"]), v["units"].count())
                  for k, v in totals(parts, "unit").items()}
    assert per_minute == {parts[0]["window_start"]: (4, Decimal("0.15"), 2),
                          _next_minute(parts[0]["window_start"]): (1, Decimal("0.01"), 1)}
    unit_parts = [p for p in parts if p["view"] == "unit"]
    assert all(p["units"] == len(p["unit_hashes"]) for p in unit_parts)
    assert all(p["unit_hashes"] is None for p in parts if p["view"] != "unit")
    day = DistinctCount()
    for p in unit_parts:
        day.merge(p["unit_hashes"])
    assert day.count() == 2                # TCK-2 worked on in two minutes: one ticket
    (group,) = [v for k, v in totals(parts).items() if k[1] == parts[0]["window_start"]]
    assert group["calls"] == 5            # the call without a unit still counts


def _next_minute(rfc3339: str) -> str:
    from pipeline.detect import time_us
    from schemas.aggregates import rfc3339_ms

    return rfc3339_ms(time_us(rfc3339) // 1000 + MIN)


def test_fallback_and_escalation_rules():
    cfg = AggregateConfig(ladders=(("gpt-4o-mini", "gpt-4o"),))
    agg = PartitionAggregator(0, cfg)
    rows = [call(1, T0, model="gpt-4o-mini", session="s", status="error", latency=100),
            call(2, T0 + 1000, model="claude-haiku-4-5", session="s"),  # fallback
            call(3, T0 + 2000, model="gpt-4o-mini", session="x"),
            call(4, T0 + 3000, model="gpt-4o", session="x"),  # escalation
            call(5, T0 + 4000, model="gpt-4o", session="x")]  # same model: neither
    parts = agg.add(table(rows), 0, T0 + 5000).partials
    parts += agg.add(table([]), 1, T0 + 3 * MIN).partials
    t = totals(parts)
    assert sum(v["fallbacks"] for v in t.values()) == 1
    assert sum(v["escalations"] for v in t.values()) == 1


def test_heartbeat_records_are_recognised():
    assert is_heartbeat([("llmspend-heartbeat", b"1")], b"")
    assert not is_heartbeat([("llmspend-heartbeat", b"1")], b"{}")
    assert not is_heartbeat(None, b"")


def _stream(seed: int, n_records: int = 60):
    """Records of one partition: jittered timestamps, late calls, duplicates, retries."""
    rng = random.Random(seed)
    records, ts, i = [], T0, 0
    for _ in range(n_records):
        ts += rng.randrange(0, 20_000)
        rows = []
        for _ in range(rng.randrange(0, 6)):
            i += 1
            lag = rng.choice([0, 0, 0, 5_000, 40_000, 200_000])  # some late
            rows.append(call(i, ts - lag - rng.randrange(1000), team=rng.choice("ab"),
                             model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
                             cost=f"0.{rng.randrange(10**12):012d}",
                             latency=rng.lognormvariate(6, 1), session=f"s{i % 7}"))
        if rows and rng.random() < 0.3:
            rows.append(dict(rng.choice(rows)))  # a retried twin
        if records and rng.random() < 0.2:
            prev = records[rng.randrange(max(0, len(records) - 5), len(records))][1]
            if prev:
                rows.append(dict(rng.choice(prev)))  # replayed from an earlier record
        stamp = ts - rng.randrange(0, 10_000)  # producer clock jitter < close_grace
        records.append((stamp, rows))
    return records


def _run(agg: PartitionAggregator, records, start: int = 0, stop: int | None = None):
    out = []
    for off, (stamp, rows) in enumerate(records[:stop]):
        if off >= start:
            out += agg.add(table(rows), off, stamp).partials
    return out


def _latest(partials) -> dict[str, dict]:
    return {p["agg_id"]: p for p in partials}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 59), st.integers(1, 12))
def test_a_restart_from_the_checkpoint_emits_what_an_uninterrupted_run_emits(
        seed, crash_at, segment_records):
    # Session rules are exact for calls at most dedup_horizon - session_rule_window late
    # (the stream's calls are at most ~200 s late).
    cfg = AggregateConfig(allowed_lateness_ms=20_000, close_grace_ms=30_000,
                          dedup_horizon_ms=400_000, session_rule_window_ms=60_000,
                          segment_records=segment_records)
    records = _stream(seed)
    records.append((records[-1][0] + 10 * MIN, []))  # a final heartbeat closes everything
    whole = _run(PartitionAggregator(0, cfg), records)

    before = PartitionAggregator(0, cfg)
    checkpoints = []
    emitted = []
    for off, (stamp, rows) in enumerate(records[:crash_at]):
        emitted += before.add(table(rows), off, stamp).partials
        if before.checkpoint and (not checkpoints or checkpoints[-1] != before.checkpoint):
            checkpoints.append(before.checkpoint)
    cp = checkpoints[-1] if checkpoints else Checkpoint(0, 0)
    assert cp.replay_from <= cp.emit_from <= crash_at
    # The worker stores emit_from, then commits replay_from, and Faust commits in the
    # background: a crash can leave a commit a few checkpoints behind the stored emit
    # point, which must not matter either.
    replay_points = {cp.replay_from, *(c.replay_from for c in checkpoints[-4:])}
    for replay_from in replay_points:
        after = _run(PartitionAggregator(0, cfg, emit_from=cp.emit_from), records,
                     start=replay_from)
        assert _latest(emitted + after) == _latest(whole)
    want = merge_partials(whole)
    n_unique = len({r[C.CALL_ID] for _, rows in records for r in rows})
    assert sum(v["calls"] for k, v in want.items() if k[0] == "group") == n_unique
    assert sum(v["calls"] for k, v in want.items() if k[0] == "user") == n_unique


def test_merged_quantiles_equal_the_sketch_of_all_calls():
    rng = np.random.default_rng(5)
    lat = rng.lognormal(6.5, 0.7, 600)
    aggs = [PartitionAggregator(p) for p in range(3)]
    parts = []
    for i, x in enumerate(lat):
        p = i % 3
        parts += aggs[p].add(table([call(i, T0 + i, latency=float(x))]), i, T0 + i).partials
    for a in aggs:
        parts += a.add(table([]), 10_000, T0 + 5 * MIN).partials
    (t,) = totals(parts).values()
    whole = np.zeros((1, len(t["latency"])), np.int64)
    sketch.accumulate(whole, np.zeros(len(lat), np.int64), lat, np.ones(len(lat), np.bool_))
    assert (t["latency"] == whole[0]).all()
    for q in (0.5, 0.95, 0.99):
        exact = sketch.exact_lower_nearest_rank(lat, q)
        assert abs(sketch.quantile(t["latency"], q) - exact) / exact <= 0.01 + 1e-9


def test_config_rejects_a_horizon_shorter_than_a_window():
    with pytest.raises(ValueError, match="dedup_horizon"):
        AggregateConfig(dedup_horizon_ms=10_000)


def test_checkpoints_advance_behind_the_dedup_horizon_and_stay_monotone():
    cfg = AggregateConfig(allowed_lateness_ms=20_000, close_grace_ms=30_000,
                          dedup_horizon_ms=400_000, session_rule_window_ms=60_000,
                          segment_records=10)
    agg = PartitionAggregator(0, cfg)
    seen = []
    for off, (stamp, rows) in enumerate(_stream(1, n_records=200)):
        agg.add(table(rows), off, stamp)
        if agg.checkpoint and (not seen or seen[-1] != agg.checkpoint):
            seen.append(agg.checkpoint)
    assert [c.emit_from for c in seen] == list(range(10, 200, 10))
    replay = [c.replay_from for c in seen]
    assert replay == sorted(replay) and all(c.replay_from <= c.emit_from for c in seen)
    assert replay[-1] > 100  # not held at 0: a dense stream still commits


def test_a_burst_of_records_with_one_timestamp_still_commits_once_time_moves_on():
    cfg = AggregateConfig(window_ms=5_000, allowed_lateness_ms=2_000, close_grace_ms=2_000,
                          dedup_horizon_ms=12_000, session_rule_window_ms=10_000,
                          segment_records=10)
    agg = PartitionAggregator(0, cfg)
    for off in range(50):
        agg.add(table([call(off, T0 + off)]), off, T0 + 100)
    assert agg.checkpoint == Checkpoint(replay_from=0, emit_from=40)  # all still needed
    for off in range(50, 80):  # heartbeats, 1 s apart
        agg.add(table([]), off, T0 + 100 + (off - 49) * 1000)
    assert agg.checkpoint.emit_from == 70 and agg.checkpoint.replay_from >= 50


def test_segment_boundaries_split_a_window_into_partials_that_add_up():
    agg = PartitionAggregator(0, AggregateConfig(segment_records=2))
    parts = []
    for off in range(6):  # three segments, one window
        parts += agg.add(table([call(off, T0 + off * 100)]), off, T0 + off * 100).partials
    parts += agg.add(table([]), 6, T0 + 3 * MIN).partials
    group = [p for p in parts if p["view"] == "group"]
    assert sorted(p["segment"] for p in group) == [0, 1, 2]
    assert len({p["agg_id"] for p in group}) == 3
    (t,) = totals(parts).values()
    assert t["calls"] == 6


def test_money_beyond_the_int64_pico_range_raises_instead_of_wrapping():
    agg = PartitionAggregator(0)
    rows = [call(i, T0, cost="5000000.000000000000") for i in range(2)]
    with pytest.raises(OverflowError):
        agg.add(table(rows), 0, T0)


def test_the_stage_rebuilds_a_partition_whose_offsets_go_backwards():
    from pipeline.config import Settings
    from pipeline.normalise import calls_to_ndjson
    from pipeline.stream.aggregate_stage import AggregateStage

    stage = AggregateStage(Settings())
    body = b"\n".join(calls_to_ndjson(table([call(1, T0)])))
    stage.emit_points = {0: 5}
    stage.process(0, 7, T0 + 1000, body, [])
    stage.process(0, 8, T0 + 1000, b"", [("llmspend-heartbeat", b"1")])
    stage.process(0, 6, T0 + 1000, body, [])  # a seek back after a rebalance
    assert stage.totals["rewinds"] == 1
    assert stage.aggs[0].next_offset == 7 and stage.aggs[0].emit_from == 5


def test_partials_schema_and_readme_agree():
    from pathlib import Path

    from schemas import aggregates as A

    agg = PartitionAggregator(0)
    agg.add(table([call(1, T0)]), 0, T0)
    rec = agg.add(table([]), 1, T0 + 5 * MIN).partials[0]
    assert list(rec) == A.AGG_1M.names  # the JSON record carries exactly the schema
    assert set(A.FIELDS) == set(A.AGG_1M.names)  # and every field is documented
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f for f in A.FIELDS if f"| `{f}` | {A.FIELDS[f]} |" not in readme]
    assert not missing, f"README aggregate table out of date for {missing}"


_ONE_CALL = st.fixed_dictionaries({
    "id": st.integers(0, 40),                      # a small pool: twins within and across
    "minute": st.integers(0, 4), "ms": st.integers(0, MIN - 1),
    "team": st.sampled_from(["a", "b"]), "user": st.sampled_from(["u1", "u2", "u3"]),
    "model": st.sampled_from(["gpt-4o", "gpt-4o-mini"]), "kind": st.sampled_from(
        [C.KIND_LLM, C.KIND_LLM, C.KIND_TOOL]),
    "unit": st.sampled_from([None, "T-1", "T-2"]), "cost": st.integers(0, 10**6)})


# Record steps in half minutes: twins land exactly on the dedup horizon's edge too.
@given(st.lists(st.tuples(st.integers(0, 12).map(lambda k: k * 30_000),
                          st.lists(_ONE_CALL, max_size=12)),
                min_size=1, max_size=10))
@settings(max_examples=80, deadline=None)
def test_merged_partials_equal_a_per_call_sum_of_first_copies(records):
    """Whatever the mix of twins, late windows, stragglers and segments, the merged
    partials of every view are the sums over each call id's first copy (within the
    dedup horizon)."""
    agg = PartitionAggregator(0, AggregateConfig(segment_records=3))
    horizon = agg.config.dedup_horizon_ms
    parts, seen = [], {}
    want: dict[tuple, list] = {}
    stamp = T0
    for offset, (step, calls) in enumerate(records):
        stamp += step
        rows = []
        for c in calls:
            start = T0 + c["minute"] * MIN + c["ms"]
            cost = f"0.{c['cost']:012d}"
            row = {**call(c["id"], start, model=c["model"], team=c["team"], cost=cost,
                          user=c["user"]),
                   C.KIND: c["kind"], C.UNIT_ID: c["unit"],
                   C.UNIT_TYPE: "ticket" if c["unit"] else None}
            rows.append(row)
            first = seen.get(row[C.CALL_ID])
            if first is not None and first >= stamp - horizon:
                continue                            # a twin within the dedup horizon
            seen[row[C.CALL_ID]] = stamp
            window = start - start % MIN
            keys = [("group", ("t", "svc", "openai", c["model"], c["team"], "uc")),
                    ("user", ("t", c["team"], c["user"]))]
            if c["unit"]:
                keys.append(("unit", ("t", "uc", "ticket")))
            for view, key in keys:
                w = want.setdefault((view, window, key), [0, Decimal(0), set()])
                w[0] += 1
                w[1] += Decimal(cost)
                if view == "unit":
                    w[2].add(c["unit"])
        parts += agg.add(table(rows), offset, stamp).partials
    parts += agg.add(table([]), len(records), stamp + 3 * 3_600_000).partials
    from pipeline.detect import time_us

    got = {(view, time_us(ws) // 1000, key): [t["calls"], t["cost_usd"],
                                              t["units"].count() if "units" in t else 0]
           for (view, ws, key), t in merge_partials(parts).items()}
    assert got == {k: [n, usd, len(units)] for k, (n, usd, units) in want.items()}


def test_each_partial_carries_the_sketch_and_cost_of_its_own_calls() -> None:
    """Partials a record emits together read their own sketch rows, on time and late."""
    agg = PartitionAggregator(0)
    by_model = {"gpt-4o": [12.0, 480.0, 480.0], "o3": [9_000.0], "gpt-4o-mini": [3.0, 70.0]}
    rows, i = [], 0
    for model, latencies in by_model.items():
        for ms in latencies:
            rows.append(call(i, T0 + i, model=model, latency=ms, cost="1.000000000001"))
            i += 1
    agg.add(table(rows), 0, T0 + 1000)
    closing = agg.add(table([]), 1, T0 + 2 * MIN)
    late = agg.add(table([dict(r, **{C.CALL_ID: f"late{j}"}) for j, r in enumerate(rows)]),
                   2, T0 + 2 * MIN + 1)
    for out in (closing, late):
        group = {p["model"]: p for p in out.partials if p["view"] == "group"}
        assert set(group) == set(by_model)
        for model, latencies in by_model.items():
            want = np.bincount(sketch.bucket_indices(np.array(latencies)))
            got = {b["bucket"]: b["count"] for b in group[model]["latency_buckets"]}
            assert got == {b: int(c) for b, c in enumerate(want) if c}
            assert group[model]["ttft_buckets"] == []
            assert Decimal(group[model]["cost_usd"]) == \
                Decimal("1.000000000001") * len(latencies)


@pytest.mark.parametrize("pico", [0, 1, -1, 10**12, -(10**12) - 5, 2**63 - 1, -(2**63)])
def test_money_text_is_the_decimal_of_the_pico_dollars(pico) -> None:
    from pipeline.aggregate import _money
    assert _money(pico) == format(Decimal(pico).scaleb(-12), "f")


_SESSION_CALL = st.fixed_dictionaries({
    "id": st.integers(0, 30),                      # twins must not move a session's state
    "session": st.sampled_from(["s1", "s2", "s3"]),
    "model": st.sampled_from(["gpt-4o-mini", "gpt-4o", "o3", "claude-haiku-4-5"]),
    "provider": st.sampled_from(["openai", "openai", "azure"]),
    "status": st.sampled_from(["ok", "ok", "error"]),
    "kind": st.sampled_from([C.KIND_LLM, C.KIND_LLM, C.KIND_LLM, C.KIND_TOOL]),
    "minute": st.integers(0, 12), "latency": st.integers(0, 200_000)})


# Steps up to 7 minutes: previous calls fall out of the rule window and the horizon too.
@given(st.lists(st.tuples(st.integers(0, 14).map(lambda k: k * 30_000),
                          st.lists(_SESSION_CALL, max_size=10)),
                min_size=1, max_size=12))
@settings(max_examples=80, deadline=None)
def test_fallbacks_and_escalations_follow_each_session_call_by_call(records):
    """Per group key, fallbacks and escalations equal the rules applied call by call in
    log order to each session's previous counted LLM call (within the dedup horizon and
    the rule window), whatever the twins, tool calls and record boundaries."""
    cfg = AggregateConfig(ladders=(("gpt-4o-mini", "gpt-4o", "o3"),),
                          dedup_horizon_ms=300_000, session_rule_window_ms=240_000,
                          segment_records=4)
    rank = cfg.rank()
    agg = PartitionAggregator(0, cfg)
    parts, seen, last = [], {}, {}
    want: dict[tuple, list[int]] = {}
    stamp = T0 + 20 * MIN
    for offset, (step, calls) in enumerate(records):
        stamp += step
        rows = []
        for c in calls:
            start = T0 + c["minute"] * MIN
            row = {**call(c["id"], start, model=c["model"], session=c["session"],
                          status=c["status"], latency=float(c["latency"])),
                   C.KIND: c["kind"], C.PROVIDER: c["provider"]}
            rows.append(row)
            first = seen.get(row[C.CALL_ID])
            if first is not None and first >= stamp - cfg.dedup_horizon_ms:
                continue
            seen[row[C.CALL_ID]] = stamp
            if c["kind"] != C.KIND_LLM:
                continue
            prev = last.get(c["session"])
            last[c["session"]] = (c["model"], c["provider"], c["status"] == "ok",
                                  start + c["latency"], stamp)
            fallback = escalation = False
            if prev is not None and prev[4] >= stamp - cfg.dedup_horizon_ms \
                    and start - prev[3] <= cfg.session_rule_window_ms:
                if not prev[2]:
                    fallback = (c["model"], c["provider"]) != prev[:2]
                elif c["model"] in rank and prev[0] in rank:
                    escalation = rank[c["model"]][0] == rank[prev[0]][0] \
                        and rank[c["model"]][1] > rank[prev[0]][1]
            key = (start - start % MIN, c["model"], c["provider"])
            w = want.setdefault(key, [0, 0])
            w[0] += fallback
            w[1] += escalation
        parts += agg.add(table(rows), offset, stamp).partials
    parts += agg.add(table([]), len(records), stamp + 3 * 3_600_000).partials
    from pipeline.detect import time_us

    got: dict[tuple, list[int]] = {}
    for (_, ws, key), t in totals(parts).items():
        g = got.setdefault((time_us(ws) // 1000, key[3], key[2]), [0, 0])
        g[0] += t["fallbacks"]
        g[1] += t["escalations"]
    assert {k: v for k, v in got.items() if any(v)} == \
        {k: v for k, v in want.items() if any(v)}
