"""Replacing lake files crash-safely: the maintenance jobs' redo journal and lock.

A job that changes existing lake files (compaction, erasure, reprice) describes the
change as a :class:`Swap`: new files to put in place (possibly under an old file's name:
an in-place rewrite) and old files to remove. :func:`apply` does it in four steps:

1. write every new file under a temporary name (``<final>.<job>.tmp``: no view globs it,
   and the lake sink's recovery, which deletes its own ``*.parquet.tmp``, never touches
   it) and make it durable;
2. let the job *verify* the temporaries (read them back: row counts, cost sums), and
   give up, deleting them, if anything is off: the lake is unchanged;
3. **commit**: atomically write the journal ``_lake/jobs/<job>-<id>.json`` listing the
   renames and removals;
4. rename each temporary into place (an atomic replace per file), remove the old files,
   delete the journal.

:func:`recover` (run first by every job, under the lock) redoes step 4 of every journal
left by a crash (a rename whose temporary is gone was done; removing a missing file is a
no-op), then deletes temporaries that no journal names (a swap that never committed).
So whatever the crash point the lake holds either the old files or the new ones.

Readers see a new file beside the old ones it replaces; the views drop the twins this
makes (same ``call_id`` / ``agg_id`` / alert ``id``), so a query through them sees the
same rows before, during and after. A query lists its files before it opens them, so a
file removed in between fails it. A swap may therefore keep its old files for
``keep_removed_s`` (compaction does: ``jobs.replaced_files_grace_s``): the journal stays
with the time they may go, and the first :func:`recover` after that removes them. Until
then the jobs do not see them (:func:`pending_removals`). An erasure or a reprice first
removes them all (``recover(force=True)``): no old copy of a row may outlive those.

One job runs at a time per lake (:func:`locked`, an ``flock`` on ``_lake/jobs/lock``),
so the worker's schedule and a ``llmspend jobs`` run from a shell never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.lake_fs import LakeFS
from schemas import lake as L

JOBS = ("compact", "erase", "reprice")
Hook = Callable[[str], None]


class JobError(RuntimeError):
    """A job refused to change the lake (a verification failed, the lake is busy...)."""


@dataclass
class Swap:
    """New files (final relative path -> rows) and old files to remove."""

    job: str
    writes: dict[str, pa.Table] = field(default_factory=dict)
    removes: list[str] = field(default_factory=list)

    def temp(self, final: str) -> str:
        return f"{final}.{self.job}.tmp"

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps([sorted(self.writes), sorted(self.removes)]).encode())
        return h.hexdigest()[:16]


_seen: dict[str, int] = {}


def _test_hook(step: str) -> None:
    """``LLMSPEND_TEST_JOBS_KILL_AT=step:n`` kills the process at the n-th ``step`` of
    the process's swaps (the crash tests' way to stop a job at an exact point)."""
    spec = os.environ.get("LLMSPEND_TEST_JOBS_KILL_AT", "")
    target, _, n = spec.partition(":")
    if spec and step == target:
        _seen[step] = _seen.get(step, 0) + 1
        if _seen[step] >= int(n or 1):
            os._exit(137)


def apply(fs: LakeFS, swap: Swap, verify: Callable[[dict[str, str]], None] | None = None,
          hook: Hook | None = None, keep_removed_s: float = 0.0) -> None:
    """Put ``swap`` in place (module docstring: the protocol). ``verify(final -> temp)``
    raises to abandon the swap before anything visible changed. Files it removes stay
    readable for ``keep_removed_s`` seconds."""
    hook = hook or _test_hook
    if not swap.writes and not swap.removes:
        return
    temps = {final: swap.temp(final) for final in swap.writes}
    try:
        for final, table in swap.writes.items():
            fs.write_parquet(temps[final], table)
        hook("temps")
        if verify is not None:
            verify(temps)
    except BaseException:
        for tmp in temps.values():
            fs.remove(tmp)
        raise
    journal = f"{L.JOBS_DIR}/{swap.job}-{swap.digest()}.json"
    now = time.time()
    entry = {"job": swap.job, "at": now,
             "renames": sorted((t, f) for f, t in temps.items()),
             "removes": sorted(swap.removes)}
    if keep_removed_s > 0 and swap.removes:
        entry["remove_after"] = now + keep_removed_s
    fs.replace_text(journal, json.dumps(entry))
    hook("journal")
    _redo(fs, journal, hook, now)


def _redo(fs: LakeFS, journal: str, hook: Hook, now: float, force: bool = False) -> bool:
    """Step 4 of ``journal``; the removals only once due (or ``force``). True if the
    swap had been interrupted: a temporary still to rename, or a journal without kept
    files (``apply`` removes those itself) still there."""
    text = fs.read_text(journal)
    if text is None:
        return False
    entry = json.loads(text)
    interrupted = False
    for tmp, final in entry["renames"]:
        if fs.exists(tmp):
            interrupted = True
            fs.commit(tmp, final)
            hook("rename")
    if not force and entry.get("remove_after", 0) > now:
        return interrupted
    for rel in _removed(entry):
        fs.remove(rel)
        hook("remove")
    fs.remove(journal)
    return interrupted or "remove_after" not in entry


def recover(fs: LakeFS, now: float | None = None, force: bool = False) -> int:
    """Finish committed swaps (their kept files too once due, or all with ``force``),
    drop uncommitted temporaries; how many interrupted swaps were redone."""
    now = time.time() if now is None else now
    redone = 0
    for journal in sorted(fs.list(L.JOBS_DIR, ".json")):
        redone += _redo(fs, journal, lambda _step: None, now, force)
    for name in L.ALL_DATASETS:
        for job in JOBS:
            for tmp in list(fs.list(name, f".{job}.tmp")):
                fs.remove(tmp)
    return redone


def pending_removals(fs: LakeFS) -> set[str]:
    """Files a committed swap replaced and keeps for readers: no job reads them."""
    out: set[str] = set()
    for journal in fs.list(L.JOBS_DIR, ".json"):
        text = fs.read_text(journal)
        if text is not None:
            out.update(_removed(json.loads(text)))
    return out


def _removed(entry: dict) -> list[str]:
    """The files a journal's swap removes (not those a new file took the place of)."""
    finals = {final for _tmp, final in entry["renames"]}
    return [rel for rel in entry["removes"] if rel not in finals]


@contextlib.contextmanager
def locked(fs: LakeFS, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the lake's job lock (waiting up to ``timeout_s`` for a running job)."""
    path = fs.root / L.JOBS_DIR / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise JobError(f"another llmspend job holds {path} (waited "
                                   f"{timeout_s:.0f} s)") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
