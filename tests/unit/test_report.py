"""The KPI report (pipeline/report.py) on a lake of real generated traffic: two days
(2026-11-09 and 2026-11-10, fixed seeds and hash key) landed by pipeline.lake, no
broker. Every KPI is checked against an independent computation: the Parquet files read
with pyarrow (not the DuckDB views), sums in Python with Decimal/Fraction, latency
quantiles with pipeline.sketch (numba) and prices from pipeline.pricing (not the
prices view). The markdown of the day's report is the golden file tests/golden/report.md
(LLMSPEND_UPDATE_GOLDEN=1 rewrites it)."""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
import json
import math
import os
from collections import defaultdict
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import analytics, sketch
from pipeline import report as R
from pipeline.analytics import connect
from pipeline.budget import parse_budgets
from pipeline.config import load_settings
from pipeline.pricing import load_catalog
from pipeline.traffic import offline
from pipeline.traffic.offline import land_lake, llm_calls_records
from pipeline.traffic.plan import Options
from schemas.latency_buckets import N_BUCKETS
from tests.unit.lake_rows import calls_once, latest_partials

UTC = dt.UTC
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "report.md"
DAY, PREVIOUS_DAY = "2026-11-10", "2026-11-09"
D9 = dt.datetime(2026, 11, 9, tzinfo=UTC)
D10 = dt.datetime(2026, 11, 10, tzinfo=UTC)
D11 = dt.datetime(2026, 11, 11, tzinfo=UTC)
NOW = D11
#: Day two's contract summaries are recorded at 1 in 4 (a sampling attribute on their
#: spans, read by the real normaliser).
SAMPLED_SERVICE, SAMPLED_RATIO = "contract-summariser", 0.25
BUDGETS = {
    "tenant:acme": {"monthly": "100"},
    "team:acme/customer-support": {"daily": "1.50", "monthly": "30"},
    "team:globex/growth": {"daily": "0.2"},
    "use_case:globex/ticket-triage": {"daily": "0.5"},
}
INFRA, OPS = "310", "45"
ENV = {
    "LLMSPEND_HASH_KEY": "report-test-key-0123456789abcdef",
    "LLMSPEND_PRICING_OVERRIDES": json.dumps({"acme": {"discount": "0.20"}}),
    "LLMSPEND_BUDGETS_LIMITS": json.dumps(BUDGETS),
    "LLMSPEND_REPORT_INFRA_USD_PER_MONTH": INFRA,
    "LLMSPEND_REPORT_OPS_USD_PER_MONTH": OPS,
}


def q12(x: Fraction | Decimal | int) -> Decimal:
    """The test's own rounding: exact value to 12 places, half-even."""
    return Decimal(round(Fraction(x) * 10**12)).scaleb(-12)


def frac_div(a: Any, b: Any) -> Decimal | None:
    return None if not b else q12(Fraction(a) / Fraction(b))


# ------------------------------------------------------------------ the lake


@pytest.fixture(scope="module")
def settings():
    return load_settings(env=ENV)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory, settings):
    """Day one: plain traffic. Day two: an unknown model (unpriced calls), a retry
    storm (twins), and sampled contract summaries."""
    real_plan = offline.plan

    def sampled_plan(opts: Options):
        p = real_plan(opts)
        if opts.seed == 12:
            for sp in p.spans:
                if sp.service == SAMPLED_SERVICE:
                    sp.attributes["llmspend.sampling_ratio"] = SAMPLED_RATIO
        return p

    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(offline, "plan", sampled_plan)
        for start, seed, n, scenarios in (
                (D9 + dt.timedelta(hours=10), 11, 1200, ()),
                (D10 + dt.timedelta(hours=10), 12, 2000, ("unknown-model", "retry-storm"))):
            opts = Options(seed=seed, calls=n, rate=6, tenants=("acme", "globex"),
                           start_time_ns=int(start.timestamp()) * 10**9, scenarios=scenarios)
            calls += llm_calls_records(opts, settings, 4)
    calls.sort(key=lambda r: r[1])
    d = tmp_path_factory.mktemp("report-lake")
    land_lake(d, calls, 4, ("calls", "agg_1m"))
    return d


@pytest.fixture(scope="module")
def calls(lake_dir) -> list[dict[str, Any]]:
    return calls_once(lake_dir)


@pytest.fixture(scope="module")
def partials(lake_dir) -> list[dict[str, Any]]:
    return latest_partials(lake_dir)


@pytest.fixture(scope="module")
def con(lake_dir):
    return connect(lake_dir)


@pytest.fixture(scope="module")
def day(con, settings) -> R.Report:
    return R.kpis(con, settings, DAY, now=NOW)


def within(rows, start, end, tenant=None, kind="llm"):
    return [r for r in rows if start <= r["start_time"] < end
            and (tenant is None or r["tenant"] == tenant) and (kind is None or r["kind"] == kind)]


def cost(rows) -> Decimal:
    return sum((r["cost_usd"] for r in rows if r["cost_usd"] is not None), Decimal(0))


def p95(rows) -> float | None:
    lat = np.array([r["latency_ms"] for r in rows if r["latency_ms"] is not None
                    and not math.isnan(r["latency_ms"])], np.float64)
    counts = np.zeros(N_BUCKETS, np.int64)
    np.add.at(counts, sketch.bucket_indices(lat), 1)
    return sketch.quantile(counts, 0.95)


