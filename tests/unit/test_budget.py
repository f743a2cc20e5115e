"""Budget arithmetic (pipeline/budget.py): nesting, thresholds once each, projection,
unit cost, period boundaries in a time zone, state round trip."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import orjson
import pytest

from pipeline.budget import (
    BookConfig,
    BudgetBook,
    BudgetError,
    parse_budgets,
    period_bounds,
    unit_targets,
)
from schemas import alerts as A

UTC = dt.UTC


def row(t: dt.datetime, cost: str, *, tenant: str = "acme", team: str = "support",
        user: str = "u1", use_case: str = "triage", unit: str | None = None) -> dict:
    return {"tenant": tenant, "team": team, "user_id": user, "use_case": use_case,
            "unit_id": unit, "cost_usd": cost,
            "start_time": t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


def book(limits: dict, **cfg) -> BudgetBook:
    return BudgetBook(parse_budgets(limits), config=BookConfig(**cfg))


T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def spent_pcts(alerts: list[dict]) -> list[int]:
    return [a["evidence"]["threshold_pct"] for a in alerts
            if "threshold_pct" in a["evidence"]]


def spent_records(alerts: list[dict]) -> list[tuple[str, int]]:
    return [(a["evidence"]["budget"], a["evidence"]["threshold_pct"]) for a in alerts
            if "threshold_pct" in a["evidence"]]


def test_each_threshold_alerts_once_and_an_exhausted_budget_stays_quiet():
    b = book({"team:acme/support": {"daily": "10"}}, min_elapsed=1.0)
    alerts = []
    for i in range(40):                       # 40 x 0.50 USD = 200 % of the budget
        alerts += b.add([row(T0 + dt.timedelta(minutes=i), "0.50")])
    assert spent_records(alerts) == [("team:acme/support:daily", 50),
                                     ("team:acme/support:daily", 80),
                                     ("team:acme/support:daily", 100)]
    assert [a["severity"] for a in alerts] == ["info", "warning", "critical"]
    assert all(A.validate(a) == [] for a in alerts)
    assert len({a["dedup_key"] for a in alerts}) == 3


def test_nested_budgets_all_count_and_the_tightest_crosses_first():
    b = book({"tenant:acme": {"daily": "100"}, "team:acme/support": {"daily": "20"},
              "user:acme/u1": {"daily": "4"}}, thresholds=(100,), min_elapsed=1.0)
    alerts = []
    for i in range(10):
        alerts += b.add([row(T0 + dt.timedelta(minutes=i), "1.00", user=f"u{i % 2 + 1}")])
    # u1 spent 5 (4 = its limit crossed), the team 10 (not yet), the tenant 10.
    assert [a["evidence"]["budget"] for a in alerts] == ["user:acme/u1:daily"]
    for i in range(10):
        alerts += b.add([row(T0 + dt.timedelta(minutes=20 + i), "1.00", user="u2")])
    assert [a["evidence"]["budget"] for a in alerts] == ["user:acme/u1:daily",
                                                         "team:acme/support:daily"]
    other = b.add([row(T0, "50.00", tenant="globex")])
    assert other == []                        # another tenant's spend counts nowhere here


def test_a_burn_rate_that_overruns_alerts_once_before_the_budget_is_spent():
    b = book({"tenant:acme": {"daily": "24"}}, thresholds=(100,), min_elapsed=0.10)
    day = dt.datetime(2026, 3, 2, tzinfo=UTC)
    # 1 USD an hour is exactly on budget: nothing.
    alerts = []
    for h in range(1, 7):                     # each hour's spend, booked at its end
        alerts += b.add([row(day + dt.timedelta(hours=h), "1.00")])
    assert alerts == []
    # Then 3 USD an hour: on course for well over 24 by midnight.
    for h in range(7, 10):
        alerts += b.add([row(day + dt.timedelta(hours=h), "3.00")])
    proj = [a for a in alerts if "projected_usd" in a["evidence"]]
    assert len(proj) == 1 and proj[0]["severity"] == "warning"
    assert "on course" in proj[0]["summary"] and "this day," in proj[0]["summary"]


def test_period_boundaries_follow_the_time_zone_and_resolve_the_old_period():
    paris = ZoneInfo("Europe/Paris")
    start, end = period_bounds(int(dt.datetime(2026, 3, 29, 12, tzinfo=paris).timestamp()
                                   * 1e6), "daily", paris)
    assert (end - start) / 3.6e9 == 23        # the spring-forward day has 23 hours
    m0, m1 = period_bounds(int(dt.datetime(2026, 2, 10, tzinfo=UTC).timestamp() * 1e6),
                           "monthly", ZoneInfo("UTC"))
    assert (m1 - m0) / 8.64e10 == 28
    b = book({"team:acme/support": {"daily": "1"}}, tz="Europe/Paris", min_elapsed=1.0)
    late_evening = dt.datetime(2026, 3, 2, 23, 30, tzinfo=paris)
    fired = b.add([row(late_evening, "1.00")])
    assert len(fired) == 3                    # 50, 80, 100 % in one call
    after_midnight = dt.datetime(2026, 3, 3, 0, 10, tzinfo=paris)
    out = b.add([row(after_midnight, "0.10")])
    assert sorted(a["state"] for a in out) == ["resolved"] * 3   # a new day: reset
    assert b.add([row(after_midnight, "0.50")])[0]["evidence"]["threshold_pct"] == 50


def test_unit_cost_breach_alerts_once_per_period():
    b = BudgetBook([], unit_targets({"acme/triage": "0.05"}), BookConfig(min_units=5))
    alerts = []
    for i in range(30):
        alerts += b.add([row(T0 + dt.timedelta(minutes=i), "0.08", unit=f"TCK-{i}")])
    assert len(alerts) == 1 and "per unit" in alerts[0]["summary"]
    assert alerts[0]["evidence"]["units"] == 5


def test_unit_cost_reads_the_unit_view_and_a_unit_seen_twice_is_one_unit():
    from pipeline.distinct import unit_hash
    from schemas.aggregates import rfc3339_ms

    b = BudgetBook([], unit_targets({"acme/triage": "0.05"}), BookConfig(min_units=4))
    ms = int(T0.timestamp() * 1000)

    def minute(m: int, cost: str, tickets: range, **over) -> dict:
        hashes = sorted(unit_hash("ticket", f"TCK-{i}") for i in tickets)
        return {"view": "unit", "tenant": "acme", "use_case": "triage",
                "unit_type": "ticket", "window_start": rfc3339_ms(ms + m * 60_000),
                "cost_usd": cost, "units": len(hashes), "unit_hashes": hashes, **over}

    # Four tickets worked on in two minutes: 0.16 USD for 4 tickets, not 8.
    assert b.add_partials([minute(0, "0.08", range(4)), minute(1, "0.08", range(4))]) == []
    # Other views and other use cases never count; a fifth, costly ticket breaches.
    out = b.add_partials([minute(2, "5", range(9, 20), view="group"),
                          minute(2, "5", range(9, 20), use_case="other"),
                          minute(2, "0.20", range(4, 5))])
    (alert,) = out
    ev = alert["evidence"]
    assert (ev["units"], ev["spent_usd"], ev["cost_per_unit_usd"]) == (5, "0.360000",
                                                                       "0.072000")
    assert ev["units_exact"] and alert["subject_kind"] == "use_case"
    assert b.add_partials([minute(3, "1", range(5, 6))]) == []      # once per day
    nxt = dt.datetime(2026, 3, 3, 0, 1, tzinfo=dt.UTC)
    resolved = b.add([row(nxt, "0.01", unit="TCK-1")])
    assert [a["state"] for a in resolved] == ["resolved"]


def test_state_round_trips_and_a_restart_does_not_realert():
    limits = {"team:acme/support": {"daily": "10"}}
    b = book(limits, min_elapsed=1.0)
    first = []
    for i in range(12):
        first += b.add([row(T0 + dt.timedelta(minutes=i), "0.50")])
    assert spent_records(first) == [("team:acme/support:daily", 50)]
    saved = orjson.loads(orjson.dumps(b.to_state()))
    again = book(limits, min_elapsed=1.0)
    again.load_state(saved)
    rest = []
    for i in range(12, 24):
        rest += again.add([row(T0 + dt.timedelta(minutes=i), "0.50")])
    assert spent_records(rest) == [("team:acme/support:daily", 80),
                                   ("team:acme/support:daily", 100)]


@pytest.mark.parametrize("limits", [{"team:acme": {"daily": "1"}},
                                    {"tenant:acme": {"weekly": "1"}},
                                    {"user:acme/u1": {"daily": "-1"}},
                                    {"planet:acme": {"daily": "1"}}])
def test_bad_budget_definitions_are_rejected_with_their_name(limits):
    with pytest.raises(BudgetError, match=next(iter(limits)).split(":")[0]):
        parse_budgets(limits)


@pytest.mark.parametrize("targets", [{"acme": "0.05"}, {"acme/triage": "cheap"},
                                     {"acme/triage": "0"}, {"/triage": "1"}])
def test_bad_unit_cost_targets_are_rejected_with_their_name(targets):
    with pytest.raises(BudgetError, match=next(iter(targets))):
        unit_targets(targets)


def test_partials_count_each_call_once_per_budget_level():
    from schemas.aggregates import rfc3339_ms

    ms = int(T0.timestamp() * 1000)

    def part(view: str, cost: str, **keys) -> dict:
        return {"view": view, "tenant": "acme", "window_start": rfc3339_ms(ms),
                "cost_usd": cost, **keys}

    b = book({"tenant:acme": {"daily": "10"}, "team:acme/support": {"daily": "10"},
              "user:acme/u1": {"daily": "10"}}, thresholds=(50,), min_elapsed=1.0)
    # The same 6 USD of calls, once in each view.
    out = b.add_partials([part("group", "6.0", team="support", use_case="triage"),
                          part("user", "6.0", team="support", user_id="u1")])
    assert sorted(a["evidence"]["budget"] for a in out) == [
        "team:acme/support:daily", "tenant:acme:daily", "user:acme/u1:daily"]
    assert {a["evidence"]["spent_usd"] for a in out} == {"6.000000"}   # not 12


def test_the_store_counts_each_llm_agg_1m_offset_once_across_a_restart():
    from pipeline.config import load_settings
    from pipeline.stream.detect_stage import BudgetStore
    from schemas.aggregates import rfc3339_ms

    settings = load_settings(env={"LLMSPEND_BUDGETS_LIMITS":
                                  '{"tenant:acme": {"daily": "10"}}'})
    ms = int(T0.timestamp() * 1000)
    part = {"view": "group", "tenant": "acme", "cost_usd": "6.0",
            "window_start": rfc3339_ms(ms), "window_end": rfc3339_ms(ms + 60_000)}
    store = BudgetStore(settings)
    store.offer(0, 0, part)
    assert spent_pcts(store.fold()) == [50]
    saved = orjson.loads(orjson.dumps(store.state()))
    again = BudgetStore(settings)
    again.book.load_state(saved["book"])
    again.positions = {int(k): v for k, v in saved["positions"].items()}
    again.offer(0, 0, part)                  # re-read after the restart: not counted
    assert not again.dirty
    again.offer(0, 1, part)
    assert spent_pcts(again.fold()) == [80, 100]
