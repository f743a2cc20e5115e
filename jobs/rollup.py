"""Rollups: hourly (``agg_1h``) and daily (``agg_1d``) aggregates of closed days.

A month of dashboards should not read 43,200 minutes. For each closed day of ``agg_1m``
(per tenant) the job writes ``agg_1h/.../rollup.parquet`` and ``agg_1d/.../rollup.parquet``
(schema ``schemas.aggregates.ROLLUP``): the latest version of each 1-minute partial,
summed per (view, key, hour or day): counts and exact decimal costs added, latency
sketches merged bucket by bucket, distinct units united (``pipeline/distinct.py``).

Each rollup file records in its Parquet metadata a digest of the ``agg_1m`` files it
was made from; a run recomputes a day only when that digest changed (late partials
landed, a compaction, an erasure or a reprice rewrote the day), so a second run changes
nothing. A rollup file is replaced whole with one atomic rename.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.partitions import Partition, partitions, read
from pipeline.distinct import DistinctCount
from pipeline.lake_fs import LakeFS
from schemas import aggregates as G
from schemas import lake as L


@dataclass
class RollupResult:
    days: int = 0
    unchanged: int = 0
    rows_1h: int = 0
    rows_1d: int = 0


def source_digest(fs: LakeFS, part: Partition) -> str:
    """What a day's rollups were made from: its agg_1m files and their versions (a
    rewrite in place, by an erasure or a reprice, changes the version)."""
    text = "\n".join(f"{f} {fs.version(f)}" for f in part.files)
    return hashlib.sha256(text.encode()).hexdigest()


def rollup_path(dataset: L.Dataset, part: Partition) -> str:
    return f"{L.partition_dir(dataset, part.tenant, part.day, None)}/{L.ROLLUP_FILE}"


def current_digest(fs: LakeFS, rel: str) -> str | None:
    """The source digest a rollup file was made from (None: no such file)."""
    if not fs.exists(rel):
        return None
    meta = pq.read_schema(fs.root / rel).metadata or {}
    value = meta.get(L.ROLLUP_SOURCE_KEY)
    return value.decode() if value else None


def _sql(grain: str) -> str:
    keys = ", ".join(G.KEY_COLUMNS)
    sums = ", ".join(f"sum({n})::BIGINT AS {n}" for n in G.COUNT_FIELDS)
    return f"""
    WITH latest AS (
        SELECT * FROM partials
        QUALIFY row_number() OVER (PARTITION BY agg_id ORDER BY _kafka_offset DESC) = 1)
    SELECT view, {keys},
           date_trunc('{grain}', window_start) AS window_start,
           date_trunc('{grain}', window_start) + INTERVAL 1 {grain} AS window_end,
           {sums},
           sum(cost_usd)::DECIMAL(38, 12) AS cost_usd,
           sum(list_cost_usd)::DECIMAL(38, 12) AS list_cost_usd,
           llmspend_sketch_merge(flatten(list(latency_buckets))) AS latency_buckets,
           llmspend_sketch_merge(flatten(list(ttft_buckets))) AS ttft_buckets,
           list_sort(list_distinct(flatten(list(unit_hashes)
                                           FILTER (unit_hashes IS NOT NULL)))) AS unit_hashes,
           bool_or(units > len(unit_hashes)) AS saturated,
           count(*) AS partials
    FROM latest
    GROUP BY ALL
    ORDER BY window_start, view, {keys}
    """


def roll(partials: pa.Table, grain: str, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The rollup rows (``grain``: hour or day) of one day's agg_1m partials."""
    con.register("partials", partials)
    try:
        t = con.sql(_sql(grain)).to_arrow_table()
    finally:
        con.unregister("partials")
    units, hashes = [], []
    for h, sat in zip(t.column("unit_hashes").to_pylist(), t.column("saturated").to_pylist(),
                      strict=True):
        if h is None:
            units.append(None)
            hashes.append(None)
            continue
        d = DistinctCount()
        d.merge(h, saturated=bool(sat))
        units.append(d.count())
        hashes.append(d.sorted_hashes())
    t = t.drop_columns(["unit_hashes", "saturated"])
    t = t.append_column("units", pa.array(units, pa.int64()))
    t = t.append_column("unit_hashes", pa.array(hashes, pa.list_(pa.int64())))
    return t.select(G.ROLLUP.names).cast(G.ROLLUP)


def _connection() -> duckdb.DuckDBPyConnection:
    from pipeline.analytics import macros_sql

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET threads = 1")          # a background job beside the stream stages
    con.execute(macros_sql())
    return con


def rollup(fs: LakeFS, now: dt.datetime, closed_after_s: float) -> RollupResult:
    """Write the rollups of every closed agg_1m day whose sources changed."""
    res = RollupResult()
    con = None
    for part in partitions(fs, L.AGG_1M):
        if not part.closed(now, closed_after_s):
            continue
        digest = source_digest(fs, part)
        targets = {ds: rollup_path(ds, part) for ds in (L.AGG_1H, L.AGG_1D)}
        if all(current_digest(fs, rel) == digest for rel in targets.values()):
            res.unchanged += 1
            continue
        con = con or _connection()
        partials = read(fs, L.AGG_1M, part.files)
        for ds, grain in ((L.AGG_1H, "hour"), (L.AGG_1D, "day")):
            rows = roll(partials, grain, con)
            rows = rows.replace_schema_metadata({L.ROLLUP_SOURCE_KEY: digest.encode()})
            tmp = targets[ds] + L.TMP_SUFFIX
            fs.write_parquet(tmp, rows)
            fs.commit(tmp, targets[ds])
            if ds is L.AGG_1H:
                res.rows_1h += rows.num_rows
            else:
                res.rows_1d += rows.num_rows
        res.days += 1
    if con is not None:
        con.close()
    return res
