"""The generator end to end: SDK -> OTLP/HTTP -> a real `llmspend ingest` (bearer-token
tenant) -> Kafka -> a real `llmspend worker` -> `llm_calls` holds exactly the truth."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from pipeline.traffic.generator import Options, generate
from schemas.topics import LLM_CALLS
from tests.integration.kafka_helpers import end_offsets, read_records, receiver, worker_process

pytestmark = pytest.mark.integration
HASH_KEY = "generate-e2e-hash-key-0123456789abcdef"


@pytest.fixture(scope="module")
def worker(kafka_settings, tmp_path_factory):
    """A real `llmspend worker` process against the test broker."""
    with worker_process(tmp_path_factory.mktemp("generate-worker-state"),
                        {"LLMSPEND_HASH_KEY": HASH_KEY}) as proc:
        yield proc


def test_generated_traffic_lands_exactly_the_truth(kafka_settings, worker):
    tenant = f"gen-{uuid.uuid4().hex[:12]}"
    token = f"tok-{uuid.uuid4().hex}"
    start = end_offsets(kafka_settings, LLM_CALLS)
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep:
        res = generate(Options(seed=42, calls=300, scenarios=("runaway-loop", "retry-storm",
                                                              "unknown-model")),
                       protocol="http", endpoint=ep["http"], tenant_tokens={tenant: token},
                       max_rate=True)
    t = res.truth
    assert res.emitted.failed == 0 and res.emitted.exported == t.spans_emitted
    assert t.duplicate_spans > 0 and t.totals.unpriced_calls > 0

    calls: dict[str, dict] = {}

    def done(records) -> bool:
        for r in records[done.seen:]:
            for line in r.value.splitlines():
                c = json.loads(line)
                if c["tenant"] == tenant:
                    calls[c["call_id"]] = c
        done.seen = len(records)
        return len(calls) >= t.calls

    done.seen = 0
    read_records(kafka_settings, start, done, timeout_s=60)
    assert len(calls) == t.calls
    priced = [c for c in calls.values() if c["cost_usd"] is not None]
    assert sum(Decimal(c["cost_usd"]) for c in priced) == t.list_cost_usd
    assert sum(Decimal(c["list_cost_usd"]) for c in priced) == t.list_cost_usd
    assert len(calls) - len(priced) == t.totals.unpriced_calls
    assert sum(1 for c in calls.values() if c["kind"] == "tool") == t.totals.tool_calls
    run = next(e for e in t.scenarios if e["scenario"] == "runaway-loop")
    tools = [c for c in calls.values() if c["session_id"] in run["session_ids"]
             and c["kind"] == "tool"]
    assert len(tools) == run["signature"]["repeated_tool_calls"]
