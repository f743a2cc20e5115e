"""A worker stopped (SIGTERM) while it drains a backlog of ``otlp_spans`` exits cleanly,
and the next worker of its group produces every call it did not: what the first one
committed it had produced (pipeline/stream/normalise_stage.to_the_end)."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from pipeline import otlp
from pipeline.clients import producer
from schemas import calls as C
from schemas.topics import LLM_CALLS, OTLP_SPANS
from tests.integration.kafka_helpers import end_offsets, read_records, worker_process
from tests.sample_spans import sample_request

pytestmark = pytest.mark.integration
RECORDS, CALLS_PER_RECORD = 150, 160


def _ids_of(tenant: str, records) -> set[str]:
    ids = set()
    for r in records:
        for line in (r.value or b"").splitlines():
            call = json.loads(line)
            if call[C.TENANT] == tenant:
                ids.add(call[C.CALL_ID])
    return ids


def test_a_worker_stopped_mid_backlog_leaves_nothing_for_its_successor_to_lose(
        kafka_settings, tmp_path):
    tenant = f"stop-{uuid.uuid4().hex[:8]}"
    env = {"LLMSPEND_HASH_KEY": "stop-test-hash-key-0123456789abcdef",
           "LLMSPEND_STREAM_APP_ID": f"llmspend-test-{uuid.uuid4().hex[:8]}",
           "LLMSPEND_STREAM_STAGES": "normalise"}
    bodies = [sample_request(CALLS_PER_RECORD) for _ in range(RECORDS)]
    total = RECORDS * CALLS_PER_RECORD
    start = end_offsets(kafka_settings, LLM_CALLS)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with worker_process(tmp_path / "a", env) as first:     # pins the group's offsets
        prod = producer(kafka_settings)
        for body in bodies:
            prod.send(OTLP_SPANS, body, headers=[(otlp.TENANT_HEADER, tenant.encode())])
        prod.flush()
        prod.close()
        # Stop it as soon as its first calls are out: mid-backlog, most likely mid-batch.
        read_records(kafka_settings, start, lambda recs: bool(_ids_of(tenant, recs)),
                     timeout_s=120)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, (tmp_path / "a" / "worker.log").read_text()[-3000:]
    before = _ids_of(tenant, read_records(kafka_settings, start, lambda _r: False,
                                          timeout_s=3))
    t0 = time.monotonic()
    with worker_process(tmp_path / "b", env):              # resumes at the commits
        ids = _ids_of(tenant, read_records(
            kafka_settings, start, lambda recs: len(_ids_of(tenant, recs)) >= total,
            timeout_s=180))
    assert len(ids) == total, (len(before), len(ids), time.monotonic() - t0)
