"""Budgets end to end: generator `budget-burn` traffic -> a real ingest and worker ->
the team's daily budget alerts at 50, 80 and 100 % exactly once each, plus one
projected overrun, on llm_alerts; the team's verdict turns to block."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest

from pipeline.traffic.generator import Options, generate
from schemas.topics import LLM_ALERTS
from tests.integration.kafka_helpers import (
    alert_records,
    end_offsets,
    read_records,
    receiver,
    worker_process,
)

pytestmark = pytest.mark.integration
HASH_KEY = "budget-e2e-hash-key-0123456789abcdef"


def midday_zone() -> str:
    """An Etc/GMT zone where it is about noon now: a day far from both its ends, so the
    burn-rate projection has a stable elapsed share whatever time CI runs."""
    n = dt.datetime.now(dt.UTC).hour - 12          # Etc/GMT+N is UTC-N
    return f"Etc/GMT{'+' if n >= 0 else '-'}{abs(n)}"


def test_budget_burn_alerts_each_threshold_once_and_projects_the_overrun(
        kafka_settings, tmp_path):
    tenant = f"bud-{uuid.uuid4().hex[:8]}"
    token = f"tok-{uuid.uuid4().hex}"
    opts = Options(seed=3, calls=600, scenarios=("budget-burn",),
                   service_prefix=f"{uuid.uuid4().hex[:6]}-")
    truth = generate(opts, dry_run=True, tenant_tokens={tenant: token}).truth
    team = next(e for e in truth.scenarios if e["scenario"] == "budget-burn")["signature"][
        "team"]
    spend = truth.by_team[team].list_cost_usd
    limit = (spend * Decimal("0.9")).quantize(Decimal("0.000001"))
    env = {"LLMSPEND_HASH_KEY": HASH_KEY,
           "LLMSPEND_BUDGETS_LIMITS": json.dumps({f"team:{tenant}/{team}":
                                                  {"daily": str(limit)}}),
           "LLMSPEND_BUDGETS_TIMEZONE": midday_zone()}
    start = end_offsets(kafka_settings, LLM_ALERTS)
    with worker_process(tmp_path, env), \
            receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                      "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep:
        res = generate(opts, protocol="http", endpoint=ep["http"],
                       tenant_tokens={tenant: token}, max_rate=True)
        assert res.emitted.failed == 0

        def ours(records) -> list[dict]:
            return alert_records(records, tenant=tenant, detector="budget")

        read_records(kafka_settings, start, lambda r: any(
            a["evidence"].get("threshold_pct") == 100 for a in ours(r)), 120)
        alerts = ours(read_records(kafka_settings, start, lambda _r: False, 5))
    firing = [a for a in alerts if a["state"] == "firing"]
    pcts = sorted(a["evidence"]["threshold_pct"] for a in firing
                  if "threshold_pct" in a["evidence"])
    assert pcts == [50, 80, 100], [a["summary"] for a in alerts]
    assert [a["severity"] for a in sorted(
        (a for a in firing if "threshold_pct" in a["evidence"]),
        key=lambda a: a["evidence"]["threshold_pct"])] == ["info", "warning", "critical"]
    projected = [a for a in firing if "projected_usd" in a["evidence"]]
    assert len(projected) == 1
    assert all(a["subject_kind"] == "team" and a["subject"] == team for a in firing)
    assert Decimal(firing[-1]["evidence"]["limit_usd"]) == limit
