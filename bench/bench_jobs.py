"""Lake jobs benchmark: what compaction costs and buys, rollups, erasure and reprice,
on ``--rows`` call rows laid out as the sink writes them (one file per source
partition, ``--flush-s`` flush and hive partition).

Traffic: ``llmspend generate``'s plan through the real OpenTelemetry SDK, normaliser and
aggregator (``pipeline/traffic/offline.py``), copied and shifted in time the way
``bench/bench_lake.py`` does (same helpers), so rows and partials are real.

Measures:

  (c) compaction of every partition (calls, agg_1m): rows/s (read, drop twins, write,
      read back and verify, journaled swap); baseline in the same run: reading the
      same files and writing one file per partition with pyarrow (no dedup, no
      verify, no journal) on a copy of the lake. Ratio = baseline time / job time.
  (q) the README's ten analyst questions before and after compaction (median of 3
      each); ratio = after / before (below 1: compaction made them faster).
  (r) rollups of every day, and a month-style question (cost per day and team) on
      agg_1m against agg_1d; ratio = agg_1d / agg_1m.
  (e) erasure of the user with the most calls: seconds, rows and files rewritten.
  (p) reprice of one day after doubling the input price of the busiest model.

Usage: ``.venv/bin/python bench/bench_jobs.py [--rows 2000000] [--base 100000]
[--days 3] [--flush-s 60] [--threads 2]``. Needs no broker; uses a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lake import PARTITIONS, copies, timed, write_layout

from jobs import journal
from jobs.compact import compact
from jobs.erase import erase
from jobs.partitions import partitions
from jobs.reprice import reprice
from jobs.rollup import rollup
from pipeline import lake
from pipeline.analytics import connect, readme_questions
from pipeline.config import load_settings
from pipeline.lake_fs import LocalFS
from pipeline.traffic.offline import (
    corrected_catalog,
    llm_agg_1m_records,
    llm_calls_records,
    with_offsets,
)
from pipeline.traffic.plan import Options
from schemas import lake as L

KEY = "bench-jobs-key-0123456789abcdef"


def baseline_merge(root: Path) -> float:
    """Seconds to read each partition's files and write them as one file (pyarrow only)."""
    fs = LocalFS(root)
    t0 = time.perf_counter()
    for ds in (L.CALLS, L.AGG_1M):
        for part in partitions(fs, ds):
            table = pa.concat_tables(pq.read_table(root / f, partitioning=None)
                                     for f in part.files)
            pq.write_table(table, root / part.rel_dir / "merged.parquet",
                           compression=L.COMPRESSION, compression_level=L.COMPRESSION_LEVEL)
            for f in part.files:
                (root / f).unlink()
    return time.perf_counter() - t0


