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
