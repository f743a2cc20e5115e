"""`llmspend sql`: run SQL over the lake's views, or a small interactive prompt.

The DuckDB wheel has no shell of its own, so the prompt is here: statements may span
lines and end with ``;``, history is kept (``<state_dir>/sql_history``), and a few dot
commands help find one's way (``.tables``, ``.schema NAME``, ``.help``, ``.quit``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import duckdb

FORMATS = ("table", "csv", "json", "parquet")
HELP = """\
Statements end with ';' and may span lines. Views: calls, agg_1m, agg_1m_partials,
alerts, alert_events; macros: llmspend_p50/p95/p99(sketch), llmspend_sketch_of(ms),
llmspend_sketch_merge(sketch), llmspend_latency_bucket(ms), llmspend_bucket_value(b).
.tables          list views and tables
.schema NAME     columns of a view or table
.help            this text
.quit            leave (also Ctrl-D)"""


class SqlError(Exception):
    """A query that DuckDB refused; the message is DuckDB's."""


def run(con: duckdb.DuckDBPyConnection, sql: str, fmt: str = "table",
        out: str | Path | None = None, stream: TextIO | None = None) -> int:
    """Run ``sql`` and write its result in ``fmt`` to ``out`` (a file) or ``stream``;
    the number of rows."""
    stream = stream or sys.stdout
    try:
        rel = con.sql(sql)
    except duckdb.Error as exc:
        raise SqlError(str(exc)) from None
    if rel is None:                        # a statement without a result (SET, CREATE)
        return 0
    if fmt == "parquet":
        if out is None:
            raise SqlError("--format parquet needs --out FILE")
        rel.write_parquet(str(out))
        return len(rel)
    try:
        names, rows = rel.columns, rel.fetchall()
    except duckdb.Error as exc:
        raise SqlError(str(exc)) from None
    target = open(out, "w", newline="") if out else stream   # noqa: SIM115 - closed below
    try:
        if fmt == "csv":
            w = csv.writer(target)
            w.writerow(names)
            w.writerows([[_text(v) for v in r] for r in rows])
        elif fmt == "json":
            json.dump([dict(zip(names, r, strict=True)) for r in rows], target,
                      default=_json_default, indent=1)
            target.write("\n")
        else:
            target.write(table(names, rows))
    finally:
        if out:
            target.close()
    return len(rows)


def table(names: list[str], rows: list[tuple]) -> str:
    """An aligned text table (numbers right-aligned) with a row count footer."""
    cells = [[_text(v) for v in r] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    numeric = [all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in rows)
               and bool(rows) for i in range(len(names))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(list(names)), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return str(v)


def _json_default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)                       # money stays exact
    if isinstance(v, dt.date | dt.datetime | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    return str(v)


def shell(con: duckdb.DuckDBPyConnection, history: Path | None = None,
          stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """The interactive prompt (also reads statements piped on stdin)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    if interactive:
        _readline(history)
        stdout.write("llmspend sql: DuckDB over the lake. .help for help, .quit to leave.\n")
    buf: list[str] = []
    while True:
        try:
            if interactive:
                line = input("llmspend> " if not buf else "     ...> ")
            else:
                line = stdin.readline()
                if not line:
                    break
                line = line.rstrip("\n")
        except EOFError:
            break
        except KeyboardInterrupt:
            buf = []
            stdout.write("\n")
            continue
        if not buf and line.strip().startswith("."):
            if not _dot(con, line.strip(), stdout):
                break
            continue
        buf.append(line)
        if line.rstrip().endswith(";"):
            sql = "\n".join(buf).strip()
            buf = []
            try:
                run(con, sql, stream=stdout)
            except SqlError as exc:
                stdout.write(f"error: {exc}\n")
    if buf and "".join(buf).strip():
        try:
            run(con, "\n".join(buf), stream=stdout)
        except SqlError as exc:
            stdout.write(f"error: {exc}\n")


def _dot(con: duckdb.DuckDBPyConnection, cmd: str, out: TextIO) -> bool:
    """Run a dot command; False to leave."""
    word, _, arg = cmd.partition(" ")
    if word in (".quit", ".exit", ".q"):
        return False
    if word == ".tables":
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' AND table_name NOT LIKE '\\_llmspend%' ESCAPE '\\' "
            "ORDER BY 1").fetchall()]
        out.write("  ".join(names) + "\n")
    elif word == ".schema" and arg.strip():
        try:
            run(con, f"DESCRIBE {_ident(arg.strip())}", stream=out)
        except SqlError as exc:
            out.write(f"error: {exc}\n")
    elif word == ".help":
        out.write(HELP + "\n")
    else:
        out.write(f"unknown command {word} (.help)\n")
    return True


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _readline(history: Path | None) -> None:
    try:
        import atexit
        import readline
    except ImportError:                     # no readline (Windows): plain input()
        return
    if history is not None:
        history.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):       # no history yet
            readline.read_history_file(history)
        atexit.register(readline.write_history_file, history)
