"""GET /v1/verdict end to end: a looping agent's spans through a real `llmspend ingest`
and a real worker flip its session's verdict to block; other sessions stay allow; a
token never sees another tenant's verdicts."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tests.integration.kafka_helpers import receiver, worker_process
from tests.sample_spans import emit_loop as _emit_loop

pytestmark = pytest.mark.integration


def verdict(base: str, token: str, **query) -> tuple[int, dict]:
    url = f"{base}/v1/verdict?" + "&".join(f"{k}={v}" for k, v in query.items())
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_runaway_session_is_blocked_and_nothing_else(kafka_settings, tmp_path):
    a, b = f"va-{uuid.uuid4().hex[:8]}", f"vb-{uuid.uuid4().hex[:8]}"
    ta, tb = f"tok-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    session = f"loop-{uuid.uuid4().hex[:8]}"
    tokens = {"LLMSPEND_INGEST_TOKENS": f"{ta}={a},{tb}={b}"}
    with worker_process(tmp_path, {"LLMSPEND_STREAM_STAGES": "normalise,detect"}), \
            receiver(tokens) as ep:
        base = ep["http"]
        deadline = time.monotonic() + 30
        while verdict(base, ta, session=session)[0] == 503:   # controls still loading
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert verdict(base, ta, session=session)[1]["verdict"] == "allow"
        _emit_loop(OTLPSpanExporter(endpoint=ep["traces"],
                                    headers={"Authorization": f"Bearer {ta}"}), session)
        deadline = time.monotonic() + 60
        while (ans := verdict(base, ta, session=session)[1])["verdict"] != "block":
            assert time.monotonic() < deadline, ans
            time.sleep(0.2)
        assert ans["incidents"][0]["dedup_key"] == f"session/{a}/{session}"
        assert "running away" in ans["reasons"][0]
        assert verdict(base, ta, session=f"{session}-other")[1]["verdict"] == "allow"
        # Tenant isolation: b's token sees b's (empty) world, and may not ask for a's.
        assert verdict(base, tb, session=session)[1]["verdict"] == "allow"
        assert verdict(base, tb, session=session, tenant=a)[0] == 403
        assert verdict(base, "not-a-token", session=session)[0] == 401
        assert verdict(base, ta)[0] == 400
