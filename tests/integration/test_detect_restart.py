"""Session detector state survives a crash: a worker killed with SIGKILL mid-loop is
replaced by one that reads the session changelog, so the loop's incident escalates once
(warning, then critical, one dedup_key), is never re-fired, and resolves once."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
import uuid

import pytest

from pipeline import clients
from pipeline.normalise import murmur2_partition, partition_key
from pipeline.stream.normalise_stage import calls_partitions
from schemas import alerts as A
from schemas import calls as C
from schemas.topics import LLM_ALERTS, LLM_CALLS
from tests.integration.kafka_helpers import alert_records, end_offsets, read_records, worker_process

pytestmark = pytest.mark.integration


def _row(tenant: str, session: str, n: int, t: dt.datetime, kind: str) -> dict:
    row = dict.fromkeys(C.NAMES)
    row.update({
        C.CALL_ID: uuid.uuid4().hex, C.KIND: kind, C.TENANT: tenant,
        C.SERVICE: "restart-test", C.TRACE_ID: "cd" * 16, C.SPAN_ID: f"{n:016x}",
        C.SESSION_ID: session, C.START_TIME: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        C.END_TIME: (t + dt.timedelta(milliseconds=300)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"),
        C.LATENCY_MS: 300.0, C.STATUS: "ok", C.PRICED: False, C.BATCH: False,
        C.CONVENTION: "semconv"})
    if kind == C.KIND_TOOL:
        row.update({C.TOOL_NAME: "search_kb", C.TOOL_ARGS_HASH: "args-1"})
    else:
        row.update({C.REQUEST_MODEL: "gpt-4o", C.INPUT_TOKENS: 100, C.OUTPUT_TOKENS: 10,
                    C.LAST_MESSAGE_HASH: f"msg-{n}"})
    return row


def _send_rounds(settings, tenant: str, session: str, first: int, rounds: int) -> None:
    """``rounds`` loop iterations (an LLM call, then the same tool call), one record."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for i in range(first, first + rounds):
        t = now + dt.timedelta(seconds=i - first)
        rows += [_row(tenant, session, 2 * i, t, C.KIND_LLM),
                 _row(tenant, session, 2 * i + 1, t + dt.timedelta(milliseconds=500),
                      C.KIND_TOOL)]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    part = murmur2_partition(partition_key(tenant, session), calls_partitions(settings))
    p = clients.producer(settings)
    try:
        p.send(LLM_CALLS, value=body, partition=part,
               headers=[("content-type", b"application/x-ndjson")]).get(timeout=30)
    finally:
        p.close()


def test_a_killed_worker_resumes_the_incident_without_refiring(kafka_settings,
                                                              tmp_path_factory):
    tenant = f"rst-{uuid.uuid4().hex[:10]}"
    session = f"sess-{uuid.uuid4().hex[:10]}"
    key = A.dedup_key("session", tenant, session)
    state = tmp_path_factory.mktemp("detect-restart")
    env = {"LLMSPEND_STREAM_APP_ID": f"llmspend-restart-{uuid.uuid4().hex[:8]}",
           "LLMSPEND_DETECT_SESSION_QUIET_S": "4",
           "LLMSPEND_STREAM_STAGES": "normalise,detect"}
    start = end_offsets(kafka_settings, LLM_ALERTS)

    def ours(records) -> list[dict]:
        return alert_records(records, dedup_key=key)

    with worker_process(state, env) as first:
        _send_rounds(kafka_settings, tenant, session, 0, 4)     # 4 repeats: warning
        got = ours(read_records(kafka_settings, start, lambda r: len(ours(r)) >= 1, 60))
        assert [(a["severity"], a["state"]) for a in got] == [("warning", "firing")]
        time.sleep(1.5)   # let the changelog write land (it precedes the alert anyway)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    with worker_process(state, env):
        _send_rounds(kafka_settings, tenant, session, 4, 3)     # 7 repeats: critical
        got = ours(read_records(
            kafka_settings, start,
            lambda r: any(a["state"] == "resolved" for a in ours(r)), 90))
        time.sleep(3)
        got = ours(read_records(kafka_settings, start, lambda _r: False, 3))

    assert [(a["severity"], a["state"]) for a in got] == [
        ("warning", "firing"), ("critical", "firing"), ("critical", "resolved")]
    assert got[1]["evidence"]["repeated_tool_calls"] == 6
    assert got[2]["evidence"]["steps"] == 14       # nothing lost, nothing counted twice