def is_timeout(r, settings) -> bool:
    types = {t.strip() for t in settings.aggregate.timeout_error_types.split(",")}
    return ((r["status"] == "error" and r["error_type"] in types)
            or (r["latency_ms"] is not None and r["latency_ms"] >= settings.aggregate.timeout_ms))


def users(rows) -> int:
    return len({(r["tenant"], r["user_id"]) for r in rows if r["user_id"] is not None})


# ------------------------------------------------------------------ the data set


def test_the_data_set_has_what_the_report_must_show(calls):
    """Guards the fixture: both days, priced and unpriced calls, units, agents, cached
    tokens, sampled calls and retry twins; otherwise the checks below prove little."""
    d10 = within(calls, D10, D11)
    assert within(calls, D9, D10) and d10
    assert any(not r["priced"] for r in d10)
    assert {r["unit_type"] for r in d10} >= {"ticket", "document"}
    assert any(r["agent"] for r in d10) and any(r["cached_input_tokens"] for r in d10)
    assert any(r["sampling_ratio"] == SAMPLED_RATIO for r in d10)
    assert {r["prompt_version"] for r in d10} >= {"ticket-triage-v1", "ticket-triage-v2"}


# ------------------------------------------------------------------ periods


@pytest.mark.parametrize(("since", "until", "start", "end"), [
    ("7d", None, "2026-11-04T12:34", "2026-11-11T12:34"),
    ("24h", "2026-11-10", "2026-11-09T00:00", "2026-11-10T00:00"),
    ("90m", None, "2026-11-11T11:04", "2026-11-11T12:34"),
    ("2w", None, "2026-10-28T12:34", "2026-11-11T12:34"),
    ("2026-11-10", None, "2026-11-10T00:00", "2026-11-11T00:00"),
    ("2026-W46", None, "2026-11-09T00:00", "2026-11-16T00:00"),
    ("2026-11", None, "2026-11-01T00:00", "2026-12-01T00:00"),
    ("2026-12", None, "2026-12-01T00:00", "2027-01-01T00:00"),
    ("2026-11-01..2026-11-08", None, "2026-11-01T00:00", "2026-11-08T00:00"),
    ("2026-11-01/2026-11-08", None, "2026-11-01T00:00", "2026-11-08T00:00"),
    ("2026-W45..2026-W47", None, "2026-11-02T00:00", "2026-11-16T00:00"),
    ("2026-11-10T10:00..2026-11-10T12:00Z", None, "2026-11-10T10:00", "2026-11-10T12:00"),
    ("2026-11-10T11:00+01:00..now", None, "2026-11-10T10:00", "2026-11-11T12:34"),
    ("2026-11-01", "2026-11-08", "2026-11-01T00:00", "2026-11-08T00:00"),
    ("2026-11-10T10:00", None, "2026-11-10T10:00", "2026-11-11T12:34"),
])
def test_periods_are_half_open_utc_and_relative_ones_end_now(since, until, start, end):
    now = dt.datetime(2026, 11, 11, 12, 34, 56, 789, tzinfo=UTC)
    p = R.parse_period(since, until, now=now)
    assert (p.start, p.end) == (dt.datetime.fromisoformat(start).replace(tzinfo=UTC),
                                dt.datetime.fromisoformat(end).replace(tzinfo=UTC))
    prev = p.previous()
    assert prev.end == p.start and prev.length == p.length


@pytest.mark.parametrize(("since", "until", "message"), [
    ("2026-11-10T10:00:30..2026-11-10T11:00", None, "whole minute"),
    ("2026-11-10..2026-11-09", None, "not before"),
    ("yesterday", None, "not a date"),
    ("0d", None, "positive"),
    ("2026-11-01..2026-11-08", "2026-11-09", "leave --until out"),
    ("2026-11-01..", None, "START..END"),
    ("2026-13", None, "not a date"),
])
def test_bad_periods_say_why(since, until, message):
    with pytest.raises(R.ReportError, match=message):
        R.parse_period(since, until, now=NOW)


def test_a_period_describes_itself():
    assert R.parse_period("2026-W46").describe() == \
        "2026-11-09 00:00 to 2026-11-16 00:00 UTC (1 week)"
    assert R.parse_period("90m", now=NOW).describe().endswith("(90 minutes)")


# ------------------------------------------------------------------ fixed costs and budgets


def test_fixed_monthly_costs_are_allocated_pro_rata_to_each_month():
    day = R.parse_period("2026-11-10")
    assert R.allocate_monthly("310", day) == Decimal("10.333333333333")      # 310 / 30
    assert R.allocate_monthly("310", R.parse_period("2026-11")) == Decimal("310")
    assert R.allocate_monthly("310", R.parse_period("2026-02")) == Decimal("310")
    # Oct 31 at October's rate (1/31) plus Nov 1 at November's (1/30).
    across = R.parse_period("2026-10-31..2026-11-02")
    assert R.allocate_monthly("310", across) == Decimal("20.333333333333")
    assert R.allocate_monthly("45", R.parse_period("7d", now=D11)) == Decimal("10.5")
    # One hour of a 744-hour month, rounded once (half-even) at 12 places.
    assert R.allocate_monthly("1", R.parse_period("2026-10-10T00:00..2026-10-10T01:00")) \
        == Decimal("0.001344086022")
    assert R.allocate_monthly("0", day) == 0


