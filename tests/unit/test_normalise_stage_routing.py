"""The normalise stage's per-record core, without Kafka: routing of calls to partitions,
dead letters for bad records, nothing lost next to them."""

from __future__ import annotations

import json

import pytest

from pipeline import otlp
from pipeline.config import load_settings
from pipeline.normalise import murmur2_partition, partition_key
from pipeline.stream.normalise_stage import NormaliseStage
from tests.sample_spans import sample_request


@pytest.fixture
def stage(tmp_path) -> NormaliseStage:
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "k" * 32,
                                  "LLMSPEND_STATE_DIR": str(tmp_path)})
    return NormaliseStage(settings, calls_partitions=6)


def test_calls_are_grouped_by_the_partition_of_tenant_and_session(stage):
    req = otlp.parse_request(sample_request(5))
    for i, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.conversation.id", f"conv-{i % 3}"
    res = stage.process(req.SerializeToString(), [(otlp.TENANT_HEADER, b"acme")], 2, 17)
    assert res.dead_letter is None and res.calls == 5
    seen = 0
    for partition, body in res.outputs:
        assert body.endswith(b"\n")
        for line in body.splitlines():
            call = json.loads(line)
            assert call["tenant"] == "acme"
            assert partition == murmur2_partition(
                partition_key("acme", call["session_id"]), 6)
            seen += 1
    assert seen == 5
    assert [p for p, _ in res.outputs] == sorted({p for p, _ in res.outputs})


@pytest.mark.parametrize("value", [b"", None, b"\x0a\xff\xff garbage", b"{not json"])
def test_undecodable_records_become_dead_letters_with_a_reason(stage, value):
    res = stage.process(value, None, 0, 5)
    assert res.outputs == [] and res.dead_letter and res.dead_letter.startswith("decode: ")
    assert stage.totals["records_dead_lettered"] == 1


def test_a_request_with_only_non_llm_spans_produces_nothing(stage):
    req = otlp.parse_request(sample_request(2))
    for span in req.resource_spans[0].scope_spans[0].spans:
        del span.attributes[:]
    res = stage.process(req.SerializeToString(), None, 0, 0)
    assert res.dead_letter is None and res.outputs == [] and res.calls == 0


def _requests(n: int) -> list[bytes]:
    """n requests of 4 calls in 3 sessions each (ids differ per request)."""
    out = []
    for r in range(n):
        req = otlp.parse_request(sample_request(4))
        for i, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
            span.span_id = bytes([r + 1, i + 1]) * 4
            kv = span.attributes.add()
            kv.key, kv.value.string_value = "gen_ai.conversation.id", f"conv-{(r + i) % 3}"
        out.append(req.SerializeToString())
    return out


def test_records_processed_together_give_each_records_calls_merged_per_partition(stage):
    values = _requests(4)
    tenant = [(otlp.TENANT_HEADER, b"acme")]
    alone = [stage.process(v, tenant, 0, i) for i, v in enumerate(values)]
    want: dict[int, bytes] = {}
    for res in alone:
        for partition, body in res.outputs:
            want[partition] = want.get(partition, b"") + body
    res = stage.process_many([(v, tenant, 0, i) for i, v in enumerate(values)])
    assert dict(res.outputs) == want and res.dead_letters == []
    assert res.calls == 16 and res.stats["records_in"] == 4


def test_a_bad_record_among_good_ones_is_dead_lettered_alone(stage):
    good = _requests(3)
    records = [(good[0], None, 0, 0), (b"\x0a\xff\xff garbage", None, 0, 1),
               (good[1], None, 0, 2), (good[2], None, 0, 3)]
    res = stage.process_many(records)
    assert [i for i, _ in res.dead_letters] == [1]
    assert res.dead_letters[0][1].startswith("decode: ")
    assert res.calls == 12
    assert sum(len(body.splitlines()) for _, body in res.outputs) == 12


def test_spans_that_break_the_normaliser_lose_only_their_own_record(stage, monkeypatch):
    from pipeline import normalise_columnar

    real = normalise_columnar.normalise

    def poisoned(spans, *a, **k):
        if "poison" in spans.column("tenant").to_pylist():
            raise RuntimeError("a bug the normaliser has on this record")
        return real(spans, *a, **k)

    monkeypatch.setattr(normalise_columnar, "normalise", poisoned)
    values = _requests(3)
    records = [(values[0], [(otlp.TENANT_HEADER, b"acme")], 0, 0),
               (values[1], [(otlp.TENANT_HEADER, b"poison")], 0, 1),
               (values[2], [(otlp.TENANT_HEADER, b"acme")], 0, 2)]
    res = stage.process_many(records)
    assert res.dead_letters == [(1, "normalise: RuntimeError: a bug the normaliser has on "
                                    "this record")]
    lines = [json.loads(line) for _, body in res.outputs for line in body.splitlines()]
    assert len(lines) == 8 and {c["tenant"] for c in lines} == {"acme"}
    assert stage.totals["records_dead_lettered"] == 1 and stage.totals["records_in"] == 2


def test_the_stage_counts_what_it_did_for_prometheus(stage):
    stage.process(sample_request(5), [(otlp.TENANT_HEADER, b"acme")], 0, 1)
    stage.process(b"\x00 not a request", [], 0, 2)
    lines = stage.metrics()
    assert lines[0] == "# TYPE llmspend_normalise_events_total counter"
    counts = {ln.split('"')[1]: int(ln.rsplit(" ", 1)[1]) for ln in lines[1:]}
    assert counts["records_in"] == 1 and counts["records_dead_lettered"] == 1
    assert counts["llm_calls"] == 5
