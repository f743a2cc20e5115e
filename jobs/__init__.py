"""Maintenance jobs over the Parquet lake, each safe to interrupt and to run twice.

=============  ===========================================================  ============
job            what it does                                                 scheduled
=============  ===========================================================  ============
compact        merges the small files of closed partitions, twins dropped   worker, cron
rollup         ``agg_1h`` / ``agg_1d`` from closed days of ``agg_1m``        worker, cron
retention      deletes partitions older than their retention                worker, cron
erase          removes one user's rows everywhere, logged without the id    on request
reprice        recomputes costs of days after a catalog correction          on request
=============  ===========================================================  ============

Jobs that rewrite files go through ``jobs/journal.py`` (temporaries, verify, commit,
swap); every job takes the lake's job lock and first finishes whatever a crashed job
committed. The worker runs :func:`run_scheduled` every ``jobs.every_s``; the CLI is
``llmspend jobs ...``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from jobs import journal

# Functions under other names, so ``jobs.compact`` & co. stay the modules.
from jobs.compact import CompactResult
from jobs.compact import compact as _compact
from jobs.retention import RetentionResult
from jobs.retention import retention as _retention
from jobs.rollup import RollupResult
from jobs.rollup import rollup as _rollup
from pipeline.config import Settings
from pipeline.lake_fs import LakeFS, LocalFS


@dataclass
class ScheduledResult:
    recovered: int
    compact: CompactResult
    rollup: RollupResult
    retention: RetentionResult


def lake_fs(settings: Settings) -> LakeFS:
    return LocalFS(settings.lake_dir)


def run_scheduled(settings: Settings, now: dt.datetime | None = None,
                  fs: LakeFS | None = None) -> ScheduledResult:
    """Compaction, then rollups (of the compacted days), then retention (which only
    deletes agg_1m days already rolled up)."""
    now = now or dt.datetime.now(dt.UTC)
    fs = fs or lake_fs(settings)
    j = settings.jobs
    with journal.locked(fs):
        recovered = journal.recover(fs, now=now.timestamp())
        c = _compact(fs, now, j.closed_after_s, j.compact_min_files,
                     grace_s=j.replaced_files_grace_s)
        r = _rollup(fs, now, j.closed_after_s)
        t = _retention(fs, now.date(), j)
    return ScheduledResult(recovered, c, r, t)
