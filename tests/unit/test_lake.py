"""The lake's pure core and its views, without a broker: generator traffic through the
real normaliser and aggregator, landed with pipeline.lake, read through the DuckDB
views. Pins: every row exactly once whatever step a flush dies at, temporary files
never visible, twins dropped by the views, bad records isolated, P95 from agg_1m equal
to P95 from calls through the same buckets."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest

from pipeline import lake
from pipeline.analytics import connect
from pipeline.config import load_settings
from pipeline.lake_fs import LocalFS
from pipeline.traffic.generator import generate
from pipeline.traffic.offline import llm_agg_1m_records, llm_calls_records, with_offsets
from pipeline.traffic.plan import Options
from schemas import aggregates as G
from schemas import alerts as A
from schemas import calls as C
from schemas import lake as L

PARTITIONS = 4
OPTS = Options(seed=11, calls=2500, start_time_ns=1_764_000_000 * 10**9,
               tenants=("acme", "globex"))


class Crash(Exception):
    """Stands for the process dying at a protocol step."""


@pytest.fixture(scope="module")
def traffic():
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "lake-unit-key-0123456789abcdef"})
    calls = llm_calls_records(OPTS, settings, PARTITIONS)
    return (with_offsets(calls), with_offsets(llm_agg_1m_records(calls, PARTITIONS)),
            generate(OPTS, dry_run=True).truth)


def totals(data_dir) -> tuple[int, Decimal, int]:
    con = connect(data_dir)
    return con.execute("SELECT count(*), sum(cost_usd), count(DISTINCT call_id) "
                       "FROM calls").fetchone()


def calls_and_aggregates(traffic, data_dir):
    """A lake holding the traffic's calls and partials, and a connection to it."""
    records, aggs, _truth = traffic
    lake.land(LocalFS(data_dir), L.CALLS, records)
    lake.land(LocalFS(data_dir), L.AGG_1M, aggs)
    return connect(data_dir)


def test_landed_calls_equal_the_generator_truth(traffic, tmp_path):
    records, _aggs, truth = traffic
    res = lake.land(LocalFS(tmp_path), L.CALLS, records)
    assert res.bad == []
    n, cost, distinct = totals(tmp_path)
    assert n == distinct == truth.calls
    assert cost == truth.list_cost_usd
    # Files are named by source partition and offset range, in hive partitions.
    files = list(LocalFS(tmp_path).list("calls", ".parquet"))
    assert files and all("/tenant=" in f and "/dt=" in f and "/hour=" in f for f in files)
    assert {L.parse_file_name(f.rsplit("/", 1)[1])[0] for f in files} <= set(range(4))


def test_ids_and_hashes_are_written_plain_and_the_other_columns_dictionary_encoded(
        traffic, tmp_path):
    """schemas.lake.PLAIN_COLUMNS: all-distinct columns skip the dictionary; a column
    that repeats (model, team) keeps it."""
    import pyarrow.parquet as pq

    records, aggs, _truth = traffic
    lake.land(LocalFS(tmp_path), L.CALLS, records)
    lake.land(LocalFS(tmp_path), L.AGG_1M, aggs)
    for ds, plain, repeated in ((L.CALLS, C.CALL_ID, C.MODEL), (L.AGG_1M, G.AGG_ID, C.MODEL)):
        rel = next(iter(LocalFS(tmp_path).list(ds.name, ".parquet")))
        meta = pq.ParquetFile(tmp_path / rel).metadata.row_group(0)
        chunks = {meta.column(i).path_in_schema: meta.column(i)
                  for i in range(meta.num_columns)}
        assert plain in L.PLAIN_COLUMNS
        assert not chunks[plain].has_dictionary_page, (ds.name, plain)
        assert chunks[repeated].has_dictionary_page, (ds.name, repeated)


