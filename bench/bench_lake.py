"""Lake benchmark: landing speed, and the README's analyst queries on ~10 M call rows in
the lake's layout against the same rows in one well-sized Parquet file.

Traffic: ``llmspend generate``'s plan through the real OpenTelemetry SDK, normaliser
and aggregator (``pipeline/traffic/offline.py``), so rows and partials are real.

Measures, on one core unless DuckDB's threads say otherwise:

  (l) landing: ``pipeline.lake.land`` (decode NDJSON records with Arrow, split by hive
      partition, write zstd Parquet, commit) of the base ``llm_calls`` records, rows/s;
      baseline in the same run: ``pyarrow.parquet.write_table`` of the same rows into
      one file at the sink's settings (no decoding, no partitioning, no commit);
  (z) that one file at the sink's zstd level (1) and at compaction's (3): us and
      bytes a row, best of 3 alternated;
  (q) queries: the ten README questions over ``--rows`` call rows (the base calls
      copied with fresh call ids, each copy shifted back in time so the rows cover the
      ``--days`` before now, and their partials likewise), laid out as the sink writes
      them (one file per source partition, flush of ``--flush-s`` and hive partition),
      against the same rows in ONE Parquet file (row groups of 1 M rows, sorted by
      time) read through the same views. Median of 3 runs each; ratio = lake / file.

Usage: ``.venv/bin/python bench/bench_lake.py [--rows 10000000] [--base 200000]
[--days 3] [--flush-s 300] [--threads 2]``. Needs no broker. Uses a temporary
directory (about 1.5 GB at 10 M rows), removed at the end.
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

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import lake
from pipeline.analytics import connect, readme_questions
from pipeline.config import load_settings
from pipeline.lake_fs import LocalFS
from pipeline.traffic.offline import llm_agg_1m_records, llm_calls_records, with_offsets
from pipeline.traffic.plan import Options
from schemas import lake as L

PARTITIONS = 4


def copies(base: pa.Table, n_rows: int, days: float, time_col: str, id_col: str,
           end_us: int) -> list[pa.Table]:
    """``base`` copied until ``n_rows``: copy k has ids suffixed ``-k`` and times moved
    so the copies tile the ``days`` before ``end_us`` (the base's own span each)."""
    t = base.column(time_col).cast(pa.int64())
    per_s = 1_000_000 if base.schema.field(time_col).type.unit == "us" else 1_000
    lo, hi = pc.min(t).as_py(), pc.max(t).as_py()
    k_max = max(1, -(-n_rows // base.num_rows))
    step = max(hi - lo + 1, int(days * 86_400 * per_s / k_max))
    out, left = [], n_rows
    for k in range(k_max):
        part = base.slice(0, min(left, base.num_rows))
        shift = end_us - hi - 1 - k * step
        ts = pc.add(part.column(time_col).cast(pa.int64()), shift).cast(
            part.schema.field(time_col).type)
        part = part.set_column(part.schema.get_field_index(time_col), time_col, ts)
        ids = pc.binary_join_element_wise(part.column(id_col), pa.scalar(f"-{k}"), "")
        part = part.set_column(part.schema.get_field_index(id_col), id_col, ids)
        out.append(part)
        left -= part.num_rows
        if left <= 0:
            break
    return out


def write_layout(root: Path, ds: L.Dataset, tables: list[pa.Table], flush_s: int) -> int:
    """Write rows as the sink would: per source partition and flush window, one file
    per hive partition. Returns the number of files."""
    fs = LocalFS(root)
    n = 0
    for t in tables:
        tcol = t.column(ds.time_column).cast(pa.int64())
        if ds.time_column == "window_start":
            tcol = pc.multiply(tcol, 1000)
        flush = pc.divide(tcol, flush_s * 1_000_000)
        for p in range(PARTITIONS):
            sub = t.filter(pc.equal(t.column(L.KAFKA_PARTITION), p))
            fl = flush.filter(pc.equal(t.column(L.KAFKA_PARTITION), p))
            for f in pc.unique(fl).to_pylist():
                rows = sub.filter(pc.equal(fl, f))
                for rel, part in lake.split(ds, rows).items():
                    fs.write_parquet(f"{rel}/{L.file_name(p, f, f + 1)}", part)
                    n += 1
    return n


def zstd_levels(rows: pa.Table, tmp: Path) -> None:
    """(z) one file of ``rows`` at the sink's zstd level and at compaction's, alternated
    three times (best of each): what the sink saves per row, and what compaction's
    level saves in bytes."""
    best: dict[int, tuple[float, int]] = {}
    for _ in range(3):
        for level in (L.SINK_COMPRESSION_LEVEL, L.COMPRESSION_LEVEL):
            path = tmp / f"level-{level}.parquet"
            t0 = time.perf_counter()
            pq.write_table(rows, path, **L.parquet_options(rows.schema, level))
            secs = time.perf_counter() - t0
            if level not in best or secs < best[level][0]:
                best[level] = (secs, path.stat().st_size)
    n = rows.num_rows
    print("(z) zstd  " + "  ".join(
        f"level {lv}: {s / n * 1e6:.2f} us a row, {b / n:.0f} bytes a row"
        for lv, (s, b) in best.items()) + f"  ({n:,} rows, one file, best of 3)")


def timed(con: duckdb.DuckDBPyConnection, sql: str, runs: int = 3) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = len(con.execute(sql).fetchall())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--base", type=int, default=200_000)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--flush-s", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None,
                    help="Keep the generated lake here (and skip deleting the temp dir).")
    args = ap.parse_args()
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "bench-lake-key-0123456789abcdef"})
    tmp = Path(tempfile.mkdtemp(prefix="llmspend-bench-lake-"))
    try:
        t0 = time.perf_counter()
        opts = Options(seed=7, calls=args.base, start_time_ns=1_764_000_000 * 10**9,
                       tenants=("acme", "globex"))
        calls = llm_calls_records(opts, settings, PARTITIONS)
        aggs = llm_agg_1m_records(calls, PARTITIONS)
        print(f"traffic   {args.base:,} generated calls in {len(calls):,} llm_calls records "
              f"and {len(aggs):,} partials, built in {time.perf_counter() - t0:.0f} s")

        # (l) landing speed, and the one-file baseline on the same rows.
        recs = with_offsets(calls)
        t0 = time.perf_counter()
        landed = lake.land(LocalFS(tmp / "land"), L.CALLS, recs).table
        land_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pq.write_table(landed, tmp / "one.parquet",
                       **L.parquet_options(landed.schema, L.SINK_COMPRESSION_LEVEL))
        write_s = time.perf_counter() - t0
        n = landed.num_rows
        print(f"(l) land  {n / land_s:>10,.0f} rows/s per core (decode + split + write + "
              f"commit, {len(recs):,} records)  baseline write_table one file "
              f"{n / write_s:,.0f} rows/s  ratio {write_s / land_s:.2f}")
        zstd_levels(landed, tmp)

        # (q) 10 M rows: the lake's layout against one file.
        agg_base = lake.land(LocalFS(tmp / "land"), L.AGG_1M, with_offsets(aggs)).table
        end_us = int(time.time() * 1e6)
        t0 = time.perf_counter()
        call_tables = copies(landed, args.rows, args.days, "start_time", "call_id", end_us)
        per_copy = agg_base.num_rows * len(call_tables)
        agg_tables = copies(agg_base, per_copy, args.days, "window_start", "agg_id",
                            end_us // 1000)   # partials are in ms
        lake_dir = tmp / "lake"
        files = write_layout(lake_dir, L.CALLS, call_tables, args.flush_s)
        files += write_layout(lake_dir, L.AGG_1M, agg_tables, args.flush_s)
        layout_s = time.perf_counter() - t0
        single = {}
        for name, ds, tables in (("calls", L.CALLS, call_tables),
                                 ("agg_1m", L.AGG_1M, agg_tables)):
            t = pa.concat_tables(tables)
            ts = t.column(ds.time_column).cast(pa.timestamp("us", tz="UTC"))
            t = t.append_column("dt", pc.cast(ts, pa.date32()))
            if ds.hourly:
                t = t.append_column("hour", pc.hour(ts).cast(pa.int32()))
            t = t.sort_by([(ds.time_column, "ascending")])
            path = tmp / f"single_{name}.parquet"
            pq.write_table(t, path, compression=L.COMPRESSION, row_group_size=1_000_000)
            single[name] = f"read_parquet('{path}')"
        rows = sum(t.num_rows for t in call_tables)
        size = sum(p.stat().st_size for p in lake_dir.rglob("*.parquet"))
        one = sum((tmp / f"single_{n}.parquet").stat().st_size for n in ("calls", "agg_1m"))
        print(f"data      {rows:,} call rows + {per_copy:,} partials over {args.days:g} days: "
              f"{files:,} files ({size / 1e6:,.0f} MB) in the lake's layout (flush "
              f"{args.flush_s} s, {PARTITIONS} source partitions), written in "
              f"{layout_s:.0f} s; one file each: {one / 1e6:,.0f} MB")

        lake_con = connect(lake_dir, threads=args.threads)
        file_con = duckdb.connect()
        file_con.execute(f"SET threads = {args.threads}")
        from pipeline.analytics import load

        load(file_con, tmp / "nowhere", sources=single)
        print(f"queries   median of 3, DuckDB {duckdb.__version__}, {args.threads} threads")
        ratios = []
        for i, sql in enumerate(readme_questions(), 1):
            title = sql.splitlines()[0].lstrip("- ").split(". ", 1)[-1][:58]
            lt, lrows = timed(lake_con, sql)
            ft, frows = timed(file_con, sql)
            ratios.append(lt / ft)
            same = "same rows" if lrows == frows else f"ROWS DIFFER {lrows} vs {frows}"
            print(f"  q{i:<2} {title:<58} lake {lt * 1000:>8,.0f} ms  one file "
                  f"{ft * 1000:>8,.0f} ms  ratio {lt / ft:5.2f}  ({lrows} rows, {same})")
        print(f"layout    geometric mean ratio lake / one file: "
              f"{statistics.geometric_mean(ratios):.2f} (the cost of small files before "
              f"compaction; partition pruning pays it back on dated questions)")
        print(f"date      {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    finally:
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.move(str(tmp), args.keep)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
