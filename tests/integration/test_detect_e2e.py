"""Detection end to end: generator -> a real `llmspend ingest` -> Kafka -> a real
`llmspend worker` -> `llm_alerts`. The runaway-loop session is ONE incident (warning at
the 3rd identical tool call, critical at the 6th, then resolved when it goes quiet), the
bad deploy is ONE spend anomaly, and the rest of the traffic raises nothing."""

from __future__ import annotations

import uuid

import pytest

from pipeline.traffic.generator import Options, generate
from schemas import alerts as A
from schemas.topics import LLM_ALERTS
from tests.integration.kafka_helpers import (
    alert_records,
    end_offsets,
    read_records,
    receiver,
    worker_process,
)

pytestmark = pytest.mark.integration
HASH_KEY = "detect-e2e-hash-key-0123456789abcdef"
MINUTES = 40


def test_runaway_loop_and_bad_deploy_raise_one_incident_each(kafka_settings,
                                                              tmp_path_factory):
    tenant = f"det-{uuid.uuid4().hex[:12]}"
    token = f"tok-{uuid.uuid4().hex}"
    prefix = f"{uuid.uuid4().hex[:6]}-"
    start = end_offsets(kafka_settings, LLM_ALERTS)
    env = {"LLMSPEND_HASH_KEY": HASH_KEY}
    with worker_process(tmp_path_factory.mktemp("detect-worker"), env), \
            receiver({**env, "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep:
        # 40 minutes of traffic at the trace's own pace, backfilled to end now.
        res = generate(Options(seed=5, rate=1.0, duration_s=MINUTES * 60.0,
                               scenarios=("runaway-loop", "bad-deploy"),
                               service_prefix=prefix),
                       protocol="http", endpoint=ep["http"], tenant_tokens={tenant: token},
                       max_rate=True)
        assert res.emitted.failed == 0
        runaway = next(e for e in res.truth.scenarios if e["scenario"] == "runaway-loop")
        (session,) = runaway["session_ids"]

        def ours(records) -> list[dict]:
            return alert_records(records, tenant=tenant)

        def done(records) -> bool:
            got = ours(records)
            return (any(a["detector"] == "spend_anomaly" for a in got)
                    and any(a["subject"] == session and a["state"] == A.RESOLVED
                            for a in got))

        read_records(kafka_settings, start, done, timeout_s=120)
        # Then a few seconds more: anything else the detectors still have to say.
        alerts = ours(read_records(kafka_settings, start, lambda _r: False, timeout_s=6))

    for a in alerts:
        assert A.validate(a) == [], a
    by_key: dict[str, list[dict]] = {}
    for a in alerts:
        by_key.setdefault(a["dedup_key"], []).append(a)
    summary = {k: [(a["severity"], a["state"]) for a in v] for k, v in by_key.items()}

    loop_key = A.dedup_key("session", tenant, session)
    spend_key = A.dedup_key("spend_anomaly", tenant, f"{prefix}support-assistant",
                            "customer-support")
    assert set(by_key) == {loop_key, spend_key}, summary
    loop = by_key[loop_key]
    assert [(a["severity"], a["state"]) for a in loop] == [
        ("warning", "firing"), ("critical", "firing"), ("critical", "resolved")], summary
    assert loop[0]["evidence"]["repeated_tool_calls"] == 3
    assert loop[1]["evidence"]["repeated_tool_calls"] == 6
    assert loop[0]["evidence"]["repeated_tool"] == runaway["signature"]["tool_name"]
    assert loop[0]["detector"] == "runaway_loop" and loop[0]["subject_kind"] == "session"
    assert loop[0]["evidence"]["trace_id"] and loop[0]["evidence"]["last_span_id"]
    assert len({a["id"] for a in loop}) == 3
    spend = by_key[spend_key]
    assert spend[0]["state"] == "firing" and spend[0]["detector"] == "spend_anomaly"
    assert all(a["state"] == "firing" for a in spend)
    assert [a["severity"] for a in spend] in (["warning"], ["critical"],
                                              ["warning", "critical"]), summary
