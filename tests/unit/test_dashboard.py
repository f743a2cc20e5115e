"""The offline dashboard (pipeline/dashboard.py) on a lake of real generated traffic
(fixed start 2026-11-10 10:00 UTC, fixed seed and hash key, a runaway loop and an
unknown model) landed by pipeline.lake, no broker. Every figure of ``data()`` is checked
against an independent computation: the Parquet files read with pyarrow (not the
views), sums in Python with Decimal/Fraction, quantiles with pipeline.sketch. The page
must be self-contained, hold every chart and its data, and its JS must parse (and run,
on a tiny fake DOM, when node is installed)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import dashboard as D
from pipeline import sketch
from pipeline.analytics import connect, prices_table
from pipeline.config import load_settings
from pipeline.traffic.offline import land_lake, llm_calls_records
from pipeline.traffic.plan import Options
from schemas.latency_buckets import N_BUCKETS
from tests.unit.lake_rows import calls_once, latest_partials, parquet_rows

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 10, 10, tzinfo=UTC)
BUDGETS = {
    "team:acme/customer-support": {"daily": "1.50", "monthly": "30"},
    "team:globex/growth": {"daily": "0.2"},
    "tenant:globex": {"daily": "10"},
}
ENV = {"LLMSPEND_HASH_KEY": "dashboard-test-key-0123456789abcdef",
       "LLMSPEND_BUDGETS_LIMITS": json.dumps(BUDGETS)}
#: 90 minutes (minute buckets) and the whole day (hour buckets).
PERIODS = ("2026-11-10T09:45..2026-11-10T11:15", "2026-11-10")
NODE = shutil.which("node")


def q12(x: Fraction | Decimal | int) -> Decimal:
    return Decimal(round(Fraction(x) * 10**12)).scaleb(-12)


def m(x: Decimal | int) -> str:
    return format(Decimal(x), "f")


# ------------------------------------------------------------------ the lake


@pytest.fixture(scope="module")
def settings():
    return load_settings(env=ENV)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory, settings):
    opts = Options(seed=3, calls=2400, rate=3, start_time_ns=int(T0.timestamp()) * 10**9,
                   tenants=("acme", "globex"), scenarios=("runaway-loop", "unknown-model"))
    calls = llm_calls_records(opts, settings, 4)
    d = tmp_path_factory.mktemp("dash-lake")
    land_lake(d, calls, 4)
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


@pytest.fixture(scope="module", params=PERIODS)
def built(request, con, settings) -> tuple[dict[str, Any], Any]:
    d = D.data(con, settings, request.param)
    return d, D.R.parse_period(request.param)


@pytest.fixture(scope="module")
def page(con, settings) -> tuple[dict[str, Any], str]:
    d = D.data(con, settings, PERIODS[0])
    return d, D.render(d)


def _bucket(t: dt.datetime, grain: str) -> dt.datetime:
    t = t.replace(second=0, microsecond=0)
    if grain != "minute":
        t = t.replace(minute=0)
    return t.replace(hour=0) if grain == "day" else t


def _in(rows, period, kind=None):
    return [r for r in rows if period.start <= r["start_time"] < period.end
            and (kind is None or r["kind"] == kind)]


def _bi(d, t: dt.datetime) -> int:
    return d["buckets"].index(_bucket(t, d["period"]["grain"]).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _agg_model(r) -> str | None:
    return r["model"] or r["response_model"] or r["request_model"]


# ------------------------------------------------------------------ the figures


def test_the_traffic_is_where_the_periods_look(calls, built):
    d, period = built
    assert len(_in(calls, period)) > 2000
    assert d["tenants"] == ["acme", "globex"]
    assert d["period"]["grain"] == ("minute" if period.length <= dt.timedelta(hours=3)
                                    else "hour")
    assert d["buckets"][0] == D._iso(period.start) and len(d["buckets"]) == (
        90 if d["period"]["grain"] == "minute" else 24)


@pytest.mark.parametrize("key", ["team", "model"])
def test_spend_over_time_equals_the_calls_per_bucket(calls, built, key):
    d, period = built
    want: dict[tuple, Decimal] = defaultdict(Decimal)
    for r in _in(calls, period):
        if r["cost_usd"] is not None:
            k = (r["team"] or "(none)") if key == "team" else (_agg_model(r) or "(none)")
            want[(_bi(d, r["start_time"]), r["tenant"], k)] += r["cost_usd"]
    got = {(b, t, k): Decimal(v) for b, t, k, v in d[f"spend_by_{key}"]}
    assert got == {k: v for k, v in want.items() if v != 0}
    assert all(k in d["colors"][key] for _, _, k, _ in d[f"spend_by_{key}"])


def test_colours_are_one_per_name_and_stable(built):
    d, _ = built
    for kind in ("team", "model"):
        names = sorted(d["colors"][kind])
        assert [d["colors"][kind][n] for n in names] == [
            D.PALETTE[i % len(D.PALETTE)] for i in range(len(names))]


def test_cost_per_unit_equals_cost_over_distinct_units(calls, built):
    d, period = built
    cost: dict[tuple, Decimal] = defaultdict(Decimal)
    units: dict[tuple, set] = defaultdict(set)
    tot_cost: dict[tuple, Decimal] = defaultdict(Decimal)
    tot_units: dict[tuple, set] = defaultdict(set)
    for r in _in(calls, period, "llm"):
        if r["unit_type"] and r["unit_id"]:
            k = (_bi(d, r["start_time"]), r["tenant"], r["unit_type"])
            cost[k] += r["cost_usd"] or 0
            units[k].add(r["unit_id"])
            tot_cost[k[1:]] += r["cost_usd"] or 0
            tot_units[k[1:]].add(r["unit_id"])
    assert {(b, t, u): (Decimal(c), n) for b, t, u, c, n in d["unit_cost"]} == {
        k: (cost[k], len(units[k])) for k in cost}
    assert {(r["tenant"], r["unit_type"]): (r["cost_usd"], r["units"], r["cost_per_unit_usd"])
            for r in d["unit_totals"]} == {
        k: (m(tot_cost[k]), len(tot_units[k]), m(q12(Fraction(tot_cost[k]) / len(tot_units[k]))))
        for k in tot_cost}
    assert len(tot_cost) >= 2


def _quantiles(lat: list[float]) -> tuple:
    counts = np.zeros(N_BUCKETS, np.int64)
    np.add.at(counts, sketch.bucket_indices(np.array(lat, np.float64)), 1)
    return tuple(sketch.quantile(counts, q) for q in (0.5, 0.95, 0.99))


def test_latency_percentiles_per_model_equal_the_sketch_of_the_calls(calls, built):
    d, period = built
    lat: dict[tuple, list[float]] = defaultdict(list)
    for r in _in(calls, period):
        x = r["latency_ms"]
        if _agg_model(r) and x is not None and not math.isnan(x):
            lat[("*", _agg_model(r))].append(x)
            lat[(r["tenant"], _agg_model(r))].append(x)
    got = {(r["tenant"], r["model"]): (r["calls"], r["p50_ms"], r["p95_ms"], r["p99_ms"])
           for r in d["latency"]}
    assert set(got) == set(lat)
    for k, xs in lat.items():
        assert got[k][0] == len(xs)
        assert got[k][1:] == pytest.approx(_quantiles(xs), rel=1e-12), k


def test_rates_count_errors_timeouts_fallbacks_and_escalations(calls, partials, built,
                                                               settings):
    d, period = built
    types = {t.strip() for t in settings.aggregate.timeout_error_types.split(",")}
    want: dict[tuple, list[int]] = defaultdict(lambda: [0] * 6)
    for r in _in(calls, period):
        w = want[(_bi(d, r["start_time"]), r["tenant"])]
        slow = r["latency_ms"] is not None and r["latency_ms"] >= settings.aggregate.timeout_ms
        timeout = (r["status"] == "error" and r["error_type"] in types) or slow
        for j, v in enumerate((1, r["kind"] == "llm", r["status"] == "error", timeout)):
            w[j] += int(v)
    for p in partials:
        if p["view"] == "group" and period.start <= p["window_start"] < period.end:
            w = want[(_bi(d, p["window_start"]), p["tenant"])]
            w[4] += p["fallbacks"]
            w[5] += p["escalations"]
    assert {(r[0], r[1]): r[2:] for r in d["rates"]} == dict(want)
    assert sum(w[2] for w in want.values()) > 0


def test_budget_burn_down_is_spend_so_far_and_its_linear_projection(calls, built):
    d, period = built
    assert [b["budget"] for b in d["budgets"]] == [
        "team:acme/customer-support:daily", "team:acme/customer-support:monthly",
        "team:globex/growth:daily", "tenant:globex:daily"]
    for b in d["budgets"]:
        start = (dt.datetime(2026, 11, 10, tzinfo=UTC) if b["period"] == "daily"
                 else dt.datetime(2026, 11, 1, tzinfo=UTC))
        end = (start + dt.timedelta(days=1) if b["period"] == "daily"
               else dt.datetime(2026, 12, 1, tzinfo=UTC))
        spent = sum((r["cost_usd"] for r in calls
                     if r["cost_usd"] is not None and r["tenant"] == b["tenant"]
                     and (b["scope"] == "tenant" or r["team"] == b["name"])
                     and start <= r["start_time"] < period.end), Decimal(0))
        assert spent > 0
        projected = q12(Fraction(spent) * Fraction((end - start) // dt.timedelta(microseconds=1),
                                                   (period.end - start)
                                                   // dt.timedelta(microseconds=1)))
        limit = Decimal(BUDGETS[b["budget"].rsplit(":", 1)[0]][b["period"]])
        assert (b["period_start"], b["period_end"], b["as_of"]) == (
            D._iso(start), D._iso(end), D._iso(period.end))
        assert Decimal(b["spent_usd"]) == spent and Decimal(b["limit_usd"]) == limit
        assert Decimal(b["projected_usd"]) == projected
        assert b["used_pct"] == pytest.approx(float(spent / limit * 100))
        assert Decimal(b["burn"][-1][1]) == spent and b["burn"][-1][0] == D._iso(period.end)
        cum = [Decimal(v) for _, v in b["burn"]]
        assert cum == sorted(cum)


def test_alerts_timeline_and_the_session_drill_down(lake_dir, calls, built):
    d, period = built
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted(parquet_rows(lake_dir, "alerts"), key=lambda r: r["_kafka_offset"]):
        latest[r["dedup_key"]] = r
    want = sorted((a for a in latest.values()
                   if a["first_seen"] < period.end and (a["last_seen"] or a["first_seen"])
                   >= period.start), key=lambda a: (a["first_seen"], a["dedup_key"]))
    assert [(a["dedup_key"], a["severity"], a["detector"], a["subject"], a["first_seen"]
             .strftime("%Y-%m-%dT%H:%M:%SZ")) for a in want] == [
        (a["dedup_key"], a["severity"], a["detector"], a["subject"], a["first_seen"])
        for a in d["alerts"]]
    sessions = [a for a in d["alerts"] if a["subject_kind"] == "session"]
    assert sessions and any(a["detector"] == "runaway_loop" for a in sessions)
    for a in sessions:
        mine = sorted((r for r in calls if r["tenant"] == a["tenant"]
                       and r["session_id"] == a["subject"]),
                      key=lambda r: (r["start_time"], r["call_id"]))
        rows = d["sessions"][a["session"]]
        assert len(rows) == len(mine) > 10
        assert [(r[1], r[3], r[4], r[6], r[7]) for r in rows] == [
            (r["kind"], r["input_tokens"], r["output_tokens"], money_or_none(r["cost_usd"]),
             r["tool_name"]) for r in mine]
        assert len(a["events"]) >= 1


def money_or_none(x: Decimal | None) -> str | None:
    return None if x is None else m(x)


def _top(groups: dict[tuple, Decimal]) -> set[tuple]:
    out = set()
    for t in {k[0] for k in groups}:
        mine = sorted((k for k in groups if k[0] == t), key=lambda k: (-groups[k], k[1]))
        out |= {(k, m(groups[k])) for k in mine[:10]}
    return out


def test_top_sessions_and_agents_are_the_ten_dearest_of_each_tenant(calls, built):
    d, period = built
    sessions: dict[tuple, Decimal] = defaultdict(Decimal)
    agents: dict[tuple, Decimal] = defaultdict(Decimal)
    for r in _in(calls, period):
        sessions[(r["tenant"], r["session_id"])] += r["cost_usd"] or 0
        if r["agent"]:
            agents[(r["tenant"], r["agent"])] += r["cost_usd"] or 0
    assert {((r["tenant"], r["session_id"]), r["cost_usd"]) for r in d["top_sessions"]} == \
        _top(sessions)
    assert {((r["tenant"], r["agent"]), r["cost_usd"]) for r in d["top_agents"]} == _top(agents)


def test_cache_savings_at_list_prices_of_the_call_price_version(calls, built):
    d, period = built
    tiers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in prices_table().to_pylist():
        tiers[p["price_version"]].append(p)
    saved: dict[tuple, Fraction] = defaultdict(Fraction)
    premium: dict[tuple, Fraction] = defaultdict(Fraction)
    cached: dict[tuple, int] = defaultdict(int)
    for r in _in(calls, period, "llm"):
        if not r["priced"] or not (r["cached_input_tokens"] or r["cache_write_tokens"]):
            continue
        tier = max((p for p in tiers[r["price_version"]] if p["above_input_tokens"] == 0
                    or r["input_tokens"] > p["above_input_tokens"]),
                   key=lambda p: p["above_input_tokens"])
        k = (r["tenant"], r["provider"])
        c, w = r["cached_input_tokens"] or 0, r["cache_write_tokens"] or 0
        cached[k] += c
        saved[k] += Fraction(c) * Fraction(tier["input_usd_per_mtok"]
                                           - tier["cache_read_usd_per_mtok"]) / 10**6
        premium[k] += Fraction(w) * Fraction(tier["cache_write_usd_per_mtok"]
                                             - tier["input_usd_per_mtok"]) / 10**6
    got = {(r["tenant"], r["provider"]): (r["cached_tokens"], Decimal(r["saved_usd"]),
                                          Decimal(r["write_premium_usd"]),
                                          Decimal(r["net_saved_usd"])) for r in d["cache"]}
    assert got == {k: (cached[k], q12(saved[k]), q12(premium[k]),
                       q12(saved[k]) - q12(premium[k])) for k in cached}
    assert sum(cached.values()) > 0


def test_unpriced_calls_count_share_and_models(calls, built):
    d, period = built
    llm = _in(calls, period, "llm")
    per = {t: {"tenant": t, "requests": sum(1 for r in llm if r["tenant"] == t),
               "unpriced": sum(1 for r in llm if r["tenant"] == t and not r["priced"])}
           for t in ("acme", "globex")}
    assert d["unpriced"]["tenants"] == list(per.values())
    models: dict[tuple, int] = defaultdict(int)
    for r in llm:
        if not r["priced"]:
            models[(r["tenant"], r["response_model"] or r["request_model"] or "(unknown)",
                    r["provider"] or "(unknown)")] += 1
    assert {(r["tenant"], r["model"], r["provider"]): r["requests"]
            for r in d["unpriced"]["models"]} == dict(models)
    assert sum(models.values()) > 0


def test_one_tenant_sees_only_its_rows(con, settings):
    d = D.data(con, settings, PERIODS[0], tenant="globex")
    assert d["tenants"] == ["globex"] and d["tenant"] == "globex"
    for key in ("spend_by_team", "spend_by_model", "unit_cost", "rates"):
        assert d[key] and {r[1] for r in d[key]} == {"globex"}
    assert {r["tenant"] for r in d["latency"]} == {"*", "globex"}
    assert {b["tenant"] for b in d["budgets"]} == {"globex"}
    for key in ("top_sessions", "top_agents", "cache"):
        assert {r["tenant"] for r in d[key]} == {"globex"}
    assert all(a["tenant"] in ("globex", "*") for a in d["alerts"])


# ------------------------------------------------------------------ the page


def _scripts(page: str) -> list[tuple[str, str]]:
    return re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)


def test_the_page_embeds_the_data_that_parses_back_to_data(page):
    d, html = page
    blobs = [body for attrs, body in _scripts(html) if 'type="application/json"' in attrs]
    assert len(blobs) == 1
    assert json.loads(blobs[0]) == json.loads(json.dumps(d)) == d


def test_the_page_is_self_contained(page):
    _, html = page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"@import|@font-face|url\(|<link\b|<iframe\b|fetch\(|XMLHttpRequest",
                         html, re.I)
    assert "</script>" not in "".join(body for _, body in _scripts(html))
    assert len(html.encode()) < 1_000_000


def test_the_page_has_every_chart_with_a_stable_id_and_the_tenant_filter(page):
    d, html = page
    for cid in D.CHARTS:
        assert re.search(rf'<section id="{cid}" data-chart="{cid}" data-total=', html), cid
    assert '<select id="f-tenant"><option value="">all tenants</option></select>' in html
    assert d["tenants"] == ["acme", "globex"]
    assert 'id="f-from"' in html and 'id="f-to"' in html


def test_a_script_tag_in_the_data_cannot_break_out(page):
    d, _ = page
    evil = {**d, "title": "x</script><script>alert(1)</script>"}
    html = D.render(evil)
    blobs = [body for attrs, body in _scripts(html) if 'type="application/json"' in attrs]
    assert json.loads(blobs[0])["title"] == evil["title"]
    assert "<script>alert(1)" not in html


def test_an_empty_lake_renders_an_empty_state_page(tmp_path, settings):
    d = D.data(connect(tmp_path), settings, PERIODS[0])
    assert d["tenants"] == [] and not d["spend_by_team"] and not d["alerts"]
    assert all(b["spent_usd"] == "0" and b["projected_usd"] == m(Decimal(0).scaleb(-12))
               for b in d["budgets"])
    html = D.render(d)
    assert 'id="no-data"' in html and "No LLM calls in this period" in html
    if NODE:
        _node_check(html, tmp_path)


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "site" / "dash.html"
    D.write("<p>old</p>", out)
    assert out.read_text() == "<p>old</p>"

    def boom(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        D.write("<p>new</p>", out)
    assert out.read_text() == "<p>old</p>"
    assert [p.name for p in out.parent.iterdir()] == ["dash.html"]


def test_serve_rebuilds_the_page_on_each_get():
    n = {"builds": 0}

    def build() -> str:
        n["builds"] += 1
        return f"<p>build {n['builds']}</p>"

    server = D.make_server(build, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert urllib.request.urlopen(url + "/", timeout=10).read() == b"<p>build 1</p>"
        assert urllib.request.urlopen(url + "/", timeout=10).read() == b"<p>build 2</p>"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + "/other", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ the JS (node)


def _node_check(html: str, tmp: Path) -> None:
    js = [body for attrs, body in _scripts(html) if "application/json" not in attrs]
    assert js
    f = tmp / "page.js"
    f.write_text("\n;\n".join(js))
    res = subprocess.run([NODE, "--check", str(f)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


#: A fake DOM just big enough for the page's script: elements keep attributes and
#: children; after it runs, every chart's data-total is printed as JSON.
_FAKE_DOM = r"""
function E(tag) { this.tag = tag; this.attrs = {}; this.children = []; this.text = "";
  this.value = ""; }