def test_budgets_are_prorated_daily_by_length_and_monthly_by_month_in_their_time_zone():
    team = {b.period: b for b in parse_budgets(BUDGETS)
            if b.scope == "team" and b.name == "customer-support"}
    week = R.parse_period("2026-W46")
    assert R.prorate_budget(team["daily"], week) == Decimal("10.5")          # 1.50 x 7
    assert R.prorate_budget(team["monthly"], week) == Decimal("7")           # 30 x 7/30
    # Oct 31 23:00 UTC is already November in Paris: 30 x 1 h / 720 h, not / 744 h.
    hour = R.parse_period("2026-10-31T23:00..2026-11-01T00:00")
    assert R.prorate_budget(team["monthly"], hour, UTC) == \
        Decimal("0.040322580645")
    from zoneinfo import ZoneInfo
    assert R.prorate_budget(team["monthly"], hour, ZoneInfo("Europe/Paris")) == \
        Decimal("0.041666666667")


def test_fixed_costs_split_per_request_and_per_unit(day, calls):
    rows = within(calls, D10, D11)
    n = len(rows)
    infra, ops = Fraction(310, 30), Fraction(45, 30)
    s = day.section("unit_costs")
    req = s.row(unit="request")
    assert req["units"] == n
    assert req["tokens_per_unit_usd"] == frac_div(cost(rows), n)
    assert req["infra_per_unit_usd"] == q12(infra / n)
    assert req["ops_per_unit_usd"] == q12(ops / n)
    assert req["total_per_unit_usd"] == q12((Fraction(cost(rows)) + infra + ops) / n)
    summary = day.section("summary")
    assert summary.row(metric="fixed_usd")["value"] == q12(infra + ops)
    assert summary.row(metric="total_usd")["value"] == q12(Fraction(cost(rows)) + infra + ops)


def test_cost_per_business_unit_is_cost_over_distinct_units(day, calls):
    rows = within(calls, D10, D11)
    n = len(rows)
    by_type: dict[str, list] = defaultdict(list)
    for r in rows:
        if r["unit_type"] and r["unit_id"]:
            by_type[r["unit_type"]].append(r)
    s = day.section("unit_costs")
    assert [r["unit"] for r in s.rows] == ["request", *sorted(by_type)]
    for unit_type, urows in by_type.items():
        units = len({(r["tenant"], r["unit_id"]) for r in urows})
        share = Fraction(len(urows), n)
        row = s.row(unit=unit_type)
        assert (row["units"], row["requests"], row["cost_usd"]) == \
            (units, len(urows), cost(urows))
        assert row["tokens_per_unit_usd"] == frac_div(cost(urows), units)
        assert row["infra_per_unit_usd"] == q12(Fraction(310, 30) * share / units)
        assert row["total_per_unit_usd"] == \
            q12((Fraction(cost(urows)) + Fraction(355, 30) * share) / units)


def test_team_cost_per_user_and_budget_used(day, calls):
    rows = within(calls, D10, D11)
    s = day.section("teams")
    for (tenant, team) in {(r["tenant"], r["team"]) for r in rows}:
        mine = [r for r in rows if (r["tenant"], r["team"]) == (tenant, team)]
        row = s.row(tenant=tenant, team=team)
        assert (row["requests"], row["cost_usd"], row["users"]) == \
            (len(mine), cost(mine), users(mine))
        assert row["cost_per_user_usd"] == frac_div(cost(mine), users(mine))
    # Tightest of 1.50 a day and 30 a month (= 1.00 for a November day).
    support = s.row(tenant="acme", team="customer-support")
    assert (support["budget_usd"], support["budget_basis"]) == (Decimal("1.00"), "monthly")
    assert support["budget_used_pct"] == pytest.approx(float(support["cost_usd"]) * 100)
    growth = s.row(tenant="globex", team="growth")
    assert growth["budget_usd"] == Decimal("0.2")
    assert growth["budget_used_pct"] == pytest.approx(float(growth["cost_usd"]) / 0.2 * 100)
    assert s.row(tenant="acme", team="sales")["budget_usd"] is None


def test_every_budget_shows_its_spend_against_the_prorated_limit(day, calls):
    rows = within(calls, D10, D11, kind=None)
    s = day.section("budgets")
    assert len(s.rows) == 5
    acme = s.row(budget="tenant:acme")
    assert acme["spent_usd"] == cost([r for r in rows if r["tenant"] == "acme"])
    assert acme["period_budget_usd"] == q12(Fraction(100, 30))
    triage = s.row(budget="use_case:globex/ticket-triage")
    spent = cost([r for r in rows if r["tenant"] == "globex" and r["use_case"] ==
                  "ticket-triage"])
    assert (triage["spent_usd"], triage["period_budget_usd"]) == (spent, Decimal("0.5"))
    assert triage["used_pct"] == pytest.approx(float(spent) / 0.5 * 100)


def test_a_tenant_report_sees_only_that_tenant_and_its_budgets(con, settings, calls):
    rep = R.kpis(con, settings, DAY, tenant="globex", now=NOW)
    rows = within(calls, D10, D11, tenant="globex")
    total = rep.section("by_team").row(team="TOTAL")
    assert (total["requests"], total["cost_usd"]) == (len(rows), cost(rows))
    assert {r["budget"] for r in rep.section("budgets").rows} == \
        {"team:globex/growth", "use_case:globex/ticket-triage"}
    assert {r["tenant"] for r in rep.section("teams").rows} == {"globex"}


