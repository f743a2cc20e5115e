"""The README's first command, whole: `llmspend demo --duration 60` on its own broker
(other ports, its own state directory), judged against the generator's truth, its KPI
report against DuckDB, and its dashboard in a real headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.analytics import connect
from pipeline.traffic.truth import Truth
from tests.browser import chromium, visit
from tests.integration.kafka_helpers import ctrl_c_reaches_it, free_port, processes_of

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _ours(state: Path) -> list[int]:
    """llmspend services and brokers of ``state`` still running."""
    return processes_of(b"pipeline", state) + processes_of(b"kafka.Kafka", state)


def _own_broker_env(state: Path) -> dict[str, str]:
    """A state directory and ports of its own: the demo starts (and stops) its broker."""
    env = {**os.environ, "LLMSPEND_STATE_DIR": str(state), "LLMSPEND_KAFKA_BOOTSTRAP": "",
           "LLMSPEND_KAFKA_PORT": str(free_port()),
           "LLMSPEND_KAFKA_CONTROLLER_PORT": str(free_port()),
           "LLMSPEND_INGEST_HTTP_PORT": str(free_port()),
           "LLMSPEND_INGEST_GRPC_PORT": str(free_port()),
           "LLMSPEND_STREAM_METRICS_PORT": "0"}
    return {k: v for k, v in env.items() if not k.startswith("LLMSPEND_TEST_")}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo") / "state"
    env = _own_broker_env(state)
    out = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--duration", "60"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return state, out, env


def test_the_demo_lands_the_truth_alerts_and_leaves_nothing_running(demo_run):
    state, out, _env = demo_run
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "demo      ok" in out.stdout
    truth = Truth.from_json((state / "demo" / "truth.json").read_text())
    summary = json.loads((state / "demo" / "summary.json").read_text())
    tenant = summary["tenant"]
    con = connect(state / "data")
    n, cost = con.execute("SELECT count(*), sum(cost_usd) FROM calls WHERE tenant = ?",
                          [tenant]).fetchone()
    assert (n, cost) == (truth.calls, truth.list_cost_usd)
    for model, tally in truth.by_model.items():      # per model too, exactly
        got = con.execute("SELECT count(*) FILTER (kind = 'llm'), sum(cost_usd) FROM calls "
                          "WHERE tenant = ? AND request_model = ?", [tenant, model]).fetchone()
        assert got == (tally.llm_calls, tally.list_cost_usd or None), model
    runaway = next(e for e in truth.scenarios if e["scenario"] == "runaway-loop")
    # Every alert record, not the `alerts` view's latest state per incident: the loop
    # stops, so its incident rightly resolves once the session has been quiet for
    # detect.session_quiet_s, which a slow run's catch-up can outlast.
    alerts = con.execute("SELECT detector, severity, subject, evidence FROM alert_events "
                         "WHERE tenant = ? AND state = 'firing'", [tenant]).fetchall()
    assert ("runaway_loop", "critical") in {(d, s) for d, s, subj, _e in alerts
                                            if subj in runaway["session_ids"]}
    pcts = sorted(json.loads(e)["threshold_pct"] for d, _s, subj, e in alerts
                  if d == "budget" and subj == summary["budget_team"]
                  and "threshold_pct" in json.loads(e))
    assert pcts == [50, 80, 100]
    assert summary["calls_in_lake"] == truth.calls
    assert summary["runaway_critical_alert_latency_s"] is not None
    assert (state / "dashboard.html").stat().st_size > 10_000
    assert _ours(state) == []


def test_the_kpi_report_totals_equal_duckdb_over_the_calls(demo_run):
    state, out, env = demo_run
    assert out.returncode == 0
    summary = json.loads((state / "demo" / "summary.json").read_text())
    tenant = summary["tenant"]
    con = connect(state / "data")
    start, end = con.execute("SELECT min(start_time), max(start_time) FROM calls WHERE "
                             "tenant = ?", [tenant]).fetchone()
    since = start.strftime("%Y-%m-%dT%H:%M")
    until = end.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M")
    rep = subprocess.run([sys.executable, "-m", "pipeline", "report", "--since", since,
                          "--until", until, "--tenant", tenant, "--format", "json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    rows = {r["metric"]: r["value"] for r in next(
        s for s in json.loads(rep.stdout)["sections"] if s["key"] == "summary")["rows"]}
    llm, usd, users = con.execute(
        "SELECT count(*) FILTER (kind = 'llm'), sum(cost_usd), "
        "count(DISTINCT user_id) FILTER (kind = 'llm' AND user_id IS NOT NULL) FROM calls "
        "WHERE tenant = ? AND start_time >= ?::TIMESTAMPTZ AND start_time < ?::TIMESTAMPTZ",
        [tenant, since + ":00Z", until + ":00Z"]).fetchone()
    assert rows["requests"] == llm > 0
    assert Decimal(rows["cost_usd"]) == usd
    assert rows["users"] == users


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_dashboard_draws_every_chart_in_chromium_with_duckdbs_numbers(demo_run, tmp_path):
    from pipeline.dashboard import CHARTS

    state, out, _env = demo_run
    assert out.returncode == 0
    summary = json.loads((state / "demo" / "summary.json").read_text())
    probe = """(() => {
      const charts = {};
      document.querySelectorAll('[data-chart]').forEach(c => { charts[c.id] = {
        total: JSON.parse(c.getAttribute('data-total') || 'null'),
        empty: c.hasAttribute('data-empty'),
        marks: c.querySelectorAll('svg rect, svg path, svg circle, svg line').length,
        rows: c.querySelectorAll('tr').length,
        text: c.innerText }; });
      return {charts, filters: ['f-tenant', 'f-from', 'f-to'].map(
        i => !!document.getElementById(i))};
    })()"""
    shot = tmp_path / "dashboard.png"
    page = visit((state / "dashboard.html").resolve().as_uri(), probe, screenshot=shot)
    assert page.errors == []
    assert page.value["filters"] == [True, True, True]
    charts = page.value["charts"]
    assert set(charts) == set(CHARTS)
    drawn = {k for k, c in charts.items() if not c["empty"] and (c["marks"] or c["rows"])}
    assert drawn == set(CHARTS), {k: c["text"][:200] for k, c in charts.items()
                                  if k not in drawn}
    con = connect(state / "data")
    tenant = summary["tenant"]
    by_team = dict(con.execute("SELECT team, sum(cost_usd) FROM calls WHERE tenant = ? "
                               "AND cost_usd <> 0 GROUP BY team", [tenant]).fetchall())
    total = sum(by_team.values(), Decimal(0))
    shown = charts["spend-team"]["total"]
    assert Decimal(shown.pop("usd")) == total
    assert {k: Decimal(v) for k, v in shown.items()} == by_team
    n, errors = con.execute("SELECT count(*), count(*) FILTER (status = 'error') FROM calls "
                            "WHERE tenant = ?", [tenant]).fetchone()
    assert (charts["rates"]["total"]["calls"], charts["rates"]["total"]["errors"]) == (n,
                                                                                        errors)
    budget = charts["budgets"]["total"]
    assert len(budget) == 1 and Decimal(next(iter(budget.values()))["limit_usd"]) == Decimal(
        summary["budget_daily_usd"])
    assert charts["alerts"]["total"]["alerts"] >= 5   # the loop's 2 + 3 crossings (+ more)
    assert "$" in charts["spend-team"]["text"] or "USD" in charts["spend-team"]["text"]
    assert shot.stat().st_size > 50_000               # a real, full-page picture


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "demo", "--duration", "60",
                             "--no-live"], cwd=ROOT, env=_own_broker_env(state),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_reaches_it)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:          # the first status line: replaying, all running
            if line.startswith("replaying"):
                break
        else:
            pytest.fail("the demo never started replaying: " + proc.stderr.read()[-3000:])
        assert _ours(state)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert _ours(state) == []
