"""Compaction: the many small files of a closed partition become one.

The sink writes one file per flush per partition (a minute's worth at the default
``lake.flush_s``), so a busy hour of calls is ~60 files and a day of aggregates ~1,440;
queries pay per file. Once a partition is closed (``jobs.closed_after_s`` after its end)
and holds at least ``jobs.compact_min_files`` files, its rows are merged into one file
sorted by time, *keeping each row once*:

* ``calls``: one row per ``call_id`` (a client retry's twin dropped; the earliest
  landed is kept, as the ``calls`` view would);
* ``agg_1m``: the latest landed version of each ``agg_id`` (a re-emission replaces its
  predecessor, as the ``agg_1m_partials`` view does);
* ``alerts``: one row per alert ``id`` (as the ``alert_events`` view does).

Before the swap (``jobs/journal.py``) the new file is read back from storage and its
row count and sums (every money and count column) must equal the inputs' minus the
dropped twins', else the partition is left untouched. Running it again changes nothing:
a compacted partition has one file, below the threshold.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs import journal
from jobs.partitions import Partition, partitions, read
from pipeline.lake_fs import LakeFS
from schemas import aggregates as G
from schemas import alerts as A
from schemas import calls as C
from schemas import lake as L

#: Per dataset: the column naming a row's identity, and whether the latest landed
#: version wins (else the earliest).
IDENTITY: dict[str, tuple[str, bool]] = {
    L.CALLS.name: (C.CALL_ID, False),
    L.AGG_1M.name: (G.AGG_ID, True),
    L.ALERTS.name: (A.ID, False),
}


@dataclass
class CompactResult:
    partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    rows_in: int = 0
    rows_out: int = 0
    twins_dropped: int = 0
    skipped: list[str] = field(default_factory=list)


def keep_once(dataset: L.Dataset, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows kept, twins dropped): each identity once, sorted by time then source."""
    ident, latest = IDENTITY[dataset.name]
    order = "descending" if latest else "ascending"
    t = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    t = t.sort_by([(ident, "ascending"), (L.KAFKA_PARTITION, order),
                   (L.KAFKA_OFFSET, order)])
    ids = t.column(ident).combine_chunks()
    first = np.ones(t.num_rows, dtype=bool)
    if t.num_rows > 1:
        first[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    mask = pa.array(first)
    kept = t.filter(mask).drop_columns(["_row"])
    dropped = t.filter(pc.invert(mask)).drop_columns(["_row"])
    kept = kept.sort_by([(dataset.time_column, "ascending"), (L.KAFKA_PARTITION, "ascending"),
                         (L.KAFKA_OFFSET, "ascending")])
    return kept, dropped


def summary(dataset: L.Dataset, table: pa.Table) -> dict[str, int | Decimal]:
    """Row count and the sum of every money and count column: what must survive."""
    out: dict[str, int | Decimal] = {"rows": table.num_rows}
    cols = (C.MONEY_COLUMNS if dataset is L.CALLS
            else (*G.MONEY_FIELDS, *G.COUNT_FIELDS) if dataset is L.AGG_1M
            else ())
    for name in cols:
        s = pc.sum(table.column(name)).as_py() if table.num_rows else None
        out[name] = s if s is not None else 0
    return out


def _minus(a: dict, b: dict) -> dict:
    return {k: a[k] - b[k] for k in a}


def compact_partition(fs: LakeFS, part: Partition, grace_s: float = 0.0
                      ) -> tuple[int, int, int]:
    """Merge one partition's files, keeping the merged ones readable for ``grace_s``
    (``jobs/journal.py``); (rows in, rows out, twins dropped)."""
    ds = part.dataset
    table = read(fs, ds, part.files)
    kept, dropped = keep_once(ds, table)
    expected = _minus(summary(ds, table), summary(ds, dropped))
    digest = hashlib.sha256("\n".join(part.files).encode()).hexdigest()[:16]
    final = f"{part.rel_dir}/compact-{digest}.parquet"
    swap = journal.Swap("compact", {final: kept}, [f for f in part.files if f != final])

    def verify(temps: dict[str, str]) -> None:
        got = summary(ds, fs.read_parquet(temps[final]))
        if got != expected:
            raise journal.JobError(f"compaction of {part.rel_dir}: the new file holds "
                                   f"{got}, expected {expected}; left unchanged")
    journal.apply(fs, swap, verify, keep_removed_s=grace_s)
    return table.num_rows, kept.num_rows, dropped.num_rows


def compact(fs: LakeFS, now: dt.datetime, closed_after_s: float, min_files: int,
            datasets: tuple[L.Dataset, ...] = (L.CALLS, L.AGG_1M, L.ALERTS),
            grace_s: float = 0.0) -> CompactResult:
    """Compact every closed partition with at least ``min_files`` files; the merged
    files stay for ``grace_s`` seconds, for queries that already listed them."""
    res = CompactResult()
    for ds in datasets:
        for part in partitions(fs, ds):
            if len(part.files) < min_files or not part.closed(now, closed_after_s):
                continue
            try:
                rows_in, rows_out, twins = compact_partition(fs, part, grace_s)
            except journal.JobError as exc:
                res.skipped.append(str(exc))
                continue
            res.partitions += 1
            res.files_in += len(part.files)
            res.files_out += 1
            res.rows_in += rows_in
            res.rows_out += rows_out
            res.twins_dropped += twins
    return res