# ------------------------------------------------------------------ headline KPIs


def test_summary_matches_independent_sums_for_both_periods(day, calls, settings):
    s = day.section("summary")
    for col, (start, end) in (("value", (D10, D11)), ("previous", (D9, D10))):
        rows = within(calls, start, end)
        n = len(rows)
        ok = sum(r["status"] == "ok" for r in rows)
        expected = {
            "requests": n, "cost_usd": cost(rows),
            "cost_per_request_usd": frac_div(cost(rows), n),
            "users": users(rows), "cost_per_user_usd": frac_div(cost(rows), users(rows)),
            "success_rate": ok / n, "error_rate": (n - ok) / n,
            "timeout_rate": sum(is_timeout(r, settings) for r in rows) / n,
            "unpriced": sum(not r["priced"] for r in rows),
            "unpriced_share": sum(not r["priced"] for r in rows) / n,
        }
        for metric, value in expected.items():
            assert s.row(metric=metric)[col] == value, (col, metric)
        assert s.row(metric="p95_ms")[col] == pytest.approx(p95(rows), rel=1e-12)


def test_timeouts_follow_the_configured_threshold(con, calls):
    """Generated timeouts are errors of a timeout type; a lower threshold must also
    count slow successes (the aggregator's rule, read from the settings)."""
    strict = load_settings(env={**ENV, "LLMSPEND_AGGREGATE_TIMEOUT_MS": "5000"})
    rows = within(calls, D10, D11)
    rate = R.kpis(con, strict, DAY, now=NOW).section("summary").row(
        metric="timeout_rate")["value"]
    slow = sum(is_timeout(r, strict) for r in rows)
    assert rate == slow / len(rows)
    assert any(r["status"] == "ok" and r["latency_ms"] >= 5000 for r in rows)


def test_p95_is_the_sketch_quantile_within_one_percent_of_the_exact_one(day, calls):
    rows = within(calls, D10, D11)
    exact = sketch.exact_lower_nearest_rank(
        np.array([r["latency_ms"] for r in rows if r["latency_ms"] is not None]), 0.95)
    got = day.section("summary").row(metric="p95_ms")["value"]
    assert got == pytest.approx(exact, rel=0.0101)


def test_fallback_and_escalation_rates_come_from_the_aggregates(day, partials):
    for col, (start, end) in (("value", (D10, D11)), ("previous", (D9, D10))):
        mine = [p for p in partials if p["view"] == "group" and start <= p["window_start"] < end]
        llm = sum(p["llm_calls"] for p in mine)
        s = day.section("summary")
        assert s.row(metric="fallback_rate")[col] == sum(p["fallbacks"] for p in mine) / llm
        assert s.row(metric="escalation_rate")[col] == sum(p["escalations"] for p in mine) / llm
    assert sum(p["fallbacks"] for p in partials) > 0


def test_period_over_period_change_is_this_minus_previous(day, calls):
    s = day.section("summary")
    cur, prev = within(calls, D10, D11), within(calls, D9, D10)
    row = s.row(metric="cost_usd")
    assert row["change"] == cost(cur) - cost(prev)
    assert row["change_pct"] == pytest.approx(float((cost(cur) - cost(prev)) / cost(prev) * 100))
    row = s.row(metric="requests")
    assert (row["change"], row["change_pct"]) == \
        (len(cur) - len(prev), pytest.approx((len(cur) - len(prev)) / len(prev) * 100))
    row = s.row(metric="cost_per_request_usd")
    assert row["change"] == frac_div(cost(cur), len(cur)) - frac_div(cost(prev), len(prev))


def test_a_period_with_nothing_before_it_has_no_change(con, settings, calls):
    rep = R.kpis(con, settings, "7d", now=NOW)
    s = rep.section("summary")
    assert s.row(metric="requests")["value"] == len(within(calls, D9, D11))
    assert s.row(metric="requests")["previous"] == 0
    assert s.row(metric="cost_usd")["change_pct"] is None
    assert s.row(metric="cost_per_request_usd")["previous"] is None
    assert any("previous period has no requests" in w for w in rep.warnings)
    # A week of fixed costs in November: 7/30 of each month's amount.
    assert s.row(metric="fixed_usd")["value"] == q12(Fraction(355 * 7, 30))


def test_an_empty_lake_reports_zeros_and_no_figures_not_errors(settings, tmp_path):
    rep = R.kpis(connect(tmp_path), settings, DAY, now=NOW)
    s = rep.section("summary")
    assert s.row(metric="requests")["value"] == 0
    assert s.row(metric="cost_usd")["value"] == 0
    assert s.row(metric="cost_per_request_usd")["value"] is None
    assert s.row(metric="p95_ms")["value"] is None
    assert s.row(metric="fixed_usd")["value"] == q12(Fraction(355, 30))
    for fmt in R.FORMATS:
        assert R.render(rep, fmt)


