"""Landing topic records in the Parquet lake, each row exactly once (the pure core).

Three steps, each a function the sink (``pipeline/stream/lake_stage.py``) calls:

1. :func:`decode` turns a batch of one topic's records into one Arrow table in the
   dataset's schema (``schemas/lake.py``), plus the records it had to reject and why
   (a malformed record never takes its neighbours down with it);
2. :func:`split` cuts the table into hive partitions (tenant, day, hour);
3. :class:`PartitionWriter` lands one source partition's offset range ``[start, end)``
   with a redo protocol, so that whatever the crash point every row is in the lake
   exactly once and no view ever sees a half-written file:

   a. write every file of the flush under a temporary name (``*.parquet.tmp``, never
      globbed by a view) and fsync it;
   b. **commit**: atomically replace the partition's state file
      ``_lake/<dataset>/p<N>.json`` with ``next_offset = end`` and the list of renames
      still to do;
   c. rename each temporary file to its final name (``part-p<N>-o<start>-<end>``) and
      fsync the directory.

   On start (:meth:`PartitionWriter.recover`) the renames of a committed flush are
   redone if a crash interrupted them, temporary files of an uncommitted flush are
   deleted, and reading resumes at ``next_offset``: rows before it are in the lake,
   rows after it are not, so nothing is lost or doubled. The Kafka consumer offsets are
   only committed for lag monitoring; the lake's own state is the truth.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pipeline.lake_fs import LakeFS
from schemas import alerts as A
from schemas import calls as C
from schemas import lake as L


@dataclass
class Decoded:
    """What a batch of records became: rows, and the records rejected with a reason."""

    table: pa.Table
    bad: list[tuple[int, int, str]] = field(default_factory=list)  # partition, offset, why


#: One Kafka record as the sink sees it: (partition, offset, value).
Record = tuple[int, int, bytes | None]


def decode(dataset: L.Dataset, records: list[Record],
           held: Mapping[tuple[int, int], pa.Table] | None = None) -> Decoded:
    """Rows of ``records`` (one topic) in ``dataset.schema``. Empty values (heartbeats,
    tombstones) hold no rows; a record that does not decode is rejected whole.

    ``held``: rows already known by (partition, offset), as the record's NDJSON would
    parse (the normaliser's tables, pipeline/stream/handoff.py); those records are not
    parsed again."""
    if dataset is L.ALERTS:
        return _decode_alerts(records)
    if not held:
        return _parse(dataset, records)
    known = [(p, o, held[(p, o)]) for p, o, _v in records if (p, o) in held]
    d = _parse(dataset, [r for r in records if (r[0], r[1]) not in held])
    if known:
        # Row order across records does not matter: split() sorts by time, then offset.
        d.table = pa.concat_tables([d.table, *(_with_source(dataset, p, o, t)
                                               for p, o, t in known)])
    return d


def _with_source(dataset: L.Dataset, partition: int, offset: int,
                 rows: pa.Table) -> pa.Table:
    """Held rows of one record in ``dataset.schema``: its columns, then where it came from."""
    n = rows.num_rows
    return _in_dataset(dataset, rows, np.full(n, partition), np.full(n, offset))


def _in_dataset(dataset: L.Dataset, table: pa.Table, partitions: np.ndarray,
                offsets: np.ndarray) -> pa.Table:
    """``table`` in ``dataset.schema``: the record's columns in order and types (cast
    only if they differ: Table.cast casts every column, even to its own type), then each
    row's source partition and offset."""
    schema = dataset.record_schema
    t = table.select(schema.names)
    if not t.schema.equals(schema):
        t = t.cast(schema)
    return (t.append_column(L.SOURCE_FIELDS[0], pa.array(partitions.astype(np.int32)))
            .append_column(L.SOURCE_FIELDS[1], pa.array(offsets.astype(np.int64))))


def _parse(dataset: L.Dataset, records: list[Record]) -> Decoded:
    """Rows of NDJSON records: all in one parse, or each alone to isolate a bad one."""
    live = [(p, o, v.strip()) for p, o, v in records if v and v.strip()]
    if not live:
        return Decoded(dataset.schema.empty_table())
    try:                                      # fast path: the whole batch in one parse
        return Decoded(_read_ndjson(dataset, live))
    except (pa.ArrowInvalid, ValueError):
        pass
    tables, bad = [], []
    for rec in live:                          # isolate the bad record(s)
        try:
            tables.append(_read_ndjson(dataset, [rec]))
        except (pa.ArrowInvalid, ValueError) as exc:
            bad.append((rec[0], rec[1], f"{dataset.topic} record does not decode: "
                                        f"{str(exc)[:300]}"))
    table = pa.concat_tables(tables) if tables else dataset.schema.empty_table()
    return Decoded(table, bad)


