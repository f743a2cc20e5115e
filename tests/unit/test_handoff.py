"""Columns handed from the normalise stage to the aggregate stage of the same worker
(pipeline/stream/handoff.py): the same columns as parsing the body, the same partials,
and bounded memory."""

from __future__ import annotations

import numpy as np

from pipeline import callbatch, otlp
from pipeline.aggregate import HEARTBEAT_HEADER
from pipeline.callbatch import CallBatch
from pipeline.config import load_settings
from pipeline.stream.aggregate_stage import AggregateStage
from pipeline.stream.handoff import Handoff
from pipeline.stream.normalise_stage import NormaliseStage
from pipeline.traffic import emit as emit_mod
from pipeline.traffic.offline import RequestCollector
from pipeline.traffic.plan import Options, plan

T0 = 1_764_000_000 * 10**9


def _requests(calls: int = 1500) -> list[tuple[str, bytes]]:
    opts = Options(seed=11, calls=calls, start_time_ns=T0, tenants=("acme", "globex"),
                   scenarios=("runaway-loop", "retry-storm", "unknown-model"))
    sinks = {t: RequestCollector() for t in opts.tenants}
    emit_mod.emit(plan(opts), sinks, max_rate=True)
    return [(t, r) for t, sink in sinks.items() for r in sink.requests]


def _settings(tmp_path):
    return load_settings(env={"LLMSPEND_HASH_KEY": "k" * 32,
                              "LLMSPEND_STATE_DIR": str(tmp_path)})