def test_periods_past_the_calls_retention_are_flagged(con, settings):
    assert not any("retention" in w for w in R.kpis(con, settings, DAY, now=NOW).warnings)
    later = dt.datetime(2027, 3, 1, tzinfo=UTC)       # 2026-11-09 is > 90 days back
    rep = R.kpis(con, settings, DAY, now=later)
    assert any("older than 90 days (jobs.calls_days)" in w for w in rep.warnings)
    short = load_settings(env={**ENV, "LLMSPEND_JOBS_CALLS_DAYS_BY_TENANT": '{"acme": 1}'})
    assert any("older than 1 day (jobs" in w for w in
               R.kpis(con, short, DAY, tenant="acme", now=NOW).warnings)
    assert not any("retention" in w for w in
                   R.kpis(con, short, DAY, tenant="globex", now=NOW).warnings)


# ------------------------------------------------------------------ grouping


@pytest.mark.parametrize("by", R.BY_CHOICES)
def test_grouping_sums_to_the_total_and_matches_each_group(con, settings, calls, by):
    rep = R.kpis(con, settings, DAY, by=by, now=NOW)
    rows = within(calls, D10, D11)
    s = rep.section(f"by_{by}")
    groups, total = s.rows[:-1], s.rows[-1]
    assert total[by] == "TOTAL"
    assert sum(g["requests"] for g in groups) == total["requests"] == len(rows)
    assert sum(g["cost_usd"] for g in groups) == total["cost_usd"] == cost(rows)
    # Fixed shares are rounded per row: at most half a pico-dollar each.
    assert abs(sum(g["fixed_usd"] for g in groups) - total["fixed_usd"]) <= \
        Decimal(len(groups)) / 10**12
    assert sum(g["share_pct"] for g in groups) == pytest.approx(100)

    def key(r):
        v = (r["model"] or r["response_model"] or r["request_model"]) if by == "model" \
            else r[by]
        return v or "(none)"

    expected: dict[str, list] = defaultdict(list)
    for r in rows:
        expected[key(r)].append(r)
    assert {g[by] for g in groups} == set(expected)
    for g in groups:
        mine = expected[g[by]]
        assert (g["requests"], g["cost_usd"], g["users"]) == (len(mine), cost(mine),
                                                             users(mine))
    quality = rep.section(f"quality_by_{by}")
    for g in quality.rows[:-1]:
        mine = expected[g[by]]
        assert g["p95_ms"] == pytest.approx(p95(mine), rel=1e-12)
        assert g["error_rate"] == sum(r["status"] == "error" for r in mine) / len(mine)


def test_an_unknown_grouping_is_refused(con, settings):
    with pytest.raises(R.ReportError, match="--by"):
        R.kpis(con, settings, DAY, by="user")


# ------------------------------------------------------------------ cache, unpriced, sampling


def test_cache_savings_value_cached_tokens_at_the_calls_own_list_tier(day, calls):
    versions = {e.version_id(v): v for e in load_catalog().entries for v in e.versions}
    saved: dict[str, Fraction] = defaultdict(Fraction)
    premium: dict[str, Fraction] = defaultdict(Fraction)
    for r in within(calls, D10, D11):
        if r["priced"] and (r["cached_input_tokens"] or r["cache_write_tokens"]):
            p = versions[r["price_version"]].prices_for(r["input_tokens"])
            saved[r["provider"]] += Fraction((r["cached_input_tokens"] or 0)
                                             * (p.input - p.cache_read)) / 10**6
            premium[r["provider"]] += Fraction((r["cache_write_tokens"] or 0)
                                               * (p.cache_write - p.input)) / 10**6
    s = day.section("cache")
    assert {r["provider"] for r in s.rows} == {*saved, "TOTAL"}
    for provider in saved:
        row = s.row(provider=provider)
        assert row["saved_usd"] == q12(saved[provider]) > 0
        assert row["write_premium_usd"] == q12(premium[provider])
        assert row["net_saved_usd"] == q12(saved[provider]) - q12(premium[provider])
    assert s.row(provider="TOTAL")["net_saved_usd"] == \
        sum(q12(saved[p]) - q12(premium[p]) for p in saved)


def _raw_calls(lake_dir: Path) -> list[dict[str, Any]]:
    """Call rows as stored, with their Kafka position columns."""
    return [r for f in sorted((lake_dir / "calls").rglob("*.parquet"))
            for r in pq.ParquetFile(f).read().to_pylist()]


def _lake_of(lake_dir: Path, rows: list[dict[str, Any]], tmp_path: Path
             ) -> duckdb.DuckDBPyConnection:
    """The views over ``rows`` (edited real calls) as the whole calls dataset."""
    schema = pq.read_schema(next((lake_dir / "calls").rglob("*.parquet")))
    for r in rows:
        r["dt"], r["hour"] = r["start_time"].date(), r["start_time"].hour
    table = pa.Table.from_pylist(rows, schema=schema.append(pa.field("dt", pa.date32()))
                                 .append(pa.field("hour", pa.int32())))
    con = duckdb.connect()
    con.register("edited_calls", table)
    analytics.load(con, tmp_path, sources={"calls": "edited_calls"})
    return con


def test_a_business_unit_is_distinct_per_tenant(lake_dir, settings, tmp_path):
    """TCK-000001 of acme and TCK-000001 of globex are two tickets; acme's twice is one."""
    day2 = [r for r in _raw_calls(lake_dir) if r["kind"] == "llm" and r["unit_type"] ==
            "ticket" and D10 <= r["start_time"] < D11]
    picked = [r for r in day2 if r["tenant"] == "acme"][:2] + \
        [r for r in day2 if r["tenant"] == "globex"][:1]
    for r in picked:
        r["unit_id"] = "TCK-000001"
    rep = R.kpis(_lake_of(lake_dir, picked, tmp_path), settings, DAY, now=NOW)
    row = rep.section("unit_costs").row(unit="ticket")
    assert (row["units"], row["requests"]) == (2, 3)
    assert row["tokens_per_unit_usd"] == frac_div(cost(picked), 2)


