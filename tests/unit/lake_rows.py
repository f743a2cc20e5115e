"""The lake's rows read straight from its Parquet files with pyarrow (not through the
DuckDB views), so tests can check the views, the report and the dashboard against an
independent reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parquet_rows(d: Path, dataset: str) -> list[dict[str, Any]]:
    """Every row of a dataset's Parquet files (read one by one: no hive inference)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in sorted((d / dataset).rglob("*.parquet")):
        rows += pq.ParquetFile(f).read().to_pylist()
    return rows


def calls_once(d: Path) -> list[dict[str, Any]]:
    """Every call once (a retry twin has the same call_id)."""
    out: dict[str, dict[str, Any]] = {}
    for r in parquet_rows(d, "calls"):
        out.setdefault(r["call_id"], r)
    return list(out.values())


def latest_partials(d: Path) -> list[dict[str, Any]]:
    """The latest version of every 1-minute partial."""
    out: dict[str, dict[str, Any]] = {}
    for r in parquet_rows(d, "agg_1m"):
        if r["agg_id"] not in out or r["_kafka_offset"] > out[r["agg_id"]]["_kafka_offset"]:
            out[r["agg_id"]] = r
    return list(out.values())