def test_the_sink_writes_at_its_fast_level_and_compaction_at_the_tight_one(traffic,
                                                                          tmp_path):
    """schemas.lake.SINK_COMPRESSION_LEVEL for the files the sink lands (compacted
    later), COMPRESSION_LEVEL for what compaction writes; the rows are the same."""
    from jobs.compact import compact

    levels: list[tuple[str, int]] = []

    class Recording(LocalFS):
        def write_parquet(self, rel, table, level=L.COMPRESSION_LEVEL):
            levels.append((rel, level))
            super().write_parquet(rel, table, level)

    records, _aggs, truth = traffic
    fs = Recording(tmp_path)
    lake.land(fs, L.CALLS, records)
    assert levels and {lv for _, lv in levels} == {L.SINK_COMPRESSION_LEVEL}
    levels.clear()
    import datetime as dt

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    assert compact(fs, later, closed_after_s=0, min_files=1, datasets=(L.CALLS,)).files_in
    assert levels and {lv for _, lv in levels} == {L.COMPRESSION_LEVEL}
    n, cost, _ = totals(tmp_path)
    assert (n, cost) == (truth.calls, truth.list_cost_usd)


@pytest.mark.parametrize("dataset", [L.CALLS, L.AGG_1M])
def test_split_puts_each_row_in_its_hive_partition_sorted_by_time_then_offset(traffic,
                                                                               dataset):
    """lake.split against the rule written out row by row, on shuffled rows of two
    tenants (one URL-encoded), over several hours and days, in several chunks."""
    import datetime as dt

    import numpy as np

    records, aggs, _truth = traffic
    table = lake.decode(dataset, records if dataset is L.CALLS else aggs).table
    tenants = np.where(np.arange(table.num_rows) % 3 == 0, "acme/eu west", "globex")
    table = table.set_column(table.schema.get_field_index(C.TENANT), C.TENANT,
                             pa.array(tenants))
    shift = np.arange(table.num_rows) % 5 * 7_200_000_000      # spread over ten hours
    ts = table.column(dataset.time_column)
    moved = pa.array(ts.cast(pa.int64()).to_numpy() + shift).cast(ts.type)
    table = table.set_column(table.schema.get_field_index(dataset.time_column),
                             table.schema.field(dataset.time_column), moved)
    table = table.take(np.random.default_rng(3).permutation(table.num_rows))
    # in chunks, as a sink's buffered records arrive: codes must not depend on the chunk
    cut = table.num_rows // 3
    table = pa.concat_tables([table.slice(0, cut), table.slice(cut, 7), table.slice(cut + 7)])
    assert table.column(C.TENANT).num_chunks == 3
    want: dict[str, list] = {}
    for i, r in enumerate(table.select([C.TENANT, dataset.time_column,
                                        L.KAFKA_OFFSET]).to_pylist()):
        t = r[dataset.time_column].astimezone(dt.UTC)
        rel = L.partition_dir(dataset, r[C.TENANT], t.date(),
                              t.hour if dataset.hourly else None)
        want.setdefault(rel, []).append((r[dataset.time_column], r[L.KAFKA_OFFSET], i))
    got = lake.split(dataset, table)
    assert sorted(got) == sorted(want) and len(got) > 4
    for rel, rows in want.items():
        assert got[rel].equals(table.take([i for *_k, i in sorted(rows)])), rel