def test_cache_savings_use_the_long_context_tier_above_its_threshold(lake_dir, settings,
                                                                    tmp_path):
    """The generated prompts stay under 200k tokens, so three real Claude Sonnet calls
    are given a long context (one of them past the tier) in a calls relation of their
    own; the tier's prices must value that call's cached tokens."""
    picked = [r for r in _raw_calls(lake_dir) if r["price_version"] and r["price_version"]
              .startswith("anthropic/claude-sonnet-4-5") and r["cached_input_tokens"]][:3]
    assert len(picked) == 3
    picked[0]["input_tokens"] = 250_000
    con = _lake_of(lake_dir, picked, tmp_path)
    version = next(v for e in load_catalog().entries for v in e.versions
                   if e.version_id(v) == picked[0]["price_version"])
    long, base = version.prices_for(250_000), version.prices_for(1_000)
    assert long.input != base.input

    def value(r, p):
        return Fraction(r["cached_input_tokens"] * (p.input - p.cache_read)) / 10**6

    day = dt.datetime.combine(picked[0]["start_time"].date(), dt.time(), UTC)
    rep = R.kpis(con, settings, R.Period(day, day + dt.timedelta(days=1)), now=NOW)
    saved = rep.section("cache").row(provider="anthropic")["saved_usd"]
    assert saved == q12(value(picked[0], long) + sum(value(r, base) for r in picked[1:]))
    assert saved != q12(sum(value(r, base) for r in picked))


def test_unpriced_calls_are_counted_with_their_share_and_reason(day, calls):
    rows = within(calls, D10, D11)
    unpriced = [r for r in rows if not r["priced"]]
    s = day.section("unpriced")
    assert sum(r["requests"] for r in s.rows) == len(unpriced) > 0
    row = s.row(model="acme-support-ft-7b")
    assert row["reason"] == "model not in catalog"
    n = sum((r["response_model"] or r["request_model"]) == "acme-support-ft-7b"
            for r in unpriced)
    assert (row["requests"], row["share"]) == (n, n / len(rows))
    assert any(f"{len(unpriced)} of {len(rows):,} requests" in w for w in day.warnings)


def test_sampled_traffic_is_flagged_with_a_scaled_up_estimate(day, calls):
    rows = within(calls, D10, D11)
    sampled = [r for r in rows if r["sampling_ratio"] is not None]
    assert {r["sampling_ratio"] for r in sampled} == {SAMPLED_RATIO}
    estimate = sum((Fraction(r["cost_usd"] or 0) / Fraction(str(r["sampling_ratio"] or 1))
                    for r in rows), Fraction(0))
    s = day.section("sampling")
    total = s.row(ratio="all")
    assert (total["requests"], total["cost_usd"]) == (len(rows), cost(rows))
    assert total["estimated_cost_usd"] == q12(estimate)
    assert total["estimated_requests"] == len(rows) - len(sampled) + 4 * len(sampled)
    warning = next(w for w in day.warnings if w.startswith("Sampled traffic"))
    assert f"{len(sampled)} of {len(rows):,} requests" in warning
    assert f"= {R._usd(q12(estimate))} USD" in warning


def test_unsampled_periods_carry_no_sampling_warning(con, settings):
    rep = R.kpis(con, settings, PREVIOUS_DAY, now=NOW)
    assert not any(w.startswith("Sampled") for w in rep.warnings)
    with pytest.raises(KeyError):
        rep.section("sampling")


# ------------------------------------------------------------------ top lists, providers


def test_top_sessions_and_agents_by_cost(day, calls):
    rows = within(calls, D10, D11, kind=None)
    sessions: dict[tuple, list] = defaultdict(list)
    agents: dict[tuple, list] = defaultdict(list)
    for r in rows:
        sessions[(r["tenant"], r["session_id"])].append(r)
        if r["agent"]:
            agents[(r["tenant"], r["agent"])].append(r)
    top = sorted(sessions, key=lambda k: (-cost(sessions[k]), k))[:10]
    got = day.section("top_sessions").rows
    assert [(r["tenant"], r["session_id"]) for r in got] == top
    for r, k in zip(got, top, strict=True):
        mine = sessions[k]
        assert r["cost_usd"] == cost(mine)
        assert (r["requests"], r["tools"]) == (sum(c["kind"] == "llm" for c in mine),
                                               sum(c["kind"] == "tool" for c in mine))
    got = day.section("top_agents").rows
    assert [(r["tenant"], r["agent"]) for r in got] == \
        sorted(agents, key=lambda k: (-cost(agents[k]), k))[:10]
    for r in got:
        mine = agents[(r["tenant"], r["agent"])]
        n = len({c["session_id"] for c in mine})
        assert (r["sessions"], r["cost_usd"]) == (n, cost(mine))
        assert r["cost_per_session_usd"] == frac_div(cost(mine), n)


