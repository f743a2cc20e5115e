"""The demo's pure parts: its plan and budget, folding what reaches Kafka, judging the
outcome against the truth, and the live view. (The whole demo against a real broker:
tests/integration/test_demo.py.)"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import orjson
import pytest
from rich.console import Console

from pipeline import demo
from pipeline.config import load_settings
from schemas import alerts as A
from schemas import calls as C

NOW = dt.datetime(2026, 11, 29, 17, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def dp() -> demo.DemoPlan:
    return demo.prepare(load_settings({}), duration_s=12, now=NOW)


def test_the_plan_has_both_scenarios_and_a_budget_its_burn_must_cross(dp):
    assert dp.tenant.startswith("demo-") and dp.truth.calls > 1000
    assert {e["scenario"] for e in dp.truth.scenarios} == set(demo.SCENARIOS)
    spend = dp.truth.by_team[dp.budget_team].list_cost_usd
    assert dp.budget_usd < spend < dp.budget_usd * 2       # crosses 100 %, not 200 %
    assert {sp.tenant for sp in dp.plan.spans} == {dp.tenant}
    assert dp.plan.options.rate == demo.RATE


def test_every_run_is_its_own_tenant_with_its_own_token():
    a, b = (demo.prepare(load_settings({}), duration_s=10, now=NOW) for _ in range(2))
    assert a.tenant != b.tenant and a.token != b.token
    assert a.truth.calls == b.truth.calls                  # same seed, same traffic


def test_service_env_adds_the_demo_beside_what_is_configured(dp):
    settings = load_settings({"LLMSPEND_INGEST_TOKENS": "t1=acme",
                              "LLMSPEND_BUDGETS_LIMITS": '{"tenant:acme": {"daily": "5"}}'})
    env = dp.service_env(settings)
    assert env["LLMSPEND_INGEST_TOKENS"] == f"t1=acme,{dp.token}={dp.tenant}"
    limits = json.loads(env["LLMSPEND_BUDGETS_LIMITS"])
    assert limits["tenant:acme"] == {"daily": "5"}
    assert limits[f"team:{dp.tenant}/{dp.budget_team}"] == {"daily": str(dp.budget_usd)}
    assert "LLMSPEND_BUDGETS_TIMEZONE" not in env          # configured budgets keep theirs
    assert demo.prepare(load_settings({}), 10, now=NOW).service_env(load_settings({}))[
        "LLMSPEND_BUDGETS_TIMEZONE"] == "Etc/GMT+5"        # 17:30 UTC is 12:30 there


@pytest.mark.parametrize("hour", range(24))
def test_midday_zone_puts_noon_within_an_hour(hour):
    from zoneinfo import ZoneInfo

    now = NOW.replace(hour=hour)
    assert now.astimezone(ZoneInfo(demo.midday_zone(now))).hour == 12


def _line(call_id: str, tenant: str, team: str, cost: str | None, latency: float,
          model: str = "gpt-4o") -> bytes:
    return orjson.dumps({C.CALL_ID: call_id, C.TENANT: tenant, C.TEAM: team,
                         C.COST_USD: cost, C.KIND: "llm", C.LATENCY_MS: latency,
                         C.RESPONSE_MODEL: model})


def test_the_follower_counts_each_call_once_and_only_its_tenant():
    f = demo.Follower("demo-x")
    batch = b"\n".join([_line("a", "demo-x", "t1", "0.10", 100),
                        _line("b", "demo-x", "t1", None, 300),
                        _line("c", "other", "t1", "5", 1)])
    f.fold_calls(batch, 1.0)
    f.fold_calls(_line("a", "demo-x", "t1", "0.10", 100), 2.0)     # a replayed twin
    snap = f.snapshot()
    assert snap["calls"] == 2 and snap["unpriced"] == 1
    assert snap["cost_by_team"] == {"t1": Decimal("0.10")}
    assert snap["p95_by_model"]["gpt-4o"][0] == 2


def _alert(**kw) -> dict:
    base = {A.ID: kw.pop("id", "1"), A.TENANT: "demo-x", A.STATE: A.FIRING,
            A.SEVERITY: A.WARNING, A.DETECTOR: "runaway_loop", A.SUBJECT_KIND: "session",
            A.SUBJECT: "s1", A.SUMMARY: "loop", A.EVIDENCE: {},
            A.LAST_SEEN: "2026-11-29T17:30:00Z", A.EMITTED_AT: "2026-11-29T17:30:01.500Z"}
    return {**base, **kw}


def test_alerts_are_kept_once_per_id_and_judged_against_the_truth(dp):
    f = demo.Follower(dp.tenant)
    for a in (_alert(id="w", tenant=dp.tenant), _alert(id="w", tenant=dp.tenant),
              _alert(id="other", tenant="someone-else", severity=A.CRITICAL)):
        f.fold_alert(json.dumps(a).encode(), NOW.timestamp() + 2)
    f.fold_alert(b"not json", 0)
    alerts = f.snapshot()["alerts"]
    assert len(alerts) == 1
    problems = demo.outcome_problems(dp, dp.truth.calls, dp.truth.list_cost_usd, alerts)
    assert problems == ["no critical alert for the runaway session",
                        "budget crossings [], expected [50, 80, 100]"]
    for i, pct in enumerate((50, 80, 100)):
        alerts.append((0, _alert(id=f"b{i}", tenant=dp.tenant, detector="budget",
                                 subject_kind="team", subject=dp.budget_team,
                                 evidence={"threshold_pct": pct})))
    alerts.append((0, _alert(id="c", tenant=dp.tenant, severity=A.CRITICAL)))
    assert demo.outcome_problems(dp, dp.truth.calls, dp.truth.list_cost_usd, alerts) == []
    assert demo.outcome_problems(dp, dp.truth.calls - 1, Decimal(0), alerts) == [
        f"{dp.truth.calls - 1} calls in the lake, {dp.truth.calls} generated",
        f"lake cost 0 USD, truth {dp.truth.list_cost_usd} USD"]


def test_alert_latency_runs_from_the_evidence_to_the_record():
    a = _alert()
    seen = dt.datetime(2026, 11, 29, 17, 30, 3, tzinfo=dt.UTC).timestamp()
    assert demo.alert_latency_s(seen, a) == pytest.approx(1.5)   # emitted before seen
    assert demo.alert_latency_s(seen - 2.5, a) == pytest.approx(0.5)


def test_the_live_view_shows_progress_spend_latency_and_alerts(dp):
    f = demo.Follower(dp.tenant)
    f.fold_calls(b"\n".join([_line("a", dp.tenant, "growth", "1.25", 800),
                             _line("b", dp.tenant, "legal-ops", "0.50", 2000, "claude")]), 1)
    f.fold_alert(json.dumps(_alert(tenant=dp.tenant, severity=A.CRITICAL,
                                   summary="Session s1 is running away")).encode(),
                 NOW.timestamp() + 3)
    progress = {"phase": "replaying", "sent": 50, "total": 200, "spans_per_s": 321.0,
                "lake_calls": 7}
    console = Console(record=True, width=160, color_system=None)
    console.print(demo.view(dp, f.snapshot(), progress))
    text = console.export_text()
    for expected in ("replaying", "50/200 spans (25 %)", "321 spans/s ingested",
                     f"2/{dp.truth.calls:,} calls priced", "$1.75 so far", "lake 7 calls",
                     "growth", "$1.2500", "claude", "2,000", "critical", "runaway_loop",
                     "Session s1 is running away", "1.5 s"):
        assert expected in text, expected
    line = demo.status_line(dp, f.snapshot(), progress)
    assert line.startswith("replaying sent 50/200 spans (321/s), priced 2/")
