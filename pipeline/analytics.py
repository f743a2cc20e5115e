"""DuckDB over the lake: a connection with llmspend's views and macros loaded.

    from pipeline.analytics import connect
    con = connect()                       # the configured data dir (LLMSPEND_DATA_DIR)
    con.sql("SELECT team, sum(cost_usd) FROM calls GROUP BY team").show()

The views (``schemas/sql/views.sql``) read the Parquet files at query time, so a
connection kept open sees new flushes; a dataset with no file yet reads as an empty
table of the right shape.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from schemas import aggregates as G
from schemas import calls as C
from schemas import lake as L
from schemas import latency_buckets as LB

SQL_DIR = Path(__file__).resolve().parents[1] / "schemas" / "sql"
VIEWS = ("calls", "agg_1m", "agg_1m_partials", "agg_1h", "agg_1d", "alerts", "alert_events",
         "prices")


def macros_sql() -> str:
    """``schemas/sql/macros.sql`` with the latency layout's constants filled in."""
    return _fill((SQL_DIR / "macros.sql").read_text(), min_ms=repr(LB.MIN_MS),
                 max_bucket=str(LB.MAX_BUCKET), log_gamma=repr(LB.LOG_GAMMA),
                 gamma=repr(LB.GAMMA))


def _fill(sql: str, **values: str) -> str:
    """Replace ``{name}`` placeholders (SQL's own braces, struct literals, stay)."""
    for k, v in values.items():
        sql = sql.replace("{" + k + "}", v)
    return sql


def _source(con: duckdb.DuckDBPyConnection, data_dir: Path, ds: L.Dataset) -> str:
    """The relation a view reads: the dataset's files, or an empty typed table."""
    if any((data_dir / ds.name).rglob("*.parquet")):
        hive = ", ".join(f"'{k}': {v}" for k, v in L.HIVE_TYPES.items()
                         if k != L.HOUR or ds.hourly)
        glob = ds.glob(str(data_dir)).replace("'", "''")
        return (f"read_parquet('{glob}', hive_partitioning = true, "
                f"hive_types = {{{hive}}}, union_by_name = true)")
    empty = ds.schema.empty_table()
    if C.TENANT not in empty.column_names:
        empty = empty.append_column(C.TENANT, pa.array([], pa.string()))
    empty = empty.append_column(L.DT, pa.array([], pa.date32()))
    if ds.hourly:
        empty = empty.append_column(L.HOUR, pa.array([], pa.int32()))
    name = f"_llmspend_empty_{ds.name}"
    con.register(name, empty)
    return name


def views_sql(con: duckdb.DuckDBPyConnection, data_dir: Path,
              sources: dict[str, str] | None = None) -> str:
    """``schemas/sql/views.sql`` over the lake at ``data_dir`` (``sources`` may replace
    a dataset's relation, e.g. one big file in the layout benchmark)."""
    keys = ", ".join(G.KEY_COLUMNS)
    sums = ",\n       ".join(f"sum({n})::BIGINT AS {n}" for n in G.COUNT_FIELDS)
    src = {f"{name}_source": (sources or {}).get(name) or _source(con, data_dir, ds)
           for name, ds in L.ALL_DATASETS.items()}
    return _fill((SQL_DIR / "views.sql").read_text(), agg_keys=keys, agg_count_sums=sums,
                 **src)


def prices_table(catalog=None) -> pa.Table:
    """The pricing catalog as rows (``schemas.lake.PRICES``): every model's price
    versions and tiers, so SQL can value tokens (cache savings, what-ifs)."""
    from pipeline import pricing

    catalog = catalog or pricing.load_catalog()
    rows = []
    for e in catalog.entries:
        for v in e.versions:
            for tier in ([v.base] if v.base else []) + list(v.tiers):
                rows.append({"price_version": e.version_id(v), "provider": e.provider,
                             "model": e.model, "effective_from": v.effective_from,
                             "above_input_tokens": tier.above_input_tokens,
                             **{f"{c}_usd_per_mtok": getattr(tier, c)
                                for c in L.PRICE_COLUMNS}})
    return pa.Table.from_pylist(rows, schema=L.PRICES)


def load(con: duckdb.DuckDBPyConnection, data_dir: str | Path,
         sources: dict[str, str] | None = None) -> None:
    """(Re)create the macros and views on ``con`` for the lake at ``data_dir`` (run it
    again after the first file of a dataset appears, to switch from the empty table).
    Times are UTC in the session (``now()``, ``current_date``), like ``dt``."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute(macros_sql())
    con.execute(views_sql(con, Path(data_dir), sources))
    con.register("_llmspend_prices", prices_table())
    con.execute("CREATE OR REPLACE VIEW prices AS SELECT * FROM _llmspend_prices")


def connect(data_dir: str | Path | None = None, database: str = ":memory:",
            threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views and macros over the lake at ``data_dir``
    (default: the configured one)."""
    if data_dir is None:
        from pipeline.config import load_settings

        data_dir = load_settings().lake_dir
    con = duckdb.connect(database)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    load(con, data_dir)
    return con


def readme_questions(readme: str | Path | None = None) -> list[str]:
    """The SQL of the README's "Analysts" section, in order (a test runs each on a
    generated lake, and ``bench/bench_lake.py`` times them on 10 M rows)."""
    import re

    path = Path(readme) if readme else Path(__file__).resolve().parents[1] / "README.md"
    text = path.read_text()
    section = text[text.index("## Analysts"):]
    section = section[:section.index("\n## ", 10)]
    return re.findall(r"```sql\n(.*?)```", section, re.S)
