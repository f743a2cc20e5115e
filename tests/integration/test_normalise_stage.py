"""The normalise stage in a real Faust worker on the real broker: OTLP in -> priced calls
out in NDJSON batches; undecodable records to the DLQ with their reason, nothing else
lost; `llmspend dlq list` and `replay`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import dlq, otlp
from pipeline.clients import producer
from pipeline.normalise import murmur2_partition, partition_key
from schemas.topics import LLM_CALLS, OTLP_SPANS, OTLP_SPANS_DLQ
from tests.integration.kafka_helpers import end_offsets, read_records, worker_process

pytestmark = pytest.mark.integration
HASH_KEY = "stage-test-hash-key-0123456789abcdef"


APP_ID = f"llmspend-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(kafka_settings, tmp_path_factory):
    """A real `llmspend worker` process against the test broker."""
    with worker_process(tmp_path_factory.mktemp("worker-state"),
                        {"LLMSPEND_HASH_KEY": HASH_KEY,
                         "LLMSPEND_STREAM_APP_ID": APP_ID}) as proc:
        yield proc


def test_a_new_group_pins_where_it_started_before_processing_anything(
        kafka_settings, worker):
    """Ready means every input partition has a committed offset, so a worker killed
    before its first commit cannot restart at a later "latest" and skip records."""
    from pipeline.clients import committed_partitions

    pinned = committed_partitions(kafka_settings, APP_ID)
    parts = end_offsets(kafka_settings, OTLP_SPANS)
    assert {(OTLP_SPANS, tp.partition) for tp in parts} <= pinned


def _spans(marker: str):
    """Three calls of one session (cached tokens, an unknown model) and one tool call."""
    rec = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-bot",
                                                        "llmspend.team": "payments"}))
    provider.add_span_processor(SimpleSpanProcessor(rec))
    tracer = provider.get_tracer("t")
    calls = [("gpt-4o", 12_000, 3_000, 800), ("gpt-4o-mini", 2_000, 0, 100),
             ("no-such-model-xyz", 10, 0, 10)]
    for model, inp, cached, out in calls:
        with tracer.start_as_current_span(f"chat {model}") as s:
            s.set_attribute("gen_ai.operation.name", "chat")
            s.set_attribute("gen_ai.provider.name", "openai")
            s.set_attribute("gen_ai.request.model", model)
            s.set_attribute("gen_ai.conversation.id", marker)
            s.set_attribute("gen_ai.usage.input_tokens", inp)
            s.set_attribute("gen_ai.usage.cache_read.input_tokens", cached)
            s.set_attribute("gen_ai.usage.output_tokens", out)
            s.set_attribute("gen_ai.input.messages", '[{"role":"user","content":"hi"}]')
    with tracer.start_as_current_span("execute_tool search") as s:
        s.set_attribute("gen_ai.operation.name", "execute_tool")
        s.set_attribute("gen_ai.tool.name", "search")
        s.set_attribute("gen_ai.conversation.id", marker)
        s.set_attribute("gen_ai.tool.call.arguments", '{"q": "invoice 42"}')
    provider.shutdown()
    return rec.get_finished_spans()


def _calls_for(kafka_settings, start, marker: str, expected: int) -> list[tuple]:
    out: list[tuple] = []

    def done(records) -> bool:
        out.clear()
        for r in records:
            for line in r.value.splitlines():
                call = json.loads(line)
                if call["session_id"] == marker:
                    out.append((call, r))
        return len(out) >= expected

    read_records(kafka_settings, start, done, timeout_s=60)
    return out


def test_otlp_in_priced_calls_out(kafka_settings, worker):
    marker = f"sess-{uuid.uuid4().hex}"
    start = end_offsets(kafka_settings, LLM_CALLS)
    p = producer(kafka_settings)
    p.send(OTLP_SPANS, encode_spans(_spans(marker)).SerializeToString(),
           headers=[(otlp.TENANT_HEADER, b"acme")]).get(timeout=30)
    p.close()
    got = _calls_for(kafka_settings, start, marker, 4)
    assert len(got) == 4
    calls = {c["request_model"] or c["tool_name"]: c for c, _ in got}
    # One session -> one partition, chosen like Kafka's default partitioner.
    want_partition = murmur2_partition(partition_key("acme", marker), 6)
    assert {r.partition for _, r in got} == {want_partition}
    assert {dict(r.headers)["content-type"] for _, r in got} == {b"application/x-ndjson"}
    # gpt-4o list prices per 1M tokens: input 2.50, cached input 1.25, output 10.00.
    g = calls["gpt-4o"]
    assert Decimal(g["cost_usd"]) == (Decimal(9_000) * Decimal("2.50")
                                      + Decimal(3_000) * Decimal("1.25")
                                      + Decimal(800) * Decimal("10.00")) / 1_000_000
    assert g["cached_input_tokens"] == 3_000 and g["priced"] is True
    assert (g["tenant"], g["service"], g["team"]) == ("acme", "billing-bot", "payments")
    m = calls["gpt-4o-mini"]  # 0.15 / 0.60 per 1M
    assert Decimal(m["cost_usd"]) == (Decimal(2_000) * Decimal("0.15")
                                      + Decimal(100) * Decimal("0.60")) / 1_000_000
    u = calls["no-such-model-xyz"]
    assert u["priced"] is False and u["cost_usd"] is None
    t = calls["search"]
    assert t["kind"] == "tool" and Decimal(t["cost_usd"]) == 0 and t["tool_args_hash"]
    assert all(c["prompt_hash"] for c in (g, m, u))
    for c, _ in got:  # message content never reaches llm_calls
        assert "invoice 42" not in json.dumps(c) and '"hi"' not in json.dumps(c)


def test_bad_record_goes_to_the_dlq_and_its_neighbours_still_flow(kafka_settings, worker):
    marker = f"sess-{uuid.uuid4().hex}"
    calls_start = end_offsets(kafka_settings, LLM_CALLS)
    dlq_start = end_offsets(kafka_settings, OTLP_SPANS_DLQ)
    garbage = b"\x0a\xff\xff\xff garbage " + uuid.uuid4().bytes
    p = producer(kafka_settings)
    # Same partition, in order: good, bad, good.
    p.send(OTLP_SPANS, encode_spans(_spans(marker)[:1]).SerializeToString(),
           partition=0).get(timeout=30)
    bad = p.send(OTLP_SPANS, garbage, partition=0,
                 headers=[(otlp.TENANT_HEADER, b"acme")]).get(timeout=30)
    p.send(OTLP_SPANS, encode_spans(_spans(marker)[1:2]).SerializeToString(),
           partition=0).get(timeout=30)
    p.close()
    assert len(_calls_for(kafka_settings, calls_start, marker, 2)) == 2
    dead = read_records(kafka_settings, dlq_start,
                        lambda rs: any(r.value == garbage for r in rs), timeout_s=60)
    rec = next(r for r in dead if r.value == garbage)
    h = dict(rec.headers)
    assert h[dlq.ERROR_HEADER].startswith(b"decode: invalid OTLP protobuf")
    assert h[dlq.SOURCE_PARTITION_HEADER] == b"0"
    assert h[dlq.SOURCE_OFFSET_HEADER] == str(bad.offset).encode()
    assert h[otlp.TENANT_HEADER] == b"acme"

    env = {**os.environ}
    listed = subprocess.run([sys.executable, "-m", "pipeline", "dlq", "list", "--limit",
                             "1000"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"from otlp_spans[0]@{bad.offset}" in listed.stdout

    src_start = end_offsets(kafka_settings, OTLP_SPANS)
    dlq_before_replay = sum(end_offsets(kafka_settings, OTLP_SPANS_DLQ).values())
    rep = subprocess.run([sys.executable, "-m", "pipeline", "dlq", "replay"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert int(rep.stdout.split()[0]) >= 1
    back = read_records(kafka_settings, src_start,
                        lambda rs: any(r.value == garbage for r in rs), timeout_s=30)
    again = next(r for r in back if r.value == garbage)
    assert dict(again.headers)[dlq.REPLAYED_HEADER] == \
        f"{OTLP_SPANS_DLQ}[{rec.partition}]@{rec.offset}".encode()
    # Replay remembers: what was sent back is not sent again (only newer dead letters).
    dry = subprocess.run([sys.executable, "-m", "pipeline", "dlq", "replay", "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0
    # Only dead letters newer than the replay (e.g. the replayed twin, still garbage,
    # failing again) are left to replay.
    newer = sum(end_offsets(kafka_settings, OTLP_SPANS_DLQ).values()) - dlq_before_replay
    assert int(dry.stdout.split()[0]) <= newer