def test_effective_against_list_cost_per_provider(day, calls):
    rows = [r for r in within(calls, D10, D11) if r["priced"]]
    s = day.section("providers")
    for provider in {r["provider"] for r in rows}:
        mine = [r for r in rows if r["provider"] == provider]
        paid = cost(mine)
        listed = sum((r["list_cost_usd"] for r in mine), Decimal(0))
        row = s.row(provider=provider)
        assert (row["requests"], row["cost_usd"], row["list_cost_usd"]) == \
            (len(mine), paid, listed)
        assert row["savings_usd"] == listed - paid
        assert row["savings_pct"] == pytest.approx(float((listed - paid) / listed * 100))
    # acme's 20 % discount shows; globex pays list.
    acme = [r for r in rows if r["tenant"] == "acme"]
    assert cost(acme) < sum((r["list_cost_usd"] for r in acme), Decimal(0))
    assert 0 < s.row(provider="TOTAL")["savings_pct"] < 20


# ------------------------------------------------------------------ comparisons


def test_compare_two_periods_side_by_side(con, settings, calls):
    a, b = R.parse_compare(f"{PREVIOUS_DAY}..{DAY}")
    rep = R.compare(con, settings, a, b)
    s = rep.section("compare")
    for col, (start, end) in (("a", (D9, D10)), ("b", (D10, D11))):
        rows = within(calls, start, end)
        assert s.row(metric="requests")[col] == len(rows)
        assert s.row(metric="cost_per_request_usd")[col] == frac_div(cost(rows), len(rows))
        assert s.row(metric="p95_ms")[col] == pytest.approx(p95(rows), rel=1e-12)
        tickets = [r for r in rows if r["unit_type"] == "ticket" and r["unit_id"]]
        n = len({(r["tenant"], r["unit_id"]) for r in tickets})
        assert s.row(metric="cost_per_ticket_usd")[col] == frac_div(cost(tickets), n)
    row = s.row(metric="cost_usd")
    assert row["change"] == row["b"] - row["a"]
    assert "fallback_rate" in {r["metric"] for r in s.rows}


def test_compare_two_prompt_versions_over_one_period(con, settings, calls):
    period = R.parse_period("2026-11-09..2026-11-11")
    a, b = R.parse_compare("prompt_version=ticket-triage-v1..ticket-triage-v2", period)
    assert (a.value, b.value) == ("ticket-triage-v1", "ticket-triage-v2")
    s = R.compare(con, settings, a, b).section("compare")
    for col, version in (("a", "ticket-triage-v1"), ("b", "ticket-triage-v2")):
        rows = [r for r in within(calls, D9, D11) if r["prompt_version"] == version]
        errors = sum(r["status"] == "error" for r in rows)
        tickets = len({(r["tenant"], r["unit_id"]) for r in rows if r["unit_id"]})
        assert s.row(metric="cost_per_request_usd")[col] == frac_div(cost(rows), len(rows))
        assert s.row(metric="error_rate")[col] == errors / len(rows)
        assert s.row(metric="p95_ms")[col] == pytest.approx(p95(rows), rel=1e-12)
        assert s.row(metric="cost_per_ticket_usd")[col] == frac_div(cost(rows), tickets)
    assert "fallback_rate" not in {r["metric"] for r in s.rows}   # agg_1m has no versions


def test_compare_two_models_counts_their_fallbacks_from_the_aggregates(
        con, settings, calls, partials):
    period = R.parse_period("2026-11-09..2026-11-11")
    a, b = R.parse_compare("model=gpt-4o-mini..model=claude-haiku-4-5", period)
    s = R.compare(con, settings, a, b).section("compare")
    for col, model in (("a", "gpt-4o-mini"), ("b", "claude-haiku-4-5")):
        rows = [r for r in within(calls, D9, D11)
                if (r["model"] or r["response_model"] or r["request_model"]) == model]
        mine = [p for p in partials if p["view"] == "group" and p["model"] == model]
        assert s.row(metric="requests")[col] == len(rows) == sum(p["llm_calls"] for p in mine)
        assert s.row(metric="fallback_rate")[col] == \
            sum(p["fallbacks"] for p in mine) / len(rows)


@pytest.mark.parametrize(("text", "kind", "a", "b"), [
    ("2026-W45..2026-W46", "period", ("2026-11-02", "2026-11-09"), ("2026-11-09", "2026-11-16")),
    ("2026-11-01/2026-11-08..2026-11-08/2026-11-15", "period",
     ("2026-11-01", "2026-11-08"), ("2026-11-08", "2026-11-15")),
    ("2026-10..2026-11", "period", ("2026-10-01", "2026-11-01"), ("2026-11-01", "2026-12-01")),
    ("model=gpt-4.1..gpt-4.1-mini", "variant", ("model", "gpt-4.1"), ("model", "gpt-4.1-mini")),
    ("prompt_version=a-v1..prompt_version=a-v2", "variant", ("prompt_version", "a-v1"),
     ("prompt_version", "a-v2")),
])
def test_compare_syntax(text, kind, a, b):
    sa, sb = R.parse_compare(text, R.parse_period(DAY))
    if kind == "period":
        for s, (start, end) in ((sa, a), (sb, b)):
            assert (s.period.start.date().isoformat(), s.period.end.date().isoformat()) == \
                (start, end)
            assert s.column is None
    else:
        assert ((sa.column, sa.value), (sb.column, sb.value)) == (a, b)
        assert sa.period == sb.period == R.parse_period(DAY)