def test_a_retry_twin_is_one_row_in_the_calls_view(traffic, tmp_path):
    records, _aggs, truth = traffic
    part, _off, body = records[5]
    twin = (part, max(o for p, o, _b in records if p == part) + 1, body)
    lake.land(LocalFS(tmp_path), L.CALLS, [*records, twin])
    n, cost, _ = totals(tmp_path)
    assert (n, cost) == (truth.calls, truth.list_cost_usd)
    raw = connect(tmp_path).execute(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/calls/*/*/*/*.parquet')").fetchone()
    assert raw[0] == truth.calls + len(body.strip().split(b"\n"))   # the twin IS there


@pytest.mark.parametrize("step", ["temps", "state", "rename", "renamed"])
def test_a_flush_killed_at_any_step_lands_every_row_exactly_once(traffic, tmp_path, step):
    records, _aggs, truth = traffic
    fs = LocalFS(tmp_path)
    half = len(records) // 2
    lake.land(fs, L.CALLS, records[:half])           # some flushes committed before
    seen_during: list[int] = []

    def die(at: str) -> None:
        if at == "temps":   # temporary files exist now: no view may count them
            seen_during.append(totals(tmp_path)[0])
        if at == step:
            raise Crash(step)

    writers = {}
    for part in range(PARTITIONS):
        writers[part] = lake.PartitionWriter(fs, L.CALLS, part, die)
        writers[part].recover()
    visible = totals(tmp_path)[0]
    with pytest.raises(Crash):
        lake.land(fs, L.CALLS, records[half:], writers)
    assert seen_during[0] == visible     # written but uncommitted: invisible
    # Restart: fresh writers recover from the lake and everything is re-offered.
    lake.land(fs, L.CALLS, records)
    n, cost, distinct = totals(tmp_path)
    assert n == distinct == truth.calls and cost == truth.list_cost_usd
    assert not list(fs.list("calls", ".tmp"))


def test_recovery_finishes_a_committed_flush_and_drops_an_uncommitted_one(traffic,
                                                                           tmp_path):
    records, _aggs, _truth = traffic
    fs = LocalFS(tmp_path)
    part0 = [r for r in records if r[0] == 0]

    def die_after_state(at: str) -> None:
        if at == "state":
            raise Crash(at)

    w = lake.PartitionWriter(fs, L.CALLS, 0, die_after_state)
    w.recover()
    d = lake.decode(L.CALLS, part0[:3])
    with pytest.raises(Crash):
        w.flush(part0[0][1], part0[2][1] + 1, lake.split(L.CALLS, d.table))
    assert list(fs.list("calls", ".tmp")) and not list(fs.list("calls", ".parquet"))
    again = lake.PartitionWriter(fs, L.CALLS, 0)
    assert again.recover() == part0[2][1] + 1            # committed: rolled forward
    assert not list(fs.list("calls", ".tmp"))
    assert totals(tmp_path)[0] == d.table.num_rows


def test_a_bad_record_is_rejected_alone_and_its_neighbours_land(traffic, tmp_path):
    records, _aggs, _truth = traffic
    part0 = [r for r in records if r[0] == 0][:4]
    good = sum(len(b.strip().split(b"\n")) for _p, _o, b in part0)
    bad = (0, part0[-1][1] + 1, b'{"call_id": "x", "cost_usd": "not money"}')
    res = lake.land(LocalFS(tmp_path), L.CALLS, [*part0, bad, (0, bad[1] + 1, None)])
    assert [(p, o) for p, o, _why in res.bad] == [(0, bad[1])]
    assert "does not decode" in res.bad[0][2]
    assert totals(tmp_path)[0] == good
    # The range is landed past the bad record and the heartbeat: not read again.
    assert lake.committed(LocalFS(tmp_path), L.CALLS) == {0: bad[1] + 2}


def test_a_record_from_before_a_new_column_lands_with_it_null(traffic, tmp_path):

    records, _aggs, _truth = traffic
    p, o, body = next(r for r in records if r[0] == 0)
    rows = [orjson.loads(line) for line in body.splitlines()]
    old = b"\n".join(orjson.dumps({k: v for k, v in r.items()
                                   if k not in ("fees", "prompt_version")}) for r in rows)
    no_id = orjson.dumps({k: v for k, v in rows[0].items() if k != "call_id"})
    res = lake.land(LocalFS(tmp_path), L.CALLS, [(p, o, old), (p, o + 1, no_id)])
    assert [(bp, bo) for bp, bo, _why in res.bad] == [(p, o + 1)]
    assert "required field" in res.bad[0][2]
    got = connect(tmp_path).execute(
        "SELECT count(*), count(fees), count(prompt_version) FROM calls").fetchone()
    assert got == (len(rows), 0, 0)


def test_p95_from_agg_1m_equals_p95_from_calls_for_every_slice(traffic, tmp_path):
    con = calls_and_aggregates(traffic, tmp_path)
    for by in ("model", "tenant", "team", "service", "date_trunc('hour', window_start)"):
        calls_by = {"model": "coalesce(model, response_model, request_model)",
                    "date_trunc('hour', window_start)": "date_trunc('hour', start_time)"
                    }.get(by, by)
        for q in ("llmspend_p50", "llmspend_p95", "llmspend_p99"):
            from_calls = con.execute(
                f"SELECT {calls_by} AS k, {q}(llmspend_sketch_of(latency_ms)) FROM calls "
                f"GROUP BY k ORDER BY k").fetchall()
            from_agg = con.execute(
                f"SELECT {by} AS k, {q}(flatten(list(latency_buckets))) FROM agg_1m "
                f"WHERE view = 'group' GROUP BY k ORDER BY k").fetchall()
            assert from_calls == from_agg, (by, q)
    # And the merged view adds up to the calls, in every view.
    (calls_n, calls_cost), = con.execute("SELECT count(*), sum(cost_usd) FROM calls").fetchall()
    for view in ("group", "user"):
        assert con.execute("SELECT sum(calls), sum(cost_usd) FROM agg_1m WHERE view = ?",
                           [view]).fetchone() == (calls_n, calls_cost)


def test_units_in_agg_1m_equal_distinct_units_in_calls(traffic, tmp_path):
    con = calls_and_aggregates(traffic, tmp_path)
    from_calls = con.execute(
        "SELECT tenant, use_case, count(DISTINCT unit_id), sum(cost_usd) FROM calls "
        "WHERE unit_id IS NOT NULL GROUP BY ALL ORDER BY ALL").fetchall()
    from_agg = con.execute(
        "SELECT tenant, use_case, len(list_distinct(flatten(list(unit_hashes)))), "
        "sum(cost_usd) FROM agg_1m WHERE view = 'unit' GROUP BY ALL ORDER BY ALL").fetchall()
    assert from_calls == from_agg and from_calls


def alert(key: str, state: str, severity: str, first: str, emitted: str) -> bytes:
    rec = {A.ID: A.alert_id(key, state, severity, first), A.DEDUP_KEY: key,
           A.SEVERITY: severity, A.DETECTOR: "runaway_loop", A.SUBJECT_KIND: "session",
           A.SUBJECT: key.rsplit("/", 1)[-1], A.TENANT: "acme", A.SUMMARY: "loop",
           A.EVIDENCE: {"calls": 7, "cost_usd": "0.120000"}, A.FIRST_SEEN: first,
           A.LAST_SEEN: emitted, A.STATE: state, A.EMITTED_AT: emitted}
    return orjson.dumps(rec)


def test_alerts_view_keeps_the_latest_state_and_alert_events_drop_twins(tmp_path):
    t0, t1, t2 = "2026-11-29T10:00:00.000Z", "2026-11-29T10:01:00.000Z", \
        "2026-11-29T10:09:00.000Z"
    records = [(0, 0, alert("session/acme/s1", "firing", "warning", t0, t0)),
               (0, 1, alert("session/acme/s1", "firing", "critical", t0, t1)),
               (0, 2, alert("session/acme/s1", "firing", "critical", t0, t1)),  # twin
               (0, 3, alert("session/acme/s1", "resolved", "critical", t0, t2)),
               (1, 0, alert("session/acme/s2", "firing", "warning", t0, t1)),
               (1, 1, b"not json")]
    res = lake.land(LocalFS(tmp_path), L.ALERTS, records)
    assert [(p, o) for p, o, _w in res.bad] == [(1, 1)]
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM alert_events").fetchone() == (4,)
    latest = con.execute("SELECT subject, state, severity, evidence->>'cost_usd' "
                         "FROM alerts ORDER BY subject").fetchall()
    assert latest == [("s1", "resolved", "critical", "0.120000"),
                      ("s2", "firing", "warning", "0.120000")]


def test_an_empty_lake_has_every_view_with_its_columns(tmp_path):
    con = connect(tmp_path)
    for view in ("calls", "agg_1m", "agg_1m_partials", "alerts", "alert_events"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)
    cols = [r[0] for r in con.execute("DESCRIBE calls").fetchall()]
    assert "cost_usd" in cols and "dt" in cols and "_kafka_offset" not in cols
    assert json.loads(json.dumps(cols))  # plain names
