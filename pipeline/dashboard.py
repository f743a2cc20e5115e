"""The offline HTML dashboard (``llmspend dashboard``): the pure core.

``data(con, settings, period, tenant)`` computes every figure the page shows with SQL
over the lake views (:mod:`pipeline.analytics`); ``render(d)`` turns it into ONE
self-contained HTML page (inline CSS, the data as JSON, inline JS drawing SVG: no CDN,
no network, so it opens on a laptop in a plane); ``write`` saves it atomically and
``serve`` re-builds it on each GET for a live view.

Rules (the page's notes say them too):

* Money is exact: decimal strings in the data (``DECIMAL(38,12)`` sums), added in the
  browser as BigInt pico-USD, so a chart's ``data-total`` is an exact decimal string.
* Time series are keyed by tenant, so the tenant filter sums rows client-side; buckets
  are sized to the period (minutes up to 3 h, hours up to 7 days, days beyond).
* Spend over time, latency and rates read ``agg_1m`` (kept ``jobs.agg_1m_days``);
  per-unit cost, budgets, top sessions/agents, cache savings and unpriced calls read
  ``calls`` (exact per-call facts, as the KPI report does).
* Percentiles cannot be added up, so latency is embedded per tenant and for all.
* Period-wide tables (latency, top lists, cache, unpriced) cover the whole period; the
  time-range filter narrows the time charts and the alerts timeline.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from pipeline import report as R
from pipeline.budget import parse_budgets, period_bounds
from pipeline.config import Settings

UTC = dt.UTC
TOP_N = 10
#: Calls shown per session in an alert's drill-down (a runaway loop can be long).
SESSION_CALLS_MAX = 500
#: Session incidents given a drill-down (critical first, then the earliest), so a storm
#: of runaway sessions cannot grow the page past a few MB.
SESSION_DRILLDOWNS_MAX = 20
NONE_KEY = R.NONE_KEY
#: Chart containers the page always has (``id`` and ``data-chart``).
CHARTS = ("spend-team", "spend-model", "unit-cost", "latency", "rates", "budgets",
          "alerts", "top-sessions", "top-agents", "cache", "unpriced")
#: Colour-blind-friendly categorical palette (Tableau 20 order, dark first).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
           "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_GRAINS = (("minute", dt.timedelta(hours=3)), ("hour", dt.timedelta(days=7)),
           ("day", None))
_STEP = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1),
         "day": dt.timedelta(days=1)}
_SCOPE_SQL = {"tenant": None, "team": "team", "user": "user_id", "use_case": "use_case"}


def money(d: Decimal | int | None) -> str | None:
    """A decimal string without exponent (``str(Decimal)`` prints zero as ``0E-12``)."""
    return None if d is None else format(Decimal(d), "f")


def _iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def grain_for(period: R.Period) -> str:
    """The bucket size of a period: enough points to see a shape, few enough for ~1 MB."""
    for grain, limit in _GRAINS:
        if limit is None or period.length <= limit:
            return grain
    return "day"   # pragma: no cover


def buckets(period: R.Period, grain: str) -> list[dt.datetime]:
    """Every bucket start that overlaps the period (dense, so gaps show as zero)."""
    t = period.start.replace(second=0, microsecond=0)
    if grain in ("hour", "day"):
        t = t.replace(minute=0)
    if grain == "day":
        t = t.replace(hour=0)
    out = []
    while t < period.end:
        out.append(t)
        t += _STEP[grain]
    return out


class _Q:
    """The period's SQL parameters and filters, shared by every query of one build."""

    def __init__(self, con: duckdb.DuckDBPyConnection, settings: Settings, period: R.Period,
                 tenant: str | None, grain: str) -> None:
        self.con, self.settings, self.period, self.tenant = con, settings, period, tenant
        self.grain = grain
        self.params: dict[str, Any] = {
            "start": period.start, "end": period.end, "d0": period.start.date(),
            "d1": (period.end - dt.timedelta(microseconds=1)).date(), "tenant": tenant}

    def rows(self, sql: str, **extra: Any) -> list[dict[str, Any]]:
        return R._query(self.con, sql, {**self.params, **extra})

    def calls_cte(self) -> str:
        """The period's calls (filters on dt and tenant reach the files)."""
        t = " AND tenant = $tenant" if self.tenant is not None else ""
        return ("WITH c AS (SELECT * FROM calls WHERE start_time >= $start AND start_time < "
                f"$end AND dt BETWEEN $d0 AND $d1{t})\n")

    def agg_where(self) -> str:
        t = " AND tenant = $tenant" if self.tenant is not None else ""
        return ("view = 'group' AND window_start >= $start AND window_start < $end "
                f"AND dt BETWEEN $d0 AND $d1{t}")

    def bucket(self, col: str) -> str:
        return f"date_trunc('{self.grain}', {col})"


def _index(ts: list[dt.datetime]) -> dict[dt.datetime, int]:
    return {t: i for i, t in enumerate(ts)}


def _series(q: _Q, idx: dict[dt.datetime, int], key: str) -> list[list[Any]]:
    """Spend per (bucket, tenant, key) from agg_1m; zero rows left out (tool calls and
    unpriced models add nothing to a spend chart)."""
    sql = (f"SELECT {q.bucket('window_start')} AS b, tenant, coalesce({key}, '{NONE_KEY}') "
           "AS k, sum(cost_usd)::DECIMAL(38, 12) AS usd FROM agg_1m "
           f"WHERE {q.agg_where()} GROUP BY ALL HAVING sum(cost_usd) <> 0 ORDER BY b, tenant, k")
    return [[idx[r["b"]], r["tenant"], r["k"], money(r["usd"])] for r in q.rows(sql)]


def _unit_cost(q: _Q, idx: dict[dt.datetime, int]) -> list[list[Any]]:
    """Cost and distinct units per (bucket, tenant, unit_type), as the report counts them
    (LLM calls naming a unit); units of different tenants are different units, so the
    browser may add the counts across tenants (not across buckets)."""
    sql = q.calls_cte() + f"""
SELECT {q.bucket('start_time')} AS b, tenant, unit_type,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS usd, count(DISTINCT unit_id) AS units
FROM c WHERE kind = 'llm' AND unit_type IS NOT NULL AND unit_id IS NOT NULL
GROUP BY ALL ORDER BY b, tenant, unit_type"""
    return [[idx[r["b"]], r["tenant"], r["unit_type"], money(r["usd"]), r["units"]]
            for r in q.rows(sql)]