def _read_ndjson(dataset: L.Dataset, live: list[tuple[int, int, bytes]]) -> pa.Table:
    """One Arrow parse of the records' lines (NDJSON with the schema's field names)."""
    lines = [v.count(b"\n") + 1 for _p, _o, v in live]
    body = b"\n".join(v for _p, _o, v in live)
    schema = dataset.record_schema
    # One thread: the sink shares its process (and the machine) with the stream stages.
    t = pj.read_json(io.BytesIO(body), read_options=pj.ReadOptions(block_size=1 << 24,
                                                                   use_threads=False),
                     parse_options=pj.ParseOptions(explicit_schema=schema,
                                                   unexpected_field_behavior="error"))
    if t.num_rows != sum(lines):
        raise ValueError(f"{t.num_rows} rows from {sum(lines)} lines (blank lines?)")
    for f in schema:
        if not f.nullable and t.column(f.name).null_count:
            raise ValueError(f"{f.name} is null or missing")
    # Required fields must be there; a nullable one may be absent (a record written
    # before that column existed lands with it null), a misspelled one is unexpected.
    missing = {f.name for f in schema if not f.nullable} - _present_fields(body)
    if missing:
        raise ValueError(f"missing fields: {sorted(missing)[:5]}")
    # Each record's partition and offset, repeated once per line (per batch, in numpy).
    return _in_dataset(dataset, t, np.repeat([p for p, _o, _v in live], lines),
                       np.repeat([o for _p, o, _v in live], lines))


def _present_fields(body: bytes) -> set[str]:
    """Field names of the first line (every line of a producer has the same keys)."""
    end = body.find(b"\n")
    first = body if end < 0 else body[:end]
    obj = orjson.loads(first)
    return set(obj) if isinstance(obj, dict) else set()


def _decode_alerts(records: list[Record]) -> Decoded:
    rows, bad = [], []
    for p, o, v in records:
        if not v:
            continue
        try:
            a = orjson.loads(v)
            problems = A.validate(a) if isinstance(a, dict) else ["not an object"]
            if problems:
                raise ValueError("; ".join(problems[:3]))
            row = dict(a)
            row[A.EVIDENCE] = orjson.dumps(a[A.EVIDENCE], option=orjson.OPT_SORT_KEYS
                                           ).decode()
            for name in (A.FIRST_SEEN, A.LAST_SEEN, A.EMITTED_AT):
                row[name] = C.parse_rfc3339(a[name]) if a.get(name) else None
            row[L.KAFKA_PARTITION], row[L.KAFKA_OFFSET] = p, o
            rows.append(row)
        except (ValueError, TypeError, KeyError) as exc:
            bad.append((p, o, f"llm_alerts record is not an alert: {str(exc)[:300]}"))
    table = pa.Table.from_pylist(rows, schema=L.ALERTS.schema) if rows \
        else L.ALERTS.schema.empty_table()
    return Decoded(table, bad)


_US_PER_HOUR = 3_600_000_000
_EPOCH_DAY = dt.date(1970, 1, 1)


