"""Budgets end to end: generator `budget-burn` traffic -> a real ingest and worker ->
the team's daily budget alerts at 50, 80 and 100 % exactly once each, plus one
projected overrun, on llm_alerts; a use case above its unit-cost target alerts once,
one below it never, and the worker's count of units and their cost equals the truth."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import orjson
import pytest

from pipeline import clients
from pipeline.callbatch import pico
from pipeline.distinct import DistinctCount
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
    # Unit costs: the use case with the most units gets a target below its true cost
    # per unit at the end, the next one a target far above it.
    (over, o), (under, u) = sorted(truth.units.items(), key=lambda kv: -kv[1]["units"])[:2]
    assert o["units"] >= 20 and u["units"] >= 20, truth.units

    def per_unit(t: dict, factor: str) -> str:
        return str((t["list_cost_usd"] / t["units"] * Decimal(factor)).quantize(
            Decimal("0.000000001")))

    app_id = f"llmspend-test-{uuid.uuid4().hex[:8]}"
    env = {"LLMSPEND_HASH_KEY": HASH_KEY, "LLMSPEND_STREAM_APP_ID": app_id,
           "LLMSPEND_BUDGETS_LIMITS": json.dumps({f"team:{tenant}/{team}":
                                                  {"daily": str(limit)}}),
           "LLMSPEND_BUDGETS_UNIT_COSTS": json.dumps({over: per_unit(o, "0.5"),
                                                      under: per_unit(u, "20")}),
           "LLMSPEND_BUDGETS_UNIT_MIN_UNITS": "10",
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
        book = units_counted(kafka_settings, f"{app_id}-budgets", (over, under),
                             (o, u), 120)
        alerts = ours(read_records(kafka_settings, start, lambda _r: False, 5))
    firing = [a for a in alerts if a["state"] == "firing"
              and "cost_per_unit_usd" not in a["evidence"]]
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

    # Unit costs: the worker counted exactly the truth's units and their cost...
    for key, t in ((over, o), (under, u)):
        (period,) = book[f"unit:{key}"]
        assert DistinctCount.from_state(period["units"]).count() == t["units"]
        assert period["spent"] == pico(format(t["list_cost_usd"], "f"))
    # ... and alerted once for the use case over its target, never for the other.
    unit_alerts = [a for a in alerts if "cost_per_unit_usd" in a["evidence"]]
    assert [(a["subject"], a["state"]) for a in unit_alerts] == [
        (over.split("/", 1)[1], "firing")], [a["summary"] for a in unit_alerts]
    assert Decimal(unit_alerts[0]["evidence"]["cost_per_unit_usd"]) > \
        Decimal(unit_alerts[0]["evidence"]["target_usd"])


def units_counted(settings, topic: str, keys: tuple[str, ...], truths: tuple[dict, ...],
                  timeout_s: float) -> dict:
    """The budget book saved on ``topic`` once its unit periods reach the truth's units
    (the window task folds partials a minute or so after the calls)."""
    import time

    deadline = time.monotonic() + timeout_s
    book: dict = {}
    while time.monotonic() < deadline:
        records = clients.read_to_end(settings, topic, [0], timeout_s=30)
        if records:
            book = orjson.loads(records[-1].value)["book"]
            if all(sum(DistinctCount.from_state(p["units"]).count()
                       for p in book.get(f"unit:{k}", [])) >= t["units"]
                   for k, t in zip(keys, truths, strict=True)):
                return book
        time.sleep(2)
    return book
