"""The Parquet lake's layout: datasets, partitioning, file names, Parquet settings.

Three datasets under the data directory (``LLMSPEND_DATA_DIR``), one per topic:

* ``calls/tenant=T/dt=YYYY-MM-DD/hour=HH/`` from ``llm_calls`` (by the call's
  ``start_time``, UTC);
* ``agg_1m/tenant=T/dt=YYYY-MM-DD/`` from ``llm_agg_1m`` (by ``window_start``);
* ``alerts/tenant=T/dt=YYYY-MM-DD/`` from ``llm_alerts`` (by ``emitted_at``).

and two written by the rollup job (``jobs/rollup.py``) from closed days of ``agg_1m``:
``agg_1h/tenant=T/dt=D/rollup.parquet`` and ``agg_1d/tenant=T/dt=D/rollup.parquet``
(:data:`ROLLUPS`, one file per day, replaced whole).

Maintenance jobs (``jobs/``) replace files through a journal in ``_lake/jobs/``; their
files are named ``<job>-<digest>.parquet`` (:data:`JOB_FILE_PREFIXES`), never like the
sink's, so neither side's crash recovery touches the other's temporaries.

Each row keeps its record's fields (the topic's schema from ``schemas/``) plus where it
came from (``_kafka_partition``, ``_kafka_offset``). A file holds the rows of one source
partition's offset range ``[start, end)`` that fall into one hive partition, and is named
after that range (:func:`file_name`), so a file says which records it holds. Partition
values are URL-encoded in paths (DuckDB decodes them). Files are written under a
temporary name ending in :data:`TMP_SUFFIX`, which no view ever globs, then renamed.

The sink's own record of what it committed lives in ``_lake/<dataset>/p<N>.json``
(:data:`STATE_DIR`): the next source offset to write and the renames of its last flush
(see ``pipeline/lake.py`` for the protocol).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote

import pyarrow as pa

from schemas import aggregates as G
from schemas import alerts as A
from schemas import calls as C
from schemas.topics import LLM_AGG_1M, LLM_ALERTS, LLM_CALLS

KAFKA_PARTITION = "_kafka_partition"
KAFKA_OFFSET = "_kafka_offset"
SOURCE_FIELDS = [pa.field(KAFKA_PARTITION, pa.int32(), nullable=False),
                 pa.field(KAFKA_OFFSET, pa.int64(), nullable=False)]

TMP_SUFFIX = ".tmp"
STATE_DIR = "_lake"
#: Parquet writer settings: zstd, and row groups as large as a flush allows (DuckDB
#: parallelises over row groups of ~100k+ rows; smaller files are compacted later).
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3
#: The sink's own files are compacted later: zstd 1 writes them faster at about the
#: same size (``bench/bench_lake.py`` line (z): 2.12 against 2.83 us a row, 115 and 117
#: bytes a row, 60k rows). Compaction and the jobs keep level 3 (not measured there).
SINK_COMPRESSION_LEVEL = 1
ROW_GROUP_ROWS = 1_000_000
#: Columns whose values are all, or nearly all, distinct: ids and content hashes.
#: Dictionary-encoding them costs the writer time and the file bytes (the dictionary
#: outgrows its page and the column falls back to plain pages anyway), so they are
#: written plain; every other column keeps Parquet's dictionary encoding.
PLAIN_COLUMNS = frozenset({C.CALL_ID, C.TRACE_ID, C.SPAN_ID, C.PARENT_SPAN_ID,
                           C.PROMPT_HASH, C.LAST_MESSAGE_HASH, G.AGG_ID})


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` to dictionary-encode (``use_dictionary``)."""
    return [f.name for f in schema if f.name not in PLAIN_COLUMNS]


def parquet_options(schema: pa.Schema, level: int = COMPRESSION_LEVEL) -> dict:
    """``pyarrow.parquet.write_table`` keywords of a lake file of ``schema`` written at
    zstd ``level`` (the sink's files: :data:`SINK_COMPRESSION_LEVEL`)."""
    return {"compression": COMPRESSION, "compression_level": level,
            "row_group_size": ROW_GROUP_ROWS, "use_dictionary": dictionary_columns(schema)}


