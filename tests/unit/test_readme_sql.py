"""The README's analyst questions run, as written, on a lake of generated traffic
(landed by pipeline.lake, no broker) and each answers with rows; `llmspend sql` prints
them in every format and its prompt takes piped statements."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline.analytics import connect, readme_questions
from pipeline.config import load_settings
from pipeline.sql_shell import SqlError, run, shell
from pipeline.traffic.offline import land_lake, llm_calls_records
from pipeline.traffic.plan import Options


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> tuple:
    """Twenty minutes of traffic that ended a few minutes ago (so "the last hour" holds
    it), with a runaway loop and an unknown model: its lake, and when it started."""
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "readme-sql-key-0123456789abcdef"})
    start = (time.time_ns() // 10**9 - 25 * 60) * 10**9
    opts = Options(seed=2, calls=3000, start_time_ns=start, tenants=("acme", "globex"),
                   scenarios=("runaway-loop", "unknown-model"))
    calls = llm_calls_records(opts, settings, 4)
    d = tmp_path_factory.mktemp("lake")
    land_lake(d, calls, 4)
    return d, start


@pytest.fixture(scope="module")
def data_dir(traffic):
    return traffic[0]


def zone_of_the_traffic_day(start_ns: int, now: dt.datetime) -> str:
    """A session time zone in which ``current_date`` is the UTC day of most of the
    traffic: UTC, except in the minutes after UTC midnight, when most of it is still
    yesterday's and "today" (``dt = current_date``) would hold almost none of it."""
    middle = dt.datetime.fromtimestamp(start_ns / 1e9 + 10 * 60, dt.UTC)
    return "UTC" if middle.date() == now.date() else "Etc/GMT+1"   # UTC-1: still yesterday


def test_the_readme_has_ten_analyst_questions():
    assert len(readme_questions()) == 10


@pytest.mark.parametrize("i", range(10))
def test_each_readme_question_answers_with_rows(traffic, i):
    data, start = traffic
    sql = readme_questions()[i]
    con = connect(data)
    con.execute(f"SET TimeZone = '{zone_of_the_traffic_day(start, dt.datetime.now(dt.UTC))}'")
    rows = con.sql(sql).fetchall()
    assert rows, sql.splitlines()[0]


def test_the_traffic_day_zone_keeps_today_on_the_traffic_after_midnight():
    def ns(text: str) -> int:
        return int(dt.datetime.fromisoformat(text).timestamp() * 1e9)

    assert zone_of_the_traffic_day(ns("2026-12-06T14:00:00+00:00"),
                                   dt.datetime.fromisoformat("2026-12-06T14:25:00+00:00")) == "UTC"
    late = zone_of_the_traffic_day(ns("2026-12-06T23:45:00+00:00"),
                                   dt.datetime.fromisoformat("2026-12-07T00:10:00+00:00"))
    con = duckdb.connect()         # what current_date is at that instant in that zone
    con.execute(f"SET TimeZone = '{late}'")
    assert con.execute("SELECT CAST(TIMESTAMPTZ '2026-12-07 00:10:00+00' AS DATE)"
                       ).fetchone()[0] == dt.date(2026, 12, 6)


def test_formats_table_csv_json_and_parquet(data_dir, tmp_path):
    con = connect(data_dir)
    q = "SELECT team, sum(cost_usd) AS usd FROM calls GROUP BY team ORDER BY team"
    expected = con.sql(q).fetchall()
    out = io.StringIO()
    assert run(con, q, "table", stream=out) == len(expected)
    assert out.getvalue().splitlines()[0].split() == ["team", "usd"]
    assert out.getvalue().rstrip().endswith(f"({len(expected)} rows)")
    out = io.StringIO()
    run(con, q, "csv", stream=out)
    assert list(csv.reader(io.StringIO(out.getvalue())))[1] == [expected[0][0],
                                                                str(expected[0][1])]
    out = io.StringIO()
    run(con, q, "json", stream=out)
    assert json.loads(out.getvalue())[0] == {"team": expected[0][0],
                                             "usd": str(expected[0][1])}  # exact money
    run(con, q, "parquet", out=tmp_path / "r.parquet")
    assert pq.read_table(tmp_path / "r.parquet").num_rows == len(expected)
    with pytest.raises(SqlError, match="--out"):
        run(con, q, "parquet")
    with pytest.raises(SqlError, match="syntax"):
        run(con, "SELEC 1")


def test_the_prompt_takes_multi_line_statements_and_dot_commands(data_dir):
    con = connect(data_dir)
    script = ".tables\nSELECT count(*)\n  AS n\nFROM calls;\n.schema alerts\nSELEC;\n.quit\n"
    out = io.StringIO()
    shell(con, stdin=io.StringIO(script), stdout=out)
    text = out.getvalue()
    assert "agg_1m" in text.splitlines()[0] and "calls" in text.splitlines()[0]
    assert re.search(r"^ *n\n-+\n\d+\n\(1 row\)$", text, re.M)
    assert "dedup_key" in text and "error:" in text


def test_llmspend_sql_command(data_dir):
    cmd = [sys.executable, "-m", "pipeline", "sql", "--data-dir", str(data_dir)]
    res = subprocess.run([*cmd, "--format", "csv", "SELECT count(*) AS n FROM calls"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.splitlines()[0] == "n"
    res = subprocess.run([*cmd, "SELECT nope FROM calls"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and "nope" in res.stderr
