"""Erasure: remove one person's rows from the whole lake on request (GDPR art. 17).

A user is named by their id as the app sent it, or by its pseudonym (the keyed hash
``calls.user_id`` holds when ``privacy.pseudonymise_users`` is on); both forms are
searched, so the request works whichever way the lake stored them. Rows go from:

* ``calls`` and the ``user`` view of ``agg_1m``, ``agg_1h`` and ``agg_1d`` (``user_id``);
* ``alerts`` about that user (``subject_kind = 'user'``) or naming them in evidence.

Every file holding such a row is rewritten without it in one journaled swap
(``jobs/journal.py``): each temporary must hold exactly its file's rows minus the
user's, and none of theirs, before anything is replaced. A file left empty is deleted.

The erasure is logged in ``_lake/erasures.jsonl`` (when, how many rows and files per
dataset) under a keyed hash of the pseudonym, never the id: the log proves the request
was carried out without keeping what was erased. The same user's requests log the same
subject hash, so a second request (which finds nothing) is recognisable.

Outside the lake: Kafka topics keep their records until ``kafka.log_retention_hours``
and detector state forgets a session after ``detect.session_ttl_s``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from jobs import journal
from jobs.partitions import conform, read
from pipeline.lake_fs import LakeFS
from pipeline.privacy import keyed_hash
from schemas import alerts as A
from schemas import calls as C
from schemas import lake as L

#: Datasets with a user_id column.
USER_DATASETS = (L.CALLS, L.AGG_1M, L.AGG_1H, L.AGG_1D)


@dataclass
class ErasureResult:
    subject: str
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def pseudonym(key: bytes, user_id: str) -> str:
    """The user id as ``privacy.pseudonymise_users`` stores it."""
    return keyed_hash(key, user_id)


def log_subject(key: bytes, pseudo: str) -> str:
    """The erasure log's name for a user: a keyed hash of the pseudonym, in its own
    domain, so the log joins to no column of the lake."""
    return keyed_hash(key, f"llmspend-erasure\x00{pseudo}")


def matches(dataset: L.Dataset, table: pa.Table, values: list[str]) -> pa.Array:
    """Boolean mask of the rows of ``table`` that belong to the user."""
    vals = pa.array(values, pa.string())
    if dataset is L.ALERTS:
        about = pc.and_(pc.equal(table.column(A.SUBJECT_KIND), "user"),
                        pc.is_in(table.column(A.SUBJECT), value_set=vals))
        evidence = table.column(A.EVIDENCE)
        for v in values:              # as a JSON string value, not inside another one
            about = pc.or_(about, pc.match_substring(evidence, f'"{v}"'))
        return pc.fill_null(about, False)
    return pc.fill_null(pc.is_in(table.column(C.USER_ID), value_set=vals), False)


def _files_with(fs: LakeFS, dataset: L.Dataset, values: list[str]) -> list[str]:
    """Files of ``dataset`` holding at least one of the user's rows (a DuckDB scan of the
    one or two columns that can hold them, not whole files)."""
    files = sorted(fs.list(dataset.name, ".parquet"))
    if not files:
        return []
    paths = [str(fs.root / f) for f in files]
    con = duckdb.connect()
    con.execute("SET threads = 1")
    if dataset is L.ALERTS:
        cond = ("(subject_kind = 'user' AND list_contains($v, subject)) OR "
                "list_bool_or([contains(evidence, '\"' || x || '\"') FOR x IN $v])")
    else:
        cond = "list_contains($v, user_id)"
    rows = con.execute(
        f"SELECT DISTINCT filename FROM read_parquet($p, filename = true, "
        f"union_by_name = true) WHERE {cond}", {"p": paths, "v": values}).fetchall()
    con.close()
    root = str(fs.root).rstrip("/") + "/"
    return sorted(r[0].removeprefix(root) for r in rows)


def erase(fs: LakeFS, key: bytes, user_id: str | None = None, pseudo: str | None = None,
          now: dt.datetime | None = None) -> ErasureResult:
    """Remove the user's rows everywhere in the lake and log it (module docstring)."""
    if not user_id and not pseudo:
        raise journal.JobError("erasure needs a user id or a pseudonym")
    # Files a compaction merged and keeps for readers hold the user's rows too: go.
    journal.recover(fs, force=True)
    pseudo = pseudo or pseudonym(key, user_id or "")
    values = sorted({v for v in (user_id, pseudo) if v})
    res = ErasureResult(log_subject(key, pseudo))
    swap = journal.Swap("erase")
    expected: dict[str, int] = {}
    for ds in (*USER_DATASETS, L.ALERTS):
        for rel in _files_with(fs, ds, values):
            raw = fs.read_parquet(rel)
            table = conform(ds, raw)
            mask = matches(ds, table, values)
            n = pc.sum(mask).as_py() or 0
            if not n:
                continue
            res.rows[ds.name] = res.rows.get(ds.name, 0) + n
            res.files += 1
            left = table.filter(pc.invert(mask))
            if left.num_rows:
                swap.writes[rel] = left.replace_schema_metadata(raw.schema.metadata)
                expected[rel] = left.num_rows
            else:
                swap.removes.append(rel)

    def verify(temps: dict[str, str]) -> None:
        for final, tmp in temps.items():
            ds = L.ALL_DATASETS[final.split("/", 1)[0]]
            t = read(fs, ds, [tmp])
            if t.num_rows != expected[final] or pc.sum(matches(ds, t, values)).as_py():
                raise journal.JobError(f"erasure: rewritten {final} does not hold the "
                                       f"expected rows; lake unchanged")
    journal.apply(fs, swap, verify)
    _log(fs, res, now or dt.datetime.now(dt.UTC))
    return res


def _log(fs: LakeFS, res: ErasureResult, now: dt.datetime) -> None:
    line = json.dumps({"at": now.isoformat().replace("+00:00", "Z"),
                       "subject": res.subject, "rows": res.rows, "rows_total": res.total,
                       "files": res.files})
    old = fs.read_text(L.ERASURE_LOG) or ""
    fs.replace_text(L.ERASURE_LOG, old + line + "\n")


def erasure_log(fs: LakeFS) -> list[dict]:
    """Every logged erasure, oldest first."""
    return [json.loads(x) for x in (fs.read_text(L.ERASURE_LOG) or "").splitlines() if x]
