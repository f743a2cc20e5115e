"""`llmspend report` and `llmspend export focus` as a user runs them, on a small lake of
generated traffic: the report's JSON and the export's files agree with the lake."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.analytics import connect
from pipeline.cli import main
from pipeline.config import load_settings
from pipeline.traffic.offline import land_lake, llm_calls_records
from pipeline.traffic.plan import Options

KEY = "lake-cli-test-key-0123456789abcdef"
START = dt.datetime(2026, 11, 10, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    settings = load_settings(env={"LLMSPEND_HASH_KEY": KEY})
    opts = Options(seed=11, calls=800, start_time_ns=int(START.timestamp()) * 10**9)
    calls = llm_calls_records(opts, settings, 2)
    d = tmp_path_factory.mktemp("lake")
    land_lake(d, calls, 2, ("calls", "agg_1m"))
    return d


def _run(*args: str):
    return CliRunner().invoke(main, list(args), env={"LLMSPEND_HASH_KEY": KEY},
                              catch_exceptions=False)


def test_report_json_totals_are_the_lakes(data_dir):
    r = _run("report", "--data-dir", str(data_dir), "--since", "2026-11-10", "--format",
             "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    summary = next(s for s in doc["sections"] if s["key"] == "summary")
    rows = {row["metric"]: row for row in summary["rows"]}
    cost, n = connect(data_dir).execute(
        "SELECT sum(cost_usd), count(*) FROM calls WHERE kind = 'llm'").fetchone()
    assert Decimal(rows["cost_usd"]["value"]) == cost
    assert rows["requests"]["value"] == n


def test_report_compares_two_prompt_versions(data_dir):
    r = _run("report", "--data-dir", str(data_dir), "--since", "2026-11-10", "--compare",
             "prompt_version=ticket-triage-v1..ticket-triage-v2", "--format", "json")
    assert r.exit_code == 0, r.output
    requests = json.loads(r.output)["sections"][0]["rows"][0]
    con = connect(data_dir)
    for side, version in (("a", "ticket-triage-v1"), ("b", "ticket-triage-v2")):
        assert requests[side] == con.execute(
            "SELECT count(*) FROM calls WHERE kind = 'llm' AND prompt_version = $v "
            "AND start_time >= '2026-11-10'", {"v": version}).fetchone()[0] > 0


def test_a_bad_period_is_a_usage_error(data_dir):
    r = _run("report", "--data-dir", str(data_dir), "--since", "yesterday-ish")
    assert r.exit_code == 2 and "Error" in r.output


def test_export_focus_writes_parquet_and_csv_that_sum_to_the_calls(data_dir, tmp_path):
    r = _run("export", "focus", "--month", "2026-11", "--data-dir", str(data_dir), "--out",
             str(tmp_path))
    assert r.exit_code == 0, r.output
    table = pq.read_table(tmp_path / "focus-2026-11.parquet")
    assert (tmp_path / "focus-2026-11.csv").stat().st_size > 0
    cost = connect(data_dir).execute(
        "SELECT sum(cost_usd) FROM calls WHERE kind = 'llm' AND priced").fetchone()[0]
    assert sum(table.column("EffectiveCost").to_pylist(), Decimal(0)) == cost
    bad = _run("export", "focus", "--month", "2026-13", "--data-dir", str(data_dir))
    assert bad.exit_code == 2


def test_dashboard_writes_one_self_contained_page(data_dir, tmp_path):
    out = tmp_path / "d.html"
    r = _run("dashboard", "--data-dir", str(data_dir), "--since", "2026-11-10", "--out",
             str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text()
    assert 'id="llmspend-data"' in html and "data-chart" in html
    assert "https://" not in html.split('id="llmspend-data"')[0]