@dataclass(frozen=True)
class Dataset:
    """One dataset of the lake and the topic it lands."""

    name: str
    topic: str                # "" for the rollups, which no topic feeds
    schema: pa.Schema        # the record's columns, then SOURCE_FIELDS
    time_column: str          # partitions by its UTC date (and hour)
    hourly: bool
    doc: str

    @cached_property
    def record_schema(self) -> pa.Schema:
        """The record's own columns (the schema without where it came from)."""
        return pa.schema([f for f in self.schema if f.name not in (KAFKA_PARTITION,
                                                                    KAFKA_OFFSET)])

    def glob(self, root: str) -> str:
        depth = 3 if self.hourly else 2
        return f"{root}/{self.name}/" + "/".join(["*"] * depth) + "/*.parquet"


def _with_source(schema: pa.Schema) -> pa.Schema:
    return pa.schema(list(schema) + SOURCE_FIELDS)


CALLS = Dataset("calls", LLM_CALLS, _with_source(C.CALLS), C.START_TIME, True,
                "one row per call (a client retry's twin is dropped by the `calls` view)")
AGG_1M = Dataset("agg_1m", LLM_AGG_1M, _with_source(G.AGG_1M), G.WINDOW_START, False,
                 "1-minute partials, as written to llm_agg_1m (the `agg_1m` view merges "
                 "them)")
ALERTS = Dataset("alerts", LLM_ALERTS, _with_source(A.ARROW), A.EMITTED_AT, False,
                 "every alert record (the `alerts` view keeps the latest per incident)")
DATASETS: dict[str, Dataset] = {d.name: d for d in (CALLS, AGG_1M, ALERTS)}
BY_TOPIC: dict[str, Dataset] = {d.topic: d for d in DATASETS.values()}

AGG_1H = Dataset("agg_1h", "", G.ROLLUP, G.WINDOW_START, False,
                 "hourly rollup of the agg_1m view (closed days; jobs/rollup.py)")
AGG_1D = Dataset("agg_1d", "", G.ROLLUP, G.WINDOW_START, False,
                 "daily rollup of the agg_1m view (closed days; jobs/rollup.py)")
ROLLUPS: dict[str, Dataset] = {d.name: d for d in (AGG_1H, AGG_1D)}
ROLLUP_FILE = "rollup.parquet"
#: Key-value metadata of a rollup file: a digest of the agg_1m files it was made from.
ROLLUP_SOURCE_KEY = b"llmspend.rollup_source"
#: Every dataset of the lake, landed or derived.
ALL_DATASETS: dict[str, Dataset] = {**DATASETS, **ROLLUPS}

#: Where the jobs keep their journals, lock and the erasure log.
JOBS_DIR = f"{STATE_DIR}/jobs"
ERASURE_LOG = f"{STATE_DIR}/erasures.jsonl"
JOB_FILE_PREFIXES = ("compact-", "erase-", "reprice-")

#: The ``prices`` table analysts join calls with (``calls.price_version``): the pricing
#: catalog, one row per (model, price version, tier), USD per million tokens.
PRICE_COLUMNS = ("input", "output", "cache_read", "cache_write", "reasoning")
PRICES = pa.schema(
    [pa.field("price_version", pa.string(), False), pa.field("provider", pa.string(), False),
     pa.field("model", pa.string(), False), pa.field("effective_from", pa.date32(), False),
     pa.field("above_input_tokens", pa.int64(), False)]
    + [pa.field(f"{c}_usd_per_mtok", C.MONEY, False) for c in PRICE_COLUMNS])

#: Hive partition columns (``tenant`` is also a record column) and their DuckDB types.
DT, HOUR = "dt", "hour"
HIVE_TYPES = {C.TENANT: "VARCHAR", DT: "DATE", HOUR: "INTEGER"}

_FILE = re.compile(r"^part-p(\d+)-o(\d+)-(\d+)\.parquet$")


def partition_dir(dataset: Dataset, tenant: str, day: dt.date, hour: int | None) -> str:
    """Relative directory of one hive partition."""
    out = f"{dataset.name}/{C.TENANT}={quote(tenant, safe='')}/{DT}={day.isoformat()}"
    return out + (f"/{HOUR}={hour:02d}" if dataset.hourly else "")


def file_name(partition: int, start: int, end: int) -> str:
    """File of source ``partition``'s offsets ``[start, end)`` in one hive partition."""
    return f"part-p{partition:04d}-o{start:020d}-{end:020d}.parquet"


def parse_file_name(name: str) -> tuple[int, int, int] | None:
    """(partition, start, end) of a lake file name, None for anything else."""
    m = _FILE.match(name)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None
