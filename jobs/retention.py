"""Retention: delete what is older than it may be kept.

Call-level rows are personal data (user ids, sessions, content hashes): ``calls``
partitions older than ``jobs.calls_days`` (or the tenant's
``jobs.calls_days_by_tenant``) are deleted whole. Aggregates hold no content and are
kept longer: ``agg_1m`` and ``alerts`` for ``jobs.agg_1m_days``, the hourly and daily
rollups for ``jobs.rollup_days``. A day of ``agg_1m`` is only deleted once its rollups
are current (made from exactly its files), so no aggregate is lost by deleting its
source. 0 days keeps forever. ``dry_run`` lists what would go and deletes nothing.

A day is older than N days when it ends before the start of (today - N + 1), UTC: with
``calls_days = 30`` on 2026-11-30 the oldest day kept is 2026-11-01. Deleting is
file by file, so an interrupted run leaves some files of a partition that is going
anyway; the next run finishes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from jobs.partitions import Partition, partitions
from jobs.rollup import current_digest, rollup_path, source_digest
from pipeline.config import JobsSettings
from pipeline.lake_fs import LakeFS
from schemas import lake as L


@dataclass
class Expired:
    """One partition that retention deletes (or would, in a dry run)."""

    dataset: str
    tenant: str
    day: dt.date
    rel_dir: str
    files: int
    bytes: int


@dataclass
class RetentionResult:
    expired: list[Expired] = field(default_factory=list)
    kept_not_rolled_up: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def files(self) -> int:
        return sum(e.files for e in self.expired)


def keep_days(dataset: L.Dataset, tenant: str, s: JobsSettings) -> int:
    """Days of ``dataset`` kept for ``tenant`` (0: forever)."""
    if dataset is L.CALLS:
        return int(s.calls_days_by_tenant.get(tenant, s.calls_days))
    if dataset in (L.AGG_1M, L.ALERTS):
        return s.agg_1m_days
    return s.rollup_days


def expired(part: Partition, today: dt.date, s: JobsSettings) -> bool:
    days = keep_days(part.dataset, part.tenant, s)
    return days > 0 and part.day < today - dt.timedelta(days=days - 1)


def retention(fs: LakeFS, today: dt.date, s: JobsSettings, dry_run: bool = False
              ) -> RetentionResult:
    """Delete (or list, ``dry_run``) every expired partition of every dataset."""
    res = RetentionResult(dry_run=dry_run)
    for ds in L.ALL_DATASETS.values():
        for part in partitions(fs, ds):
            if not expired(part, today, s):
                continue
            if ds is L.AGG_1M and not _rolled_up(fs, part):
                res.kept_not_rolled_up.append(part.rel_dir)
                continue
            res.expired.append(Expired(ds.name, part.tenant, part.day, part.rel_dir,
                                       len(part.files), sum(fs.size(f) for f in part.files)))
            if not dry_run:
                for f in part.files:
                    fs.remove(f)
    return res


def _rolled_up(fs: LakeFS, part: Partition) -> bool:
    digest = source_digest(fs, part)
    return all(current_digest(fs, rollup_path(ds, part)) == digest
               for ds in (L.AGG_1H, L.AGG_1D))