E.prototype.setAttribute = function (k, v) { this.attrs[k] = String(v); };
E.prototype.getAttribute = function (k) { return this.attrs[k]; };
E.prototype.removeAttribute = function (k) { delete this.attrs[k]; };
E.prototype.appendChild = function (c) { this.children.push(c); return c; };
E.prototype.insertBefore = function (c) { this.children.unshift(c); return c; };
E.prototype.addEventListener = function () {};
Object.defineProperty(E.prototype, "firstChild", {get: function () { return this.children[0]; }});
Object.defineProperty(E.prototype, "textContent", {
  get: function () { return this.text; },
  set: function (v) { this.text = String(v); this.children = []; }});
E.prototype.querySelector = function () { return this.body; };
var byId = {};
globalThis.document = {
  getElementById: function (id) {
    if (!byId[id]) { byId[id] = new E("div"); byId[id].body = new E("div"); }
    return byId[id]; },
  createElement: function (t) { return new E(t); },
  createElementNS: function (ns, t) { return new E(t); },
  createTextNode: function (t) { var e = new E("#text"); e.text = t; return e; }};
byId["llmspend-data"] = new E("script");
byId["llmspend-data"].text = require("fs").readFileSync(process.argv[2], "utf8");
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_page_script_runs_and_its_totals_equal_duckdb(page, con, tmp_path):
    d, html = page
    _node_check(html, tmp_path)
    js = next(body for attrs, body in _scripts(html) if "application/json" not in attrs)
    (tmp_path / "data.json").write_text(json.dumps(d))
    dump = ("\nconsole.log(JSON.stringify(Object.fromEntries(" + json.dumps(list(D.CHARTS))
            + ".map(function (k) { return [k, JSON.parse(byId[k].attrs['data-total'] || "
            "'null')]; }))));\n")
    (tmp_path / "run.js").write_text(_FAKE_DOM + js + dump)
    res = subprocess.run([NODE, str(tmp_path / "run.js"), str(tmp_path / "data.json")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    totals = json.loads(res.stdout)
    p = D.R.parse_period(PERIODS[0])
    args = [p.start, p.end]
    by_team = dict(con.execute(
        "SELECT team, sum(cost_usd) FROM calls WHERE start_time >= ? AND start_time < ? "
        "AND cost_usd <> 0 GROUP BY team", args).fetchall())
    assert {k: Decimal(v) for k, v in totals["spend-team"].items() if k != "usd"} == by_team
    all_usd = con.execute("SELECT sum(cost_usd) FROM calls WHERE start_time >= ? AND "
                          "start_time < ?", args).fetchone()[0]
    assert Decimal(totals["spend-team"]["usd"]) == all_usd
    assert Decimal(totals["spend-model"]["usd"]) == all_usd
    n, errors = con.execute("SELECT count(*), count(*) FILTER (status = 'error') FROM calls "
                            "WHERE start_time >= ? AND start_time < ?", args).fetchone()
    assert (totals["rates"]["calls"], totals["rates"]["errors"]) == (n, errors)
    assert totals["alerts"]["alerts"] == len(d["alerts"])
    assert totals["budgets"] == {b["budget"]: {k: b[k] for k in (
        "spent_usd", "limit_usd", "projected_usd")} for b in d["budgets"]}
    assert totals["top-sessions"]["rows"] == 10
    assert totals["unpriced"]["unpriced"] == sum(r["unpriced"] for r in d["unpriced"]["tenants"])
    assert set(totals["latency"]) == {r["model"] for r in d["latency"] if r["tenant"] == "*"}
