"""The lake's hive partitions as the jobs see them: where, which files, closed or not."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa

from jobs.journal import pending_removals
from pipeline.lake_fs import LakeFS
from schemas import calls as C
from schemas import lake as L


@dataclass(frozen=True)
class Partition:
    """One hive partition of one dataset and its Parquet files (relative paths)."""

    dataset: L.Dataset
    tenant: str
    day: dt.date
    hour: int | None
    rel_dir: str
    files: tuple[str, ...]

    @property
    def end(self) -> dt.datetime:
        """When the partition's time range ends (UTC)."""
        start = dt.datetime.combine(self.day, dt.time(self.hour or 0), dt.UTC)
        return start + (dt.timedelta(hours=1) if self.hour is not None
                        else dt.timedelta(days=1))

    def closed(self, now: dt.datetime, closed_after_s: float) -> bool:
        """Its range ended long enough ago that no more rows are expected (late ones may
        still come: they land as new files, which the next run handles)."""
        return self.end + dt.timedelta(seconds=closed_after_s) <= now


def _parse_dir(rel_dir: str) -> dict[str, str]:
    out = {}
    for part in rel_dir.split("/")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key] = unquote(value)
    return out


def partitions(fs: LakeFS, dataset: L.Dataset) -> list[Partition]:
    """Every partition of ``dataset`` holding at least one Parquet file, oldest first.
    Files a swap replaced and keeps for readers (``journal.pending_removals``) are not
    listed: their rows are in the files that replaced them."""
    gone = pending_removals(fs)
    by_dir: dict[str, list[str]] = defaultdict(list)
    for rel in fs.list(dataset.name, ".parquet"):
        if rel not in gone:
            by_dir[rel.rsplit("/", 1)[0]].append(rel)
    out = []
    for rel_dir, files in by_dir.items():
        kv = _parse_dir(rel_dir)
        try:
            day = dt.date.fromisoformat(kv[L.DT])
            tenant = kv[C.TENANT]
            hour = int(kv[L.HOUR]) if dataset.hourly else None
        except (KeyError, ValueError):
            continue                       # not a partition directory of ours
        out.append(Partition(dataset, tenant, day, hour, rel_dir, tuple(sorted(files))))
    return sorted(out, key=lambda p: (p.day, p.hour or 0, p.tenant))


def conform(dataset: L.Dataset, table: pa.Table) -> pa.Table:
    """``table`` in the dataset's current schema: columns a file written before a
    column existed are added as nulls, so old and new files concatenate."""
    if table.schema.equals(dataset.schema):
        return table
    cols = []
    for f in dataset.schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=dataset.schema)


def read(fs: LakeFS, dataset: L.Dataset, files: list[str] | tuple[str, ...]) -> pa.Table:
    """The rows of ``files`` in the dataset's schema (hive columns are not in files)."""
    tables = [conform(dataset, fs.read_parquet(f)) for f in files]
    return pa.concat_tables(tables) if tables else dataset.schema.empty_table()