def _unit_totals(q: _Q) -> list[dict[str, Any]]:
    """Cost per unit over the whole period per (tenant, unit_type) (the distinct units of
    a period are not the sum of its buckets')."""
    sql = q.calls_cte() + """
SELECT tenant, unit_type, coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS usd,
       count(DISTINCT unit_id) AS units
FROM c WHERE kind = 'llm' AND unit_type IS NOT NULL AND unit_id IS NOT NULL
GROUP BY ALL ORDER BY tenant, unit_type"""
    return [{"tenant": r["tenant"], "unit_type": r["unit_type"], "cost_usd": money(r["usd"]),
             "units": r["units"], "cost_per_unit_usd": money(R._div(r["usd"], r["units"]))}
            for r in q.rows(sql)]


def _latency(q: _Q) -> list[dict[str, Any]]:
    """P50/P95/P99 per model from the agg_1m sketches, per tenant and for all tenants
    (``tenant`` = ``*``). Rows without a model (tool executions) are left out."""
    sql = f"""
SELECT coalesce(tenant, '*') AS tenant, model,
       list_sum(list_transform(flatten(list(latency_buckets)), lambda x: x.count))::BIGINT AS n,
       llmspend_p50(flatten(list(latency_buckets))) AS p50,
       llmspend_p95(flatten(list(latency_buckets))) AS p95,
       llmspend_p99(flatten(list(latency_buckets))) AS p99
FROM agg_1m WHERE {q.agg_where()} AND model IS NOT NULL
GROUP BY GROUPING SETS ((tenant, model), (model)) ORDER BY tenant, model"""
    return [{"tenant": r["tenant"], "model": r["model"], "calls": r["n"] or 0,
             "p50_ms": r["p50"], "p95_ms": r["p95"], "p99_ms": r["p99"]}
            for r in q.rows(sql) if r["n"]]


def _rates(q: _Q, idx: dict[dt.datetime, int]) -> list[list[Any]]:
    """Counts per (bucket, tenant) from agg_1m; the browser divides after summing:
    errors and timeouts per call, fallbacks and escalations per LLM call."""
    sql = (f"SELECT {q.bucket('window_start')} AS b, tenant, sum(calls)::BIGINT AS calls, "
           "sum(llm_calls)::BIGINT AS llm, sum(errors)::BIGINT AS errors, "
           "sum(timeouts)::BIGINT AS timeouts, sum(fallbacks)::BIGINT AS fallbacks, "
           f"sum(escalations)::BIGINT AS escalations FROM agg_1m WHERE {q.agg_where()} "
           "GROUP BY ALL ORDER BY b, tenant")
    return [[idx[r["b"]], r["tenant"], r["calls"], r["llm"], r["errors"], r["timeouts"],
             r["fallbacks"], r["escalations"]] for r in q.rows(sql)]