def questions(con, runs: int = 3) -> list[float]:
    return [timed(con, sql, runs)[0] for sql in readme_questions()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--base", type=int, default=100_000)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--flush-s", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = load_settings(env={"LLMSPEND_HASH_KEY": KEY})
    tmp = Path(tempfile.mkdtemp(prefix="llmspend-bench-jobs-"))
    try:
        t0 = time.perf_counter()
        opts = Options(seed=9, calls=args.base, start_time_ns=1_764_000_000 * 10**9,
                       tenants=("acme", "globex"))
        calls = llm_calls_records(opts, settings, PARTITIONS)
        scratch = LocalFS(tmp / "scratch")
        base = lake.land(scratch, L.CALLS, with_offsets(calls)).table
        agg_base = lake.land(scratch, L.AGG_1M,
                             with_offsets(llm_agg_1m_records(calls, PARTITIONS))).table
        end_us = int(time.time() * 1e6)
        call_tables = copies(base, args.rows, args.days, "start_time", "call_id", end_us)
        agg_tables = copies(agg_base, agg_base.num_rows * len(call_tables), args.days,
                            "window_start", "agg_id", end_us // 1000)
        root = tmp / "lake"
        files = write_layout(root, L.CALLS, call_tables, args.flush_s)
        files += write_layout(root, L.AGG_1M, agg_tables, args.flush_s)
        rows = sum(t.num_rows for t in call_tables)
        partials = sum(t.num_rows for t in agg_tables)
        print(f"data      {rows:,} call rows + {partials:,} partials over {args.days:g} days "
              f"in {files:,} files (flush {args.flush_s} s, {PARTITIONS} source "
              f"partitions), built in {time.perf_counter() - t0:.0f} s")

        shutil.copytree(root, tmp / "copy")
        base_s = baseline_merge(tmp / "copy")
        shutil.rmtree(tmp / "copy")

        con = connect(root, threads=args.threads)
        before = questions(con)
        fs = LocalFS(root)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)     # every partition closed
        t0 = time.perf_counter()
        with journal.locked(fs):
            c = compact(fs, later, 0, 2, (L.CALLS, L.AGG_1M))
        comp_s = time.perf_counter() - t0
        print(f"(c) compact {c.rows_in / comp_s:>10,.0f} rows/s ({c.partitions} partitions, "
              f"{c.files_in:,} files -> {c.files_out}, {comp_s:.1f} s)  baseline pyarrow "
              f"read + write {c.rows_in / base_s:,.0f} rows/s  ratio {base_s / comp_s:.2f}")

        con = connect(root, threads=args.threads)
        after = questions(con)
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        for i, (b, a) in enumerate(zip(before, after, strict=True), 1):
            print(f"  q{i:<2} before {b * 1000:>8,.0f} ms  after {a * 1000:>8,.0f} ms  "
                  f"ratio {a / b:5.2f}")
        print(f"(q) queries geometric mean ratio after / before compaction: "
              f"{statistics.geometric_mean(ratios):.2f} (DuckDB, {args.threads} threads)")

        t0 = time.perf_counter()
        r = rollup(fs, later, 0)
        roll_s = time.perf_counter() - t0
        con = connect(root, threads=args.threads)
        month = ("SELECT dt, team, sum(cost_usd) FROM {} WHERE view = 'group' "
                 "GROUP BY ALL ORDER BY ALL")
        m_s, m_rows = timed(con, month.format("agg_1m"))
        d_s, _ = timed(con, month.format("agg_1d"))
        same = "same rows" if con.execute(month.format("agg_1m")).fetchall() == \
            con.execute(month.format("agg_1d")).fetchall() else "ROWS DIFFER"
        print(f"(r) rollup  {r.days} days in {roll_s:.1f} s ({r.rows_1h:,} hourly, "
              f"{r.rows_1d:,} daily rows); cost per day and team: agg_1m {m_s * 1000:,.0f} ms"
              f", agg_1d {d_s * 1000:,.0f} ms, ratio {d_s / m_s:.3f} ({m_rows} rows, {same})")

        user = con.execute("SELECT user_id FROM calls WHERE user_id IS NOT NULL "
                           "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
        t0 = time.perf_counter()
        with journal.locked(fs):
            e = erase(fs, KEY.encode(), user_id=user)
        print(f"(e) erase   one user: {e.total:,} rows in {e.files} files rewritten in "
              f"{time.perf_counter() - t0:.1f} s ({e.rows})")

        model, day = con.execute(
            "SELECT model, dt FROM calls WHERE priced AND model IS NOT NULL "
            "GROUP BY ALL ORDER BY count(*) DESC LIMIT 1").fetchone()
        s = load_settings(env={"LLMSPEND_HASH_KEY": KEY, "LLMSPEND_PRICING_CATALOG":
                               str(corrected_catalog(tmp / "catalog.toml", model))})
        t0 = time.perf_counter()
        with journal.locked(fs):
            p = reprice(fs, s, day, day + dt.timedelta(days=1), now=later)
        p_s = time.perf_counter() - t0
        print(f"(p) reprice {day} ({model} input x2): {p.calls_seen:,} calls priced again "
              f"({p.calls_seen / p_s:,.0f}/s), {p.calls_changed:,} changed in {p.files} "
              f"files, {p.aggregates_changed:,} partials adjusted ({p.aggregates_missing:,} "
              f"not found: the benchmark shifts calls and partials apart), cost "
              f"{p.cost_delta_usd:+.4f} USD, {p_s:.1f} s incl. rollup of "
              f"{p.days_rolled_up} day(s)")
        print(f"date      {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