def split(dataset: L.Dataset, table: pa.Table) -> dict[str, pa.Table]:
    """The rows of each hive partition (relative directory -> rows sorted by time, then
    offset). Why one sort: the rows are ordered by (tenant, day or hour, time, offset)
    once and each partition is a zero-copy slice, instead of a filter and a sort (two
    copies of every column) per partition."""
    if table.num_rows == 0:
        return {}
    ts = table.column(dataset.time_column)
    tenant = table.column(C.TENANT)
    if ts.null_count or tenant.null_count:   # decode() refuses such rows: a bug if here
        raise ValueError(f"{dataset.name}: rows without {dataset.time_column} or tenant")
    us = ts.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    hours = us // _US_PER_HOUR
    bucket = hours if dataset.hourly else hours // 24
    codes = pc.dictionary_encode(tenant).combine_chunks()   # one dictionary for all chunks
    code = codes.indices.to_numpy()
    names = codes.dictionary.to_pylist()
    order = np.lexsort((table.column(L.KAFKA_OFFSET).to_numpy(), us, bucket, code))
    code, bucket = code[order], bucket[order]
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1])
                                  | (bucket[1:] != bucket[:-1])])
    ends = np.r_[starts[1:], len(order)]
    rows = table.take(pa.array(order))
    out = {}
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        h = int(bucket[a]) if dataset.hourly else int(bucket[a]) * 24
        day = _EPOCH_DAY + dt.timedelta(days=h // 24)
        rel = L.partition_dir(dataset, names[code[a]], day,
                              h % 24 if dataset.hourly else None)
        out[rel] = rows.slice(a, b - a)
    return out


Hook = Callable[[str], None]


class PartitionWriter:
    """Lands the offset ranges of one source partition of one dataset (module docstring:
    the protocol). ``hook(step)`` is called after each step ("temps", "state", "rename",
    "renamed"): the crash tests kill the process there."""

    def __init__(self, fs: LakeFS, dataset: L.Dataset, partition: int,
                 hook: Hook | None = None) -> None:
        self.fs = fs
        self.dataset = dataset
        self.partition = partition
        self.hook = hook or (lambda _step: None)
        self.state_rel = f"{L.STATE_DIR}/{dataset.name}/p{partition}.json"
        self.next_offset: int | None = None
        self.rows = 0
        self.files = 0

    def recover(self) -> int | None:
        """Finish a committed flush, drop an uncommitted one; the next offset to land
        (None: nothing landed yet, start from the topic's beginning)."""
        state = self._state()
        for tmp, final in state.get("pending", []):
            if self.fs.exists(tmp):
                self.fs.commit(tmp, final)
        for rel in self.fs.list(self.dataset.name, ".parquet" + L.TMP_SUFFIX):
            parsed = L.parse_file_name(rel.rsplit("/", 1)[-1][:-len(L.TMP_SUFFIX)])
            if parsed and parsed[0] == self.partition:
                self.fs.remove(rel)
        self.next_offset = state.get("next_offset")
        self.rows, self.files = state.get("rows", 0), state.get("files", 0)
        return self.next_offset

    def start_at(self, offset: int) -> None:
        """Record where a partition without lake state starts (its first position), so
        a restart resumes there instead of wherever the offset reset would jump."""
        if self.next_offset is None:
            self._write_state(offset, [], None)
            self.next_offset = offset

    def _write_state(self, next_offset: int, pending: list, last: list | None) -> None:
        self.fs.replace_text(self.state_rel, json.dumps({
            "dataset": self.dataset.name, "partition": self.partition,
            "next_offset": next_offset, "pending": pending, "last_flush": last,
            "rows": self.rows, "files": self.files}))

    def flush(self, start: int, end: int, parts: dict[str, pa.Table]) -> list[str]:
        """Land offsets ``[start, end)`` whose rows are ``parts`` (from :func:`split`);
        the final paths written."""
        if end <= start:
            raise ValueError(f"empty offset range [{start}, {end})")
        name = L.file_name(self.partition, start, end)
        pending = []
        for rel_dir, table in sorted(parts.items()):
            final = f"{rel_dir}/{name}"
            tmp = final + L.TMP_SUFFIX
            self.fs.write_parquet(tmp, table, L.SINK_COMPRESSION_LEVEL)   # compacted later
            pending.append((tmp, final))
        self.hook("temps")
        self.rows += sum(t.num_rows for t in parts.values())
        self.files += len(pending)
        self._write_state(end, pending, [start, end])      # the commit point
        self.next_offset = end
        self.hook("state")
        for tmp, final in pending:
            self.fs.commit(tmp, final)
            self.hook("rename")
        self.hook("renamed")
        return [final for _tmp, final in pending]

    def _state(self) -> dict[str, Any]:
        text = self.fs.read_text(self.state_rel)
        return json.loads(text) if text else {}


def committed(fs: LakeFS, dataset: L.Dataset) -> dict[int, int]:
    """Next offset to land per source partition, from the lake's state files."""
    out = {}
    for rel in fs.list(f"{L.STATE_DIR}/{dataset.name}", ".json"):
        text = fs.read_text(rel)
        if text:
            s = json.loads(text)
            out[int(s["partition"])] = int(s["next_offset"])
    return out


def land(fs: LakeFS, dataset: L.Dataset, records: Iterable[Record],
         writers: dict[int, PartitionWriter] | None = None) -> Decoded:
    """Decode, split and flush ``records`` of one dataset in one go per source partition
    (the sink buffers, this is the flush; tests and the benchmark call it directly)."""
    by_part: dict[int, list[Record]] = {}
    for r in records:
        by_part.setdefault(r[0], []).append(r)
    writers = writers if writers is not None else {}
    tables, bad = [], []
    for part, recs in sorted(by_part.items()):
        w = writers.get(part)
        if w is None:
            w = writers[part] = PartitionWriter(fs, dataset, part)
            w.recover()
        if w.next_offset is not None:
            recs = [r for r in recs if r[1] >= w.next_offset]   # landed before
        if not recs:
            continue
        d = decode(dataset, recs)
        w.flush(recs[0][1], recs[-1][1] + 1, split(dataset, d.table))
        tables.append(d.table)
        bad += d.bad
    table = pa.concat_tables(tables) if tables else dataset.schema.empty_table()
    return Decoded(table, bad)