@pytest.mark.parametrize(("text", "message"), [
    ("2026-W45", "exactly one"),
    ("2026-W45..2026-W46..2026-W47", "exactly one"),
    ("model=gpt-4o..team=sales", "same column"),
    ("colour=red..blue", "unknown column"),
    ("2026-W45..model=x", "mix"),
    ("2026-11-10T10:00..2026-11-10T11:00", "point in time"),
    ("model=..x", "needs a value"),
])
def test_bad_comparisons_say_why(text, message):
    with pytest.raises(R.ReportError, match=message):
        R.parse_compare(text, R.parse_period(DAY))


def test_a_variant_comparison_needs_a_period():
    with pytest.raises(R.ReportError, match="needs a period"):
        R.parse_compare("model=a..b")


# ------------------------------------------------------------------ rendering


def _money_cells(report: R.Report):
    """(section, row, column, value) of every money cell (usd columns, usd rows)."""
    for s in report.sections:
        for r in s.rows:
            for c in s.columns:
                if c.kind == "usd" or (c.kind == "auto" and r.get("unit") == "usd"):
                    yield s.key, r, c.name, r.get(c.name)


def test_money_is_decimal_never_float(day):
    cells = list(_money_cells(day))
    assert len(cells) > 100
    assert all(v is None or isinstance(v, Decimal) for *_, v in cells)


def test_json_parses_and_round_trips_decimals_exactly(day):
    data = json.loads(R.render(day, "json"))
    assert [s["key"] for s in data["sections"]] == [s.key for s in day.sections]
    assert data["warnings"] == day.warnings
    assert data["meta"]["period"]["start"] == "2026-11-10T00:00:00+00:00"
    for s, js in zip(day.sections, data["sections"], strict=True):
        assert len(js["rows"]) == len(s.rows)
        for r, jr in zip(s.rows, js["rows"], strict=True):
            assert set(jr) == set(r)
            for k, v in r.items():
                if isinstance(v, Decimal):
                    assert isinstance(jr[k], str) and Decimal(jr[k]) == v
                    assert "E" not in jr[k]
                else:
                    assert jr[k] == v


def test_csv_is_a_long_table_with_exact_values(day):
    lines = list(csv.DictReader(io.StringIO(R.render(day, "csv"))))
    assert list(lines[0]) == ["section", "row", "key", "metric", "value"]
    got = {(x["section"], int(x["row"]), x["metric"]): x["value"] for x in lines}
    n = 0
    for s in day.sections:
        for i, r in enumerate(s.rows):
            for k, v in r.items():
                if k in s.keys:
                    continue
                n += 1
                text = got[(s.key, i, k)]
                if isinstance(v, Decimal):
                    assert Decimal(text) == v and text == f"{v:f}"
                elif v is None:
                    assert text == ""
                elif isinstance(v, float):
                    assert float(text) == v
    assert n == sum(1 for x in lines if x["section"] not in ("report", "warnings"))
    cost = day.section("by_team").row(team="TOTAL")["cost_usd"]
    assert any(x["section"] == "by_team" and x["key"] == "TOTAL" and x["metric"] ==
               "cost_usd" and x["value"] == f"{cost:f}" for x in lines)
    assert sum(x["section"] == "warnings" for x in lines) == len(day.warnings)


def test_markdown_has_every_section_as_a_table(day):
    md = R.render(day, "markdown")
    assert md.startswith("# LLM spend report: 2026-11-10\n")
    for s in day.sections:
        assert f"\n## {s.title}\n" in md
    assert md.count("> **Warning:**") == len(day.warnings)
    table = md.split("\n## Cost by team\n", 1)[1].split("\n## ", 1)[0]
    lines = [x for x in table.splitlines() if x.startswith("|")]
    assert len(lines) == 2 + len(day.section("by_team").rows)
    assert len({x.count("|") for x in lines}) == 1
    assert lines[-1].startswith("| TOTAL | ")


def test_table_aligns_columns_and_rounds_money_for_people(day):
    text = R.render(day, "table")
    block = text.split("\nCost by team\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    header, rule, *rows = [x for x in block if not x.startswith("  ")]
    assert set(rule) <= {"-", " "}
    assert len({len(x) for x in [header, rule, *rows]}) == 1   # right-aligned last column
    total = day.section("by_team").row(team="TOTAL")
    assert rows[-1].split()[:3] == ["TOTAL", f"{total['requests']:,}",
                                    f"{total['cost_usd']:.2f}"]
    assert R._usd(Decimal("0.001234567")) == "0.001235"
    assert R._usd(Decimal("0.0456789")) == "0.0457"
    assert R._usd(Decimal("1234.565")) == "1,234.57"


def test_an_unknown_format_is_refused(day):
    with pytest.raises(R.ReportError, match="--format"):
        R.render(day, "xml")


def test_the_day_report_in_markdown_equals_the_golden_file(day):
    """The whole report for the fixed data set; after a deliberate change, rewrite it
    with LLMSPEND_UPDATE_GOLDEN=1 and review the diff."""
    got = R.render(day, "markdown")
    if os.environ.get("LLMSPEND_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
    want = GOLDEN.read_text() if GOLDEN.exists() else ""
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            str(GOLDEN), "rendered"))
        pytest.fail(f"the report differs from {GOLDEN.name} (LLMSPEND_UPDATE_GOLDEN=1 "
                    f"rewrites it):\n{diff}")