def _same(a: CallBatch, b: CallBatch) -> None:
    assert a.lists == b.lists
    for name in ("start_ms", "tokens", "cost_pico", "priced"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("latency_ms", "ttft_ms"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def test_handed_off_columns_equal_parsing_the_body(tmp_path):
    handoff = Handoff()
    stage = NormaliseStage(_settings(tmp_path), 6, handoff)
    bodies = 0
    for i, (tenant, req) in enumerate(_requests()):
        res = stage.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, i)
        for _, body in res.outputs:
            held = handoff.take(body)
            assert held is not None
            _same(held, callbatch.from_ndjson(body))
            bodies += 1
    assert bodies > 20 and len(handoff) == 0


def test_columns_of_a_batch_of_records_are_cut_per_body_in_line_order(tmp_path):
    """The stage builds one batch's columns once and cuts them per body: each body's
    cut equals parsing that body, for batches of several records (bodies merged)."""
    handoff = Handoff()
    stage = NormaliseStage(_settings(tmp_path), 6, handoff)
    reqs = _requests()
    bodies = 0
    for lo in range(0, len(reqs), 4):
        res = stage.process_many([(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, lo + j)
                                  for j, (tenant, req) in enumerate(reqs[lo:lo + 4])])
        for _, body in res.outputs:
            _same(handoff.take(body), callbatch.from_ndjson(body))
            bodies += 1
    assert bodies > 6 and len(handoff) == 0


def test_the_aggregate_stage_emits_the_same_partials_either_way(tmp_path):
    settings = _settings(tmp_path)
    handoff = Handoff()
    stage = NormaliseStage(settings, 6, handoff)
    records, offsets = [], [0] * 6
    for i, (tenant, req) in enumerate(_requests()):
        res = stage.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, i)
        for partition, body in res.outputs:
            records.append((partition, offsets[partition], T0 // 10**6 + i * 1000, body))
            offsets[partition] += 1
    records.append((0, offsets[0], T0 // 10**6 + 10**8, b""))  # a late clock closes all
    fed, parsed = AggregateStage(settings, handoff), AggregateStage(settings)
    for partition, offset, ts, body in records:
        hdrs = [(HEARTBEAT_HEADER, b"1")] if not body else None
        assert fed.process(partition, offset, ts, body, hdrs) == \
            parsed.process(partition, offset, ts, body, hdrs)
    assert fed.totals["bodies_handed_off"] == len(records) - 1
    assert parsed.totals["bodies_parsed"] == len(records) - 1
    assert fed.totals["partials_emitted"] > 0


def test_held_bodies_are_bounded_oldest_first_and_taken_once():
    handoff = Handoff(max_bytes=10)
    empty = CallBatch.empty()
    handoff.put(b"aaaa", empty)
    handoff.put(b"bbbb", empty)
    handoff.put(b"cccc", empty)              # 12 bytes: the oldest goes
    assert handoff.take(b"aaaa") is None and handoff.evicted == 1
    assert handoff.take(b"bbbb") is empty and handoff.take(b"bbbb") is None
    assert handoff.bytes == 4 and len(handoff) == 1
    handoff.put(b"x" * 11, empty)            # larger than the budget: never held
    assert handoff.take(b"x" * 11) is None


def test_bodies_sharing_a_key_are_told_apart_by_their_whole_bytes():
    handoff = Handoff()
    first, second = CallBatch.empty(), CallBatch.empty()
    edge = b"e" * 200
    one, other = edge + b"1" + edge, edge + b"2" + edge   # same length, same edges
    handoff.put(one, first)
    handoff.put(other, second)               # its key is taken: it will be parsed
    assert handoff.take(other) is None       # never the other body's columns
    assert len(handoff) == 1
    assert handoff.take(one) is first
    assert (handoff.hits, handoff.misses) == (1, 1)


def test_columns_that_cannot_be_built_are_not_handed_off_and_lose_nothing(tmp_path,
                                                                          monkeypatch):
    def broken(calls):
        raise OverflowError("a cost beyond the int64 pico-dollar range")

    monkeypatch.setattr(callbatch, "from_table", broken)
    handoff = Handoff()
    stage = NormaliseStage(_settings(tmp_path), 6, handoff)
    tenant, req = _requests(50)[0]
    res = stage.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, 0)
    assert res.dead_letter is None and res.calls > 0 and res.outputs
    assert len(handoff) == 0


def test_the_lake_lands_the_same_rows_from_held_tables_as_from_parsing(tmp_path):
    """The lake sink takes the normaliser's tables by body; what it lands (every
    partition file's rows) equals what parsing the NDJSON lands, held and parsed
    records mixed, with a heartbeat and an unreadable record beside them."""
    from pipeline import lake
    from schemas import lake as L

    lake_handoff: Handoff = Handoff()
    stage = NormaliseStage(_settings(tmp_path), 6, lake_handoff=lake_handoff)
    by_partition: dict[int, list] = {}
    for i, (tenant, req) in enumerate(_requests()):
        res = stage.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, i)
        for partition, body in res.outputs:
            recs = by_partition.setdefault(partition, [])
            recs.append((partition, len(recs), body))
    assert len(lake_handoff) == sum(len(r) for r in by_partition.values())
    landed = 0
    for partition, recs in by_partition.items():
        recs = [*recs, (partition, len(recs), b""), (partition, len(recs) + 1, b"{oops")]
        held = {(p, o): lake_handoff.take(body) for p, o, body in recs[:-2:2]}
        parsed, taken = lake.decode(L.CALLS, recs), lake.decode(L.CALLS, recs, held)
        assert [o for _, o, _ in taken.bad] == [o for _, o, _ in parsed.bad] == [recs[-1][1]]
        assert taken.table.schema == parsed.table.schema == L.CALLS.schema
        a, b = lake.split(L.CALLS, parsed.table), lake.split(L.CALLS, taken.table)
        assert a.keys() == b.keys()
        for rel in a:
            assert a[rel].equals(b[rel]), rel
        landed += parsed.table.num_rows
    assert landed > 1000


def test_the_lake_sink_takes_held_rows_and_lands_what_parsing_lands(tmp_path):
    from pipeline import lake
    from pipeline.analytics import connect
    from pipeline.stream.lake_stage import LakeSink
    from schemas import lake as L

    outputs = []
    lake_handoff: Handoff = Handoff()
    stage = NormaliseStage(_settings(tmp_path), 6, lake_handoff=lake_handoff)
    for i, (tenant, req) in enumerate(_requests(600)):
        outputs += stage.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, i).outputs
    found = []
    for name, handoff in (("held", lake_handoff), ("parsed", None)):
        settings = _settings(tmp_path / name)
        sink = LakeSink(settings, handoff)
        offsets = [0] * 6
        for partition, body in outputs:
            if (L.CALLS.topic, partition) not in sink.writers:
                w = sink.writers[(L.CALLS.topic, partition)] = lake.PartitionWriter(
                    sink.fs, L.CALLS, partition)
                w.recover()
                w.start_at(0)
            sink.offer(L.CALLS.topic, partition, [(partition, offsets[partition], body)])
            offsets[partition] += 1
        sink.flush(commit=False)
        assert not sink.held
        found.append((sink.stats["calls_records_handed_off"],
                      connect(settings.lake_dir).execute(
                          "SELECT count(*), sum(cost_usd), count(DISTINCT call_id) "
                          "FROM calls").fetchone()))
    (held, in_held), (none, in_parsed) = found
    assert held == len(outputs) and none == 0
    assert in_held == in_parsed and in_held[0] > 500


def test_metrics_count_hits_misses_and_evictions_per_taking_stage():
    """What an operator reads to tell whether a stage parses bodies again: one family
    per metric (Prometheus refuses a second TYPE line), a series per taking stage."""
    from pipeline.stream.handoff import metrics

    agg, lake = Handoff(max_bytes=10), Handoff()
    agg.put(b"a" * 6, 1)
    agg.put(b"b" * 6, 2)                  # evicts the first: 12 bytes > 10
    assert agg.take(b"a" * 6) is None and agg.take(b"b" * 6) == 2
    lake.put(b"c", 3)
    text = "\n".join(metrics({"aggregate": agg, "lake": lake, "detect": None}))
    assert text.count("# TYPE llmspend_handoff_bodies_total counter") == 1
    for line in ('llmspend_handoff_bodies_total{to="aggregate",outcome="hit"} 1',
                 'llmspend_handoff_bodies_total{to="aggregate",outcome="miss"} 1',
                 'llmspend_handoff_bodies_total{to="aggregate",outcome="evicted"} 1',
                 'llmspend_handoff_held_bytes{to="aggregate"} 0',
                 'llmspend_handoff_held_bodies{to="lake"} 1',
                 'llmspend_handoff_held_bytes{to="lake"} 1'):
        assert line in text.splitlines()
    assert "detect" not in text and metrics({"aggregate": None}) == []