def _budgets(q: _Q) -> list[dict[str, Any]]:
    """Each budget's current period (the one holding the dashboard's end, in
    ``budgets.timezone``): spent so far against the limit, and the end-of-period spend
    if the burn rate so far continues (linear: spent x period length / elapsed)."""
    tz = ZoneInfo(q.settings.budgets.timezone)
    as_of = q.period.end
    as_of_us = int(as_of.timestamp()) * 10**6
    out = []
    budgets = [b for b in parse_budgets(q.settings.budgets.limits)
               if q.tenant is None or b.tenant == q.tenant]
    for b in sorted(budgets, key=lambda b: (b.tenant, b.scope, b.name, b.period)):
        s_us, e_us = period_bounds(as_of_us - 1, b.period, tz)
        start = dt.datetime.fromtimestamp(s_us / 1e6, UTC)
        step_us = (3600 if b.period == "daily" else 86_400) * 10**6
        col = _SCOPE_SQL[b.scope]
        match = f" AND {col} = $name" if col else ""
        sql = f"""
SELECT ((epoch_us(start_time) - $s_us) // $step)::BIGINT AS i,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS usd
FROM calls WHERE tenant = $btenant AND start_time >= $bstart AND start_time < $end
 AND dt BETWEEN $bd0 AND $d1{match}
GROUP BY 1 ORDER BY 1"""
        rows = q.rows(sql, s_us=s_us, step=step_us, btenant=b.tenant, bstart=start,
                      bd0=start.date() - dt.timedelta(days=1), name=b.name)
        per = {r["i"]: r["usd"] for r in rows}
        spent = sum(per.values(), Decimal(0))
        limit = R._round_money(Fraction(b.limit_pico, 10**12))
        elapsed, length = as_of_us - s_us, e_us - s_us
        projected = R._round_money(Fraction(spent) * length / elapsed)
        burn, cum = [], Decimal(0)
        n = -(-elapsed // step_us)
        for i in range(n):
            cum += per.get(i, Decimal(0))
            t = min(s_us + (i + 1) * step_us, as_of_us)
            burn.append([_iso(dt.datetime.fromtimestamp(t / 1e6, UTC)), money(cum)])
        out.append({
            "budget": b.id, "scope": b.scope, "tenant": b.tenant, "name": b.name,
            "period": b.period, "limit_usd": money(limit),
            "period_start": _iso(start),
            "period_end": _iso(dt.datetime.fromtimestamp(e_us / 1e6, UTC)),
            "as_of": _iso(as_of), "elapsed": elapsed / length, "spent_usd": money(spent),
            "used_pct": float(spent / limit * 100), "projected_usd": money(projected),
            "projected_pct": float(projected / limit * 100), "burn": burn})
    return out


def _alerts(q: _Q) -> tuple[list[dict[str, Any]], dict[str, list[list[Any]]]]:
    """Incidents that overlap the period (latest state, with every state change), and
    for session incidents that session's calls (the drill-down)."""
    t = " AND (tenant = $tenant OR tenant = '*')" if q.tenant is not None else ""
    sql = f"""
SELECT dedup_key, tenant, severity, detector, subject_kind, subject, state, summary,
       first_seen, last_seen
FROM alerts WHERE first_seen < $end AND coalesce(last_seen, first_seen) >= $start{t}
ORDER BY first_seen, dedup_key"""
    alerts = q.rows(sql)
    events: dict[str, list[list[Any]]] = {}
    if alerts:
        ev = q.rows("SELECT dedup_key, emitted_at, state, severity FROM alert_events "
                    "WHERE list_contains($keys, dedup_key) ORDER BY emitted_at, _seq",
                    keys=[a["dedup_key"] for a in alerts])
        for e in ev:
            events.setdefault(e["dedup_key"], []).append(
                [_iso(e["emitted_at"]), e["state"], e["severity"]])
    out, sessions = [], {}
    rank = {"critical": 0, "warning": 1, "info": 2}
    drill = sorted((a for a in alerts if a["subject_kind"] == "session" and a["subject"]),
                   key=lambda a: (rank.get(a["severity"], 3), a["first_seen"]))
    for a in drill:
        key = f"{a['tenant']}|{a['subject']}"
        if key not in sessions and len(sessions) < SESSION_DRILLDOWNS_MAX:
            sessions[key] = _session_calls(q, a["tenant"], a["subject"])
    for a in alerts:
        key = f"{a['tenant']}|{a['subject']}"
        key = key if a["subject_kind"] == "session" and key in sessions else None
        out.append({**{k: a[k] for k in ("dedup_key", "tenant", "severity", "detector",
                                          "subject_kind", "subject", "state", "summary")},
                    "first_seen": _iso(a["first_seen"]) if a["first_seen"] else None,
                    "last_seen": _iso(a["last_seen"]) if a["last_seen"] else None,
                    "events": events.get(a["dedup_key"], []), "session": key})
    return out, sessions


def _session_calls(q: _Q, tenant: str, session: str) -> list[list[Any]]:
    """One session's calls in time order: [time, kind, model, input tokens, output
    tokens, cached tokens, cost, tool, status]."""
    sql = f"""
SELECT start_time, kind, coalesce(model, response_model, request_model) AS model,
       input_tokens, output_tokens, cached_input_tokens, cost_usd, tool_name, status
FROM calls WHERE tenant = $stenant AND session_id = $session
ORDER BY start_time, call_id LIMIT {SESSION_CALLS_MAX}"""
    return [[r["start_time"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), r["kind"],
             r["model"], r["input_tokens"], r["output_tokens"], r["cached_input_tokens"],
             money(r["cost_usd"]), r["tool_name"], r["status"]]
            for r in q.rows(sql, stenant=tenant, session=session)]


def _top_sessions(q: _Q) -> list[dict[str, Any]]:
    """The top N sessions of each tenant (the top N of any tenant filter is among them)."""
    sql = q.calls_cte() + f"""
SELECT tenant, session_id, min(agent) AS agent, min(team) AS team,
       count(*) FILTER (kind = 'llm') AS requests, count(*) FILTER (kind = 'tool') AS tools,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS usd
FROM c GROUP BY tenant, session_id
QUALIFY row_number() OVER (PARTITION BY tenant ORDER BY usd DESC, session_id) <= {TOP_N}
ORDER BY usd DESC, tenant, session_id"""
    return [{**{k: r[k] for k in ("tenant", "session_id", "agent", "team", "requests",
                                  "tools")}, "cost_usd": money(r["usd"])} for r in q.rows(sql)]


def _top_agents(q: _Q) -> list[dict[str, Any]]:
    sql = q.calls_cte() + f"""
SELECT tenant, agent, count(DISTINCT session_id) AS sessions,
       count(*) FILTER (kind = 'llm') AS requests, count(*) FILTER (kind = 'tool') AS tools,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS usd
FROM c WHERE agent IS NOT NULL GROUP BY tenant, agent
QUALIFY row_number() OVER (PARTITION BY tenant ORDER BY usd DESC, agent) <= {TOP_N}
ORDER BY usd DESC, tenant, agent"""
    return [{**{k: r[k] for k in ("tenant", "agent", "sessions", "requests", "tools")},
             "cost_usd": money(r["usd"])} for r in q.rows(sql)]


def _cache(q: _Q, tenants: list[str]) -> list[dict[str, Any]]:
    """Cache savings per (tenant, provider): the KPI report's computation
    (:func:`pipeline.report._cache`, at list prices via ``prices``) run per tenant."""
    out = []
    for t in tenants:
        sec = R._cache(q.con, R.Slice(q.period, t), q.settings)
        for r in sec.rows:
            if r["provider"] == R.TOTAL_KEY:
                continue
            out.append({"tenant": t, "provider": r["provider"],
                        "cached_tokens": r["cached_tokens"], "saved_usd": money(r["saved_usd"]),
                        "cache_write_tokens": r["cache_write_tokens"],
                        "write_premium_usd": money(r["write_premium_usd"]),
                        "net_saved_usd": money(r["net_saved_usd"])})
    return out


def _unpriced(q: _Q) -> dict[str, list[dict[str, Any]]]:
    """Requests and unpriced requests per tenant (the share), and the unpriced models."""
    per = q.rows(q.calls_cte() + "SELECT tenant, count(*) AS requests, count(*) FILTER "
                 "(NOT priced) AS unpriced FROM c WHERE kind = 'llm' GROUP BY tenant "
                 "ORDER BY tenant")
    models = q.rows(q.calls_cte() + """
SELECT tenant, coalesce(response_model, request_model, '(unknown)') AS model,
       coalesce(provider, '(unknown)') AS provider, count(*) AS requests
FROM c WHERE kind = 'llm' AND NOT priced GROUP BY ALL
ORDER BY requests DESC, tenant, model, provider""")
    return {"tenants": per, "models": models}


def _tenants(q: _Q) -> list[str]:
    """Tenants with calls or aggregates in the period (the filter's choices)."""
    if q.tenant is not None:
        return [q.tenant]
    sql = (q.calls_cte() + "SELECT DISTINCT tenant FROM c UNION SELECT DISTINCT tenant "
           f"FROM agg_1m WHERE {q.agg_where()} ORDER BY 1")
    return [r["tenant"] for r in q.rows(sql)]


def colours(names: list[str]) -> dict[str, str]:
    """One colour per name, by sorted order: the same team or model has the same colour
    in every chart of a page."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(set(names)))}


def data(con: duckdb.DuckDBPyConnection, settings: Settings, period: R.Period | str,
         tenant: str | None = None, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Every figure of the page, JSON-ready (money as exact decimal strings), for one
    period (a :class:`pipeline.report.Period` or ``--since`` text) and optionally one
    tenant; ``now`` ends relative periods."""
    if isinstance(period, str):
        period = R.parse_period(period, now=now)
    grain = grain_for(period)
    ts = buckets(period, grain)
    idx = _index(ts)
    q = _Q(con, settings, period, tenant, grain)
    tenants = _tenants(q)
    by_team, by_model = _series(q, idx, "team"), _series(q, idx, "model")
    latency = _latency(q)
    budgets = _budgets(q)
    alerts, sessions = _alerts(q)
    teams = [r[2] for r in by_team] + [b["name"] for b in budgets if b["scope"] == "team"]
    models = [r[2] for r in by_model] + [r["model"] for r in latency]
    return {
        "title": "LLM spend dashboard",
        "period": {"start": _iso(period.start), "end": _iso(period.end),
                   "label": period.label, "describe": period.describe(), "grain": grain},
        "tenant": tenant, "tenants": tenants,
        "buckets": [_iso(t) for t in ts],
        "colors": {"team": colours(teams), "model": colours(models)},
        "spend_by_team": by_team, "spend_by_model": by_model,
        "unit_cost": _unit_cost(q, idx), "unit_totals": _unit_totals(q),
        "latency": latency, "rates": _rates(q, idx), "budgets": budgets,
        "alerts": alerts, "sessions": sessions,
        "top_sessions": _top_sessions(q), "top_agents": _top_agents(q),
        "cache": _cache(q, tenants), "unpriced": _unpriced(q),
        "timeout_ms": float(settings.aggregate.timeout_ms),
    }


# ------------------------------------------------------------------ the page


def _json_for_script(d: dict[str, Any]) -> str:
    """JSON that cannot close its ``<script>`` (``<``, ``>``, ``&`` escaped)."""
    text = json.dumps(d, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("spend-team", "Spend by team", "USD per bucket, stacked; hover a bar for its value."),
    ("spend-model", "Spend by model", "USD per bucket, stacked (priced model)."),
    ("unit-cost", "Cost per business unit",
     "USD per distinct unit_id in each bucket, per unit_type (LLM calls naming a unit)."),
    ("latency", "Latency per model (whole period)",
     "P50 / P95 / P99 from the 1-minute sketches (1 % buckets)."),
    ("rates", "Error, timeout, fallback and escalation rates",
     "Errors and timeouts per call; fallbacks and escalations per LLM call (agg_1m)."),
    ("budgets", "Budget burn-down",
     "Spend so far in each budget's current period, and where it ends at this rate."),
    ("alerts", "Alerts timeline", "First to last seen; click an incident for details."),
    ("top-sessions", "Top 10 sessions by cost (whole period)", ""),
    ("top-agents", "Top 10 agents by cost (whole period)", ""),
    ("cache", "Prompt cache savings (whole period, list prices)",
     "Cached tokens x (input - cache read price), minus the cache-write premium."),
    ("unpriced", "Unpriced calls (whole period)",
     "LLM calls without a price: their cost is unknown and in no total."),
)

_CSS = """
*{box-sizing:border-box}body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,
sans-serif;margin:0;background:#f5f6f8;color:#1d2330}header{background:#1d2330;color:#fff;
padding:14px 24px}header h1{margin:0;font-size:20px}header .sub{opacity:.8;font-size:13px}
#filters{display:flex;gap:16px;flex-wrap:wrap;padding:10px 24px;background:#fff;
border-bottom:1px solid #dde1e7;position:sticky;top:0;z-index:2}#filters label{font-size:13px}
select{font:inherit;padding:2px 4px}main{display:grid;grid-template-columns:repeat(auto-fit,
minmax(520px,1fr));gap:16px;padding:16px 24px}section{background:#fff;border:1px solid #dde1e7;
border-radius:6px;padding:12px 16px;min-width:0}section h2{font-size:16px;margin:0 0 2px}
.note{color:#5b6474;font-size:12px;margin:0 0 8px}.total{font-weight:600;margin:4px 0}
.empty{color:#5b6474;font-style:italic;padding:24px 0;text-align:center}
svg{display:block;max-width:100%}svg text{font-size:11px;fill:#3b4250}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:12px;margin-top:4px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{padding:3px 6px;
border-bottom:1px solid #eef0f3;text-align:left}td.n,th.n{text-align:right;
font-variant-numeric:tabular-nums}.sev-critical{color:#c0392b}.sev-warning{color:#b9770e}
.sev-info{color:#2e86c1}#drill{margin-top:8px}.wide{grid-column:1/-1}
.alert-row{cursor:pointer}footer{padding:8px 24px 24px;color:#5b6474;font-size:12px}
"""

_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("llmspend-data").textContent);
  var SCALE = 1000000000000n;
  var NS = "http://www.w3.org/2000/svg";
  var SEV = {critical: "#c0392b", warning: "#e67e22", info: "#3498db"};
  var state = {tenant: "", from: 0, to: Math.max(0, D.buckets.length - 1)};

  function pico(s) {            // exact decimal string -> BigInt pico-USD
    if (s === null || s === undefined) { return 0n; }
    var neg = s.charAt(0) === "-"; if (neg) { s = s.slice(1); }
    var parts = s.split("."), frac = (parts[1] || "").padEnd(12, "0").slice(0, 12);
    var v = BigInt(parts[0] || "0") * SCALE + BigInt(frac);
    return neg ? -v : v;
  }
  function dec(p) {             // BigInt pico-USD -> exact decimal string
    var neg = p < 0n; if (neg) { p = -p; }
    var f = (p % SCALE).toString().padStart(12, "0");
    return (neg ? "-" : "") + (p / SCALE).toString() + "." + f;
  }
  function usd(x) {             // for people: cents from 1 USD, 4 places from a cent
    var a = Math.abs(x), d = a >= 1 || a === 0 ? 2 : a >= 0.01 ? 4 : 6;
    return x.toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d}) +
      " USD";
  }
  function usdP(p) { return usd(Number(p) / 1e12); }
  function ms(x) {
    if (x === null || x === undefined) { return "n/a"; }
    return x < 1000 ? Math.round(x) + " ms" : (x / 1000).toFixed(1) + " s";
  }
  function pct(x) { return x === null || isNaN(x) ? "n/a" : (x * 100).toFixed(2) + " %"; }
  function int(x) { return (x || 0).toLocaleString("en-US"); }
  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 16) + " UTC" : ""; }
  function label(i) {
    var b = D.buckets[i] || "";
    return D.period.grain === "day" ? b.slice(0, 10) : b.slice(5, 16).replace("T", " ");
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function svg(tag, attrs, title) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (title) { var t = document.createElementNS(NS, "title"); t.textContent = title;
      e.appendChild(t); }
    return e;
  }
  function tenantOk(t) { return !state.tenant || t === state.tenant || t === "*"; }
  function inRange(i) { return i >= state.from && i <= state.to; }
  function body(id) {
    var c = document.getElementById(id), b = c.querySelector(".body");
    b.textContent = ""; return [c, b];
  }
  function empty(c, b, msg) {
    b.appendChild(el("div", {"class": "empty"}, msg || "No data for this selection."));
    c.setAttribute("data-total", "{}"); c.setAttribute("data-empty", "true");
  }
  function filled(c, totals) {
    c.setAttribute("data-total", JSON.stringify(totals)); c.removeAttribute("data-empty");
  }
  function color(kind, name) { return (D.colors[kind] || {})[name] || "#999"; }
  function legend(b, kind, names) {
    var l = el("div", {"class": "legend"});
    names.forEach(function (n) {
      var s = el("span"); s.appendChild(el("span", {"class": "sw",
        style: "background:" + color(kind, n)}));
      s.appendChild(document.createTextNode(n)); l.appendChild(s);
    });
    b.appendChild(l);
  }
  function xAxis(g, x0, w, y, n) {
    var ticks = Math.min(n, 6);
    for (var k = 0; k < ticks; k++) {
      var i = state.from + Math.round(k * (n - 1) / Math.max(1, ticks - 1));
      var x = x0 + (i - state.from + 0.5) * w / n;
      g.appendChild(svg("text", {x: x, y: y, "text-anchor": "middle"})).textContent = label(i);
    }
  }

  // Horizontal grid lines and labels at 0, half and the maximum of a chart's y axis.
  function yGrid(g, W, H, L, B, max, sy, fmt) {
    [0, 0.5, 1].forEach(function (f) {
      var y = H - B - f * max * sy;
      g.appendChild(svg("line", {x1: L, x2: W, y1: y, y2: y, stroke: "#eef0f3"}));
      g.appendChild(svg("text", {x: L - 4, y: y + 4, "text-anchor": "end"})).textContent =
        fmt(f * max);
    });
  }

  function stacked(id, rows, kind) {
    var cb = body(id), c = cb[0], b = cb[1], n = state.to - state.from + 1;
    var per = {}, totals = {}, all = 0n;
    rows.forEach(function (r) {
      if (!inRange(r[0]) || !tenantOk(r[1])) { return; }
      var v = pico(r[3]); per[r[2]] = per[r[2]] || {};
      per[r[2]][r[0]] = (per[r[2]][r[0]] || 0n) + v;
      totals[r[2]] = (totals[r[2]] || 0n) + v; all += v;
    });
    var names = Object.keys(totals).sort(function (a, z) {
      return totals[z] > totals[a] ? 1 : totals[z] < totals[a] ? -1 : a < z ? -1 : 1; });
    if (!names.length) { return empty(c, b, "No spend in this time range."); }
    var W = 640, H = 240, L = 84, B = 22, max = 0, stack = [];
    for (var i = state.from; i <= state.to; i++) {
      var s = 0; names.forEach(function (k) { s += Number((per[k] || {})[i] || 0n) / 1e12; });
      stack.push(s); max = Math.max(max, s);
    }
    var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img"});
    var bw = (W - L) / n, sy = (H - B - 8) / (max || 1);
    yGrid(g, W, H, L, B, max, sy, usd);
    for (i = state.from; i <= state.to; i++) {
      var y = H - B;
      names.forEach(function (k) {
        var v = (per[k] || {})[i]; if (!v) { return; }
        var h = Number(v) / 1e12 * sy;
        y -= h;
        g.appendChild(svg("rect", {x: L + (i - state.from) * bw + 0.5, y: y,
          width: Math.max(1, bw - 1), height: Math.max(0.5, h), fill: color(kind, k)},
          label(i) + " · " + k + ": " + usdP(v)));
      });
    }
    xAxis(g, L, W - L, H - 6, n);
    b.appendChild(el("div", {"class": "total"}, "Total: " + usdP(all)));
    b.appendChild(g); legend(b, kind, names);
    var t = {usd: dec(all)}; names.forEach(function (k) { t[k] = dec(totals[k]); });
    filled(c, t);
  }

  function lines(b, series, fmt, kinds) {
    var n = state.to - state.from + 1, W = 640, H = 220, L = 84, B = 22, max = 0;
    Object.keys(series).forEach(function (k) { series[k].forEach(function (v) {
      if (v !== null) { max = Math.max(max, v); } }); });
    var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img"});
    var sx = (W - L) / n, sy = (H - B - 8) / (max || 1);
    yGrid(g, W, H, L, B, max, sy, fmt);
    Object.keys(series).forEach(function (k) {
      var pts = [], col = kinds[k];
      series[k].forEach(function (v, j) {
        if (v === null) { return; }
        var x = L + (j + 0.5) * sx, y = H - B - v * sy; pts.push(x + "," + y);
        g.appendChild(svg("circle", {cx: x, cy: y, r: 2.5, fill: col},
          label(state.from + j) + " · " + k + ": " + fmt(v)));
      });
      if (pts.length > 1) { g.insertBefore(svg("polyline", {points: pts.join(" "),
        fill: "none", stroke: col, "stroke-width": 1.5}), g.firstChild); }
    });
    xAxis(g, L, W - L, H - 6, n); b.appendChild(g);
  }

  function unitCost() {
    var cb = body("unit-cost"), c = cb[0], b = cb[1], n = state.to - state.from + 1;
    var cost = {}, units = {}, tc = {}, tu = {};
    D.unit_cost.forEach(function (r) {
      if (!inRange(r[0]) || !tenantOk(r[1])) { return; }
      var k = r[2]; cost[k] = cost[k] || {}; units[k] = units[k] || {};
      cost[k][r[0]] = (cost[k][r[0]] || 0n) + pico(r[3]);
      units[k][r[0]] = (units[k][r[0]] || 0) + r[4];
      tc[k] = (tc[k] || 0n) + pico(r[3]); tu[k] = (tu[k] || 0) + r[4];
    });
    var types = Object.keys(cost).sort();
    if (!types.length) { return empty(c, b, "No calls name a business unit here."); }
    var series = {}, cols = {}, pal = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1"];
    types.forEach(function (k, ti) {
      cols[k] = pal[ti % pal.length]; series[k] = [];
      for (var i = state.from; i <= state.to; i++) {
        var u = units[k][i]; series[k].push(u ? Number(cost[k][i]) / 1e12 / u : null);
      }
    });
    var t = {};
    types.forEach(function (k) { t[k] = {usd: dec(tc[k]), unit_buckets: tu[k]}; });
    var tot = D.unit_totals.filter(function (r) { return tenantOk(r.tenant); });
    var line = types.map(function (k) {
      var cs = 0n, us = 0; tot.forEach(function (r) { if (r.unit_type === k) {
        cs += pico(r.cost_usd); us += r.units; } });
      return k + ": " + (us ? usd(Number(cs) / 1e12 / us) : "n/a") + " per unit over the period";
    });
    b.appendChild(el("div", {"class": "total"}, line.join(" · ")));
    lines(b, series, usd, cols);
    var l = el("div", {"class": "legend"});
    types.forEach(function (k) { var s = el("span"); s.appendChild(el("span", {"class": "sw",
      style: "background:" + cols[k]})); s.appendChild(document.createTextNode(k));
      l.appendChild(s); });
    b.appendChild(l); filled(c, t);
  }

  function rates() {
    var cb = body("rates"), c = cb[0], b = cb[1], n = state.to - state.from + 1;
    var acc = [], T = [0, 0, 0, 0, 0, 0];
    for (var i = 0; i < n; i++) { acc.push([0, 0, 0, 0, 0, 0]); }
    D.rates.forEach(function (r) {
      if (!inRange(r[0]) || !tenantOk(r[1])) { return; }
      for (var j = 0; j < 6; j++) { acc[r[0] - state.from][j] += r[2 + j]; T[j] += r[2 + j]; }
    });
    if (!T[0]) { return empty(c, b, "No calls in this time range."); }
    var defs = [["errors", 2, 0, "#e15759"], ["timeouts", 3, 0, "#f28e2b"],
      ["fallbacks", 4, 1, "#4e79a7"], ["escalations", 5, 1, "#b07aa1"]];
    var series = {}, cols = {};
    defs.forEach(function (d) {
      cols[d[0]] = d[3];
      series[d[0]] = acc.map(function (a) { return a[d[2]] ? a[d[1]] / a[d[2]] : null; });
    });
    b.appendChild(el("div", {"class": "total"}, defs.map(function (d) {
      return d[0] + " " + pct(T[d[2]] ? T[d[1]] / T[d[2]] : null); }).join(" · ")));
    lines(b, series, pct, cols);
    var l = el("div", {"class": "legend"});
    defs.forEach(function (d) { var s = el("span"); s.appendChild(el("span", {"class": "sw",
      style: "background:" + d[3]})); s.appendChild(document.createTextNode(d[0]));
      l.appendChild(s); });
    b.appendChild(l);
    filled(c, {calls: T[0], llm_calls: T[1], errors: T[2], timeouts: T[3], fallbacks: T[4],
      escalations: T[5]});
  }

  function latency() {
    var cb = body("latency"), c = cb[0], b = cb[1];
    var want = state.tenant || "*";
    var rows = D.latency.filter(function (r) { return r.tenant === want; });
    if (!rows.length) { return empty(c, b, "No latency measured."); }
    rows.sort(function (a, z) { return (z.p95_ms || 0) - (a.p95_ms || 0); });
    var W = 640, rowH = 22, L = 150, H = rows.length * rowH + 24, max = 0;
    rows.forEach(function (r) { max = Math.max(max, r.p99_ms || 0); });
    var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img"}), sx = (W - L - 70) / max;
    rows.forEach(function (r, k) {
      var y = k * rowH + 4;
      g.appendChild(svg("text", {x: L - 6, y: y + 13, "text-anchor": "end"})).textContent =
        r.model;
      [["p99_ms", 0.35], ["p95_ms", 0.65], ["p50_ms", 1]].forEach(function (q) {
        g.appendChild(svg("rect", {x: L, y: y + 2, height: rowH - 8,
          width: Math.max(1, (r[q[0]] || 0) * sx), fill: color("model", r.model),
          "fill-opacity": q[1]}, r.model + " " + q[0].slice(0, 3).toUpperCase() + ": " +
          ms(r[q[0]]) + " (" + int(r.calls) + " calls)"));
      });
      g.appendChild(svg("text", {x: L + (r.p99_ms || 0) * sx + 4, y: y + 13}))
        .textContent = ms(r.p95_ms) + " P95";
    });
    b.appendChild(el("div", {"class": "note"}, "Bars: P50 (solid), P95, P99 (faint)."));
    b.appendChild(g);
    var t = {}; rows.forEach(function (r) { t[r.model] = {p50_ms: r.p50_ms, p95_ms: r.p95_ms,
      p99_ms: r.p99_ms, calls: r.calls}; });
    filled(c, t);
  }

  function budgets() {
    var cb = body("budgets"), c = cb[0], b = cb[1];
    var rows = D.budgets.filter(function (r) { return tenantOk(r.tenant); });
    if (!rows.length) { return empty(c, b, "No budgets configured (budgets.limits)."); }
    var W = 640, rowH = 34, L = 200, H = rows.length * rowH + 8;
    var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img"}), t = {};
    rows.forEach(function (r, k) {
      var y = k * rowH + 4, lim = Number(r.limit_usd), spent = Number(r.spent_usd);
      var proj = Number(r.projected_usd), max = Math.max(lim, proj, spent) || 1;
      var sx = (W - L - 10) / max, over = proj > lim;
      g.appendChild(svg("text", {x: L - 6, y: y + 12, "text-anchor": "end"})).textContent =
        (r.name || r.tenant) + " (" + r.period + ")";
      g.appendChild(svg("text", {x: L - 6, y: y + 25, "text-anchor": "end"})).textContent =
        r.scope + " · " + r.tenant;
      g.appendChild(svg("rect", {x: L, y: y + 4, width: lim * sx, height: 18, fill: "#eef0f3"},
        "limit " + usd(lim)));
      g.appendChild(svg("rect", {x: L, y: y + 4, width: Math.max(1, spent * sx), height: 18,
        fill: over ? "#e15759" : "#59a14f"}, "spent " + usd(spent) + " (" +
        r.used_pct.toFixed(1) + " % of " + usd(lim) + ", " + (r.elapsed * 100).toFixed(1) +
        " % of the period elapsed)"));
      g.appendChild(svg("line", {x1: L + proj * sx, x2: L + proj * sx, y1: y + 1, y2: y + 25,
        stroke: over ? "#c0392b" : "#1d2330", "stroke-dasharray": "3,2", "stroke-width": 2},
        "projected end of period: " + usd(proj) + " (" + r.projected_pct.toFixed(1) + " %)"));
      g.appendChild(svg("line", {x1: L + lim * sx, x2: L + lim * sx, y1: y, y2: y + 26,
        stroke: "#1d2330"}, "limit " + usd(lim)));
      t[r.budget] = {spent_usd: r.spent_usd, limit_usd: r.limit_usd,
        projected_usd: r.projected_usd};
    });
    b.appendChild(el("div", {"class": "note"}, "Bar: spent; dark line: limit; dashed: " +
      "projected end of period (red when over). Budget periods hold " + when(D.period.end) +
      "."));
    b.appendChild(g); filled(c, t);
  }

  function alerts() {
    var cb = body("alerts"), c = cb[0], b = cb[1];
    var t0 = Date.parse(D.buckets[state.from] || D.period.start);
    var t1 = state.to + 1 < D.buckets.length ? Date.parse(D.buckets[state.to + 1]) :
      Date.parse(D.period.end);
    var rows = D.alerts.filter(function (a) {
      var f = Date.parse(a.first_seen), l = Date.parse(a.last_seen || a.first_seen);
      return tenantOk(a.tenant) && f < t1 && l >= t0; });
    if (!rows.length) { return empty(c, b, "No alerts in this time range."); }
    // A full-width chart: drawn at about its on-screen size, so labels stay 11px.
    var W = 1280, rowH = 20, L = 340, H = rows.length * rowH + 10, sx = (W - L - 4) / (t1 - t0);
    var g = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img"}), bySev = {};
    rows.forEach(function (a, k) {
      var y = k * rowH + 4, f = Math.max(Date.parse(a.first_seen), t0);
      var l = Math.min(Date.parse(a.last_seen || a.first_seen), t1);
      bySev[a.severity] = (bySev[a.severity] || 0) + 1;
      var row = svg("g", {"class": "alert-row", "data-key": a.dedup_key});
      row.appendChild(svg("text", {x: L - 6, y: y + 12, "text-anchor": "end"})).textContent =
        (a.detector + " · " + (a.subject || "")).slice(0, 54);
      row.appendChild(svg("rect", {x: L + (f - t0) * sx, y: y + 2, height: rowH - 6,
        width: Math.max(4, (l - f) * sx), fill: SEV[a.severity] || "#999", rx: 2},
        a.severity + " · " + a.state + " · " + a.summary + " (" + when(a.first_seen) + " to " +
        when(a.last_seen) + ")"));
      row.addEventListener("click", function () { drill(a); });
      g.appendChild(row);
    });
    b.appendChild(g);
    b.appendChild(el("div", {id: "drill"}, "Click an incident for its details."));
    filled(c, {alerts: rows.length, by_severity: bySev});
  }

  function table(b, cols, rows) {
    var tb = el("table"), tr = el("tr");
    cols.forEach(function (k) { tr.appendChild(el("th", k[2] ? {"class": "n"} : {}, k[0])); });
    tb.appendChild(tr);
    rows.forEach(function (r) {
      var row = el("tr");
      cols.forEach(function (k) { row.appendChild(el("td", k[2] ? {"class": "n"} : {},
        k[1](r))); });
      tb.appendChild(row);
    });
    b.appendChild(tb);
  }

  function drill(a) {
    var d = document.getElementById("drill"); d.textContent = "";
    d.appendChild(el("div", {"class": "total sev-" + a.severity}, a.severity + " · " +
      a.detector + " · " + a.subject_kind + " " + a.subject + " (" + a.tenant + ") · " +
      a.state));
    d.appendChild(el("p", {}, a.summary));
    d.appendChild(el("div", {"class": "note"}, "State changes: " + a.events.map(function (e) {
      return when(e[0]) + " " + e[1] + "/" + e[2]; }).join("; ")));
    var calls = a.session ? D.sessions[a.session] || [] : [];
    if (!a.session) { return; }
    if (!calls.length) { d.appendChild(el("div", {"class": "empty"},
      "No calls of this session in the lake.")); return; }
    table(d, [["Time", function (r) { return r[0].slice(11, 23); }],
      ["Kind", function (r) { return r[1]; }], ["Model", function (r) { return r[2] || ""; }],
      ["In tok", function (r) { return int(r[3]); }, 1],
      ["Out tok", function (r) { return int(r[4]); }, 1],
      ["Cost", function (r) { return r[6] === null ? "" : usd(Number(r[6])); }, 1],
      ["Tool", function (r) { return r[7] || ""; }],
      ["Status", function (r) { return r[8]; }]], calls);
  }

  function top(id, rows, key, cols) {
    var cb = body(id), c = cb[0], b = cb[1];
    rows = rows.filter(function (r) { return tenantOk(r.tenant); });
    rows.sort(function (a, z) { var x = pico(z.cost_usd) - pico(a.cost_usd);
      return x > 0n ? 1 : x < 0n ? -1 : a.tenant < z.tenant ? -1 : a.tenant > z.tenant ? 1 :
        a[key] < z[key] ? -1 : 1; });
    rows = rows.slice(0, 10);
    if (!rows.length) { return empty(c, b); }
    table(b, cols, rows);
    var s = 0n; rows.forEach(function (r) { s += pico(r.cost_usd); });
    filled(c, {usd: dec(s), rows: rows.length});
  }

  function cache() {
    var cb = body("cache"), c = cb[0], b = cb[1], per = {}, T = [0, 0n, 0, 0n];
    D.cache.forEach(function (r) {
      if (!tenantOk(r.tenant)) { return; }
      var p = per[r.provider] = per[r.provider] || [0, 0n, 0, 0n];
      var v = [r.cached_tokens, pico(r.saved_usd), r.cache_write_tokens,
        pico(r.write_premium_usd)];
      for (var j = 0; j < 4; j++) { p[j] += v[j]; T[j] += v[j]; }
    });
    var names = Object.keys(per).sort();
    if (!names.length) { return empty(c, b, "No cached tokens in this period."); }
    b.appendChild(el("div", {"class": "total"}, "Net saved: " + usdP(T[1] - T[3])));
    table(b, [["Provider", function (k) { return k; }],
      ["Cached tokens", function (k) { return int(per[k][0]); }, 1],
      ["Saved", function (k) { return usdP(per[k][1]); }, 1],
      ["Write premium", function (k) { return usdP(per[k][3]); }, 1],
      ["Net saved", function (k) { return usdP(per[k][1] - per[k][3]); }, 1]], names);
    filled(c, {cached_tokens: T[0], saved_usd: dec(T[1]), write_premium_usd: dec(T[3]),
      net_saved_usd: dec(T[1] - T[3])});
  }

  function unpriced() {
    var cb = body("unpriced"), c = cb[0], b = cb[1], req = 0, un = 0, per = {};
    D.unpriced.tenants.forEach(function (r) { if (tenantOk(r.tenant)) {
      req += r.requests; un += r.unpriced; } });
    D.unpriced.models.forEach(function (r) { if (tenantOk(r.tenant)) {
      var k = r.model + " (" + r.provider + ")"; per[k] = (per[k] || 0) + r.requests; } });
    if (!req) { return empty(c, b, "No LLM calls in this period."); }
    b.appendChild(el("div", {"class": "total"}, int(un) + " of " + int(req) +
      " LLM calls unpriced (" + pct(un / req) + ")"));
    var names = Object.keys(per).sort(function (a, z) { return per[z] - per[a] ||
      (a < z ? -1 : 1); }).slice(0, 10);
    if (names.length) { table(b, [["Model", function (k) { return k; }],
      ["Calls", function (k) { return int(per[k]); }, 1],
      ["Share of calls", function (k) { return pct(per[k] / req); }, 1]], names); }
    filled(c, {requests: req, unpriced: un});
  }

  function draw() {
    stacked("spend-team", D.spend_by_team, "team");
    stacked("spend-model", D.spend_by_model, "model");
    unitCost(); latency(); rates(); budgets(); alerts();
    top("top-sessions", D.top_sessions, "session_id", [
      ["Tenant", function (r) { return r.tenant; }],
      ["Session", function (r) { return r.session_id; }],
      ["Agent", function (r) { return r.agent || ""; }],
      ["Team", function (r) { return r.team || ""; }],
      ["Requests", function (r) { return int(r.requests); }, 1],
      ["Tool calls", function (r) { return int(r.tools); }, 1],
      ["Cost", function (r) { return usd(Number(r.cost_usd)); }, 1]]);
    top("top-agents", D.top_agents, "agent", [
      ["Tenant", function (r) { return r.tenant; }],
      ["Agent", function (r) { return r.agent; }],
      ["Sessions", function (r) { return int(r.sessions); }, 1],
      ["Requests", function (r) { return int(r.requests); }, 1],
      ["Cost", function (r) { return usd(Number(r.cost_usd)); }, 1]]);
    cache(); unpriced();
  }

  function filters() {
    var t = document.getElementById("f-tenant"), a = document.getElementById("f-from"),
      z = document.getElementById("f-to");
    D.tenants.forEach(function (n) { t.appendChild(el("option", {value: n}, n)); });
    D.buckets.forEach(function (x, i) {
      a.appendChild(el("option", {value: i}, label(i)));
      z.appendChild(el("option", {value: i}, label(i)));
    });
    z.value = String(state.to);
    t.addEventListener("change", function () { state.tenant = t.value; draw(); });
    a.addEventListener("change", function () { state.from = +a.value;
      if (state.to < state.from) { state.to = state.from; z.value = a.value; } draw(); });
    z.addEventListener("change", function () { state.to = +z.value;
      if (state.from > state.to) { state.from = state.to; a.value = z.value; } draw(); });
  }

  filters(); draw();
})();
"""


def render(d: dict[str, Any]) -> str:
    """One self-contained HTML page of ``data()``'s dict: inline CSS, the data as JSON,
    inline JS that draws SVG charts and filters by tenant and time range."""
    e = html.escape
    title = e(d.get("title") or "LLM spend dashboard")
    tenant = d.get("tenant")
    sections = []
    for cid, name, note in _SECTIONS:
        wide = " wide" if cid in ("alerts",) else ""
        sections.append(
            f'<section id="{cid}" data-chart="{cid}" data-total="{{}}" class="chart{wide}">'
            f"<h2>{e(name)}</h2>" + (f'<p class="note">{e(note)}</p>' if note else "")
            + '<div class="body"><div class="empty">Loading… (this page needs '
              "JavaScript)</div></div></section>")
    empty_note = ("" if d.get("tenants") else
                  '<p class="empty" id="no-data">No LLM calls in this period: every '
                  "chart is empty.</p>")
    tenant_opts = ('<option value="">all tenants</option>' if tenant is None else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}: {e(d['period']['describe'])}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{title}</h1><div class="sub">{e(d['period']['describe'])} · tenant
{e(tenant or 'all')} · buckets of one {e(d['period']['grain'])} · money in USD, exact
sums, latency in ms</div></header>
<div id="filters"><label>Tenant <select id="f-tenant">{tenant_opts}</select></label>
<label>From <select id="f-from"></select></label>
<label>To <select id="f-to"></select></label>
<span class="note">The time range narrows the time charts and the alerts; tables and
latency cover the whole period.</span></div>
{empty_note}
<main>
{chr(10).join(sections)}
</main>
<footer>Generated by llmspend from the lake views (calls, agg_1m, alerts, prices).
Spend, latency and rates from agg_1m; unit costs, budgets, top lists, cache savings and
unpriced calls from calls. Unpriced calls have no cost (never zero).</footer>
<script type="application/json" id="llmspend-data">{_json_for_script(d)}</script>
<script>{_JS}</script>
</body></html>
"""


def write(page: str, path: str | Path) -> Path:
    """Write the page atomically (a temporary file in the same directory, fsynced, then
    renamed over ``path``): a browser or a web server never reads half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_server(build: Callable[[], str], host: str = "127.0.0.1",
                port: int = 8050) -> HTTPServer:
    """An HTTP server whose ``GET /`` builds the page afresh (live data); one request at
    a time, so one DuckDB connection is never used by two threads."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/", "/index.html"):
                self._send(404, "text/plain", b"not found\n")
                return
            try:
                body = build().encode("utf-8")
            except Exception as exc:  # noqa: BLE001 (shown to the user, server keeps up)
                self._send(500, "text/plain", f"dashboard failed: {exc}\n".encode())
                return
            self._send(200, "text/html; charset=utf-8", body)

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    return HTTPServer((host, port), Handler)


def serve(build: Callable[[], str], host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve the dashboard until interrupted (``llmspend dashboard --port``)."""
    server = make_server(build, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
