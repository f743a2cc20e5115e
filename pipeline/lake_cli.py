"""The lake's commands: ``llmspend jobs ...`` (maintenance, from a shell or cron),
``llmspend report`` (the KPI report), ``llmspend export focus`` (FinOps FOCUS) and
``llmspend dashboard`` (the offline HTML page).

Each prints what it did in a line or two; ``--json`` prints the same as one JSON object
for scripts. The jobs themselves live in ``jobs/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from pipeline.cli import _expected_errors, _settings
from pipeline.config import Settings
from pipeline.lake_fs import LakeFS, LocalFS


def _fs(ctx: click.Context) -> tuple[Settings, LakeFS]:
    settings = _settings(ctx.find_root())
    data_dir = ctx.find_object(dict).get("data_dir") if ctx.find_object(dict) else None
    return settings, LocalFS(Path(data_dir) if data_dir else settings.lake_dir)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in sorted(value, key=str)] if isinstance(value, set) \
            else [_plain(v) for v in value]
    if isinstance(value, (Decimal, dt.date)):
        return str(value)
    return value


def _emit(as_json: bool, result: Any, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(_plain(result), indent=2))
    else:
        for line in lines:
            click.echo(line)


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected a date YYYY-MM-DD, got {value!r}") from None


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("jobs")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The lake (default: the configured data_dir).")
@click.pass_context
def jobs_group(ctx: click.Context, data_dir: str | None) -> None:
    """Lake maintenance: compaction, rollups, retention, erasure, reprice.

    Every job is safe to interrupt and to run again; one runs at a time per lake.
    """
    ctx.obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    ctx.obj["data_dir"] = data_dir


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@jobs_group.command("run")
@_json_option
@click.pass_context
@_expected_errors
def jobs_run(ctx: click.Context, as_json: bool) -> None:
    """What the worker schedules: compaction, rollups, then retention."""
    from jobs import run_scheduled

    settings, fs = _fs(ctx)
    r = run_scheduled(settings, fs=fs)
    _emit(as_json, r, [
        f"recovered  {r.recovered} interrupted swap(s)",
        *_compact_lines(r.compact), *_rollup_lines(r.rollup), *_retention_lines(r.retention)])


def _compact_lines(c: Any) -> list[str]:
    return [f"compact    {c.partitions} partition(s): {c.files_in} files -> {c.files_out}, "
            f"{c.rows_in} rows -> {c.rows_out} ({c.twins_dropped} twins dropped)",
            *[f"compact    SKIPPED {s}" for s in c.skipped]]


def _rollup_lines(r: Any) -> list[str]:
    return [f"rollup     {r.days} day(s) rolled up ({r.rows_1h} hourly, {r.rows_1d} daily "
            f"rows), {r.unchanged} unchanged"]


def _retention_lines(t: Any) -> list[str]:
    verb = "would delete" if t.dry_run else "deleted"
    out = [f"retention  {verb} {len(t.expired)} partition(s), {t.files} file(s)"]
    out += [f"           {e.rel_dir} ({e.files} files, {e.bytes} B)" for e in t.expired]
    out += [f"           kept {d}: not rolled up yet" for d in t.kept_not_rolled_up]
    return out


def _locked(fs: LakeFS, fn: Any) -> Any:
    from jobs import journal

    with journal.locked(fs):
        journal.recover(fs)
        return fn()


@jobs_group.command("compact")
@_json_option
@click.pass_context
@_expected_errors
def jobs_compact(ctx: click.Context, as_json: bool) -> None:
    """Merge the small files of closed partitions (twins dropped, sums verified)."""
    from jobs.compact import compact

    settings, fs = _fs(ctx)
    j = settings.jobs
    r = _locked(fs, lambda: compact(fs, _now(), j.closed_after_s, j.compact_min_files,
                                    grace_s=j.replaced_files_grace_s))
    _emit(as_json, r, _compact_lines(r))


@jobs_group.command("rollup")
@_json_option
@click.pass_context
@_expected_errors
def jobs_rollup(ctx: click.Context, as_json: bool) -> None:
    """Write agg_1h and agg_1d for closed days whose agg_1m files changed."""
    from jobs.rollup import rollup

    settings, fs = _fs(ctx)
    r = _locked(fs, lambda: rollup(fs, _now(), settings.jobs.closed_after_s))
    _emit(as_json, r, _rollup_lines(r))


@jobs_group.command("retention")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@_json_option
@click.pass_context
@_expected_errors
def jobs_retention(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Delete partitions older than their retention (jobs.calls_days...)."""
    from jobs.retention import retention

    settings, fs = _fs(ctx)
    r = _locked(fs, lambda: retention(fs, _now().date(), settings.jobs, dry_run))
    _emit(as_json, r, _retention_lines(r))


@jobs_group.command("erase")
@click.option("--user", "user_id", default=None, help="The user id as the app sent it.")
@click.option("--pseudonym", default=None,
              help="Or its pseudonym (calls.user_id with privacy.pseudonymise_users).")
@_json_option
@click.pass_context
@_expected_errors
def jobs_erase(ctx: click.Context, user_id: str | None, pseudonym: str | None,
               as_json: bool) -> None:
    """Remove one user's rows from every dataset of the lake, and log it (no id kept)."""
    from jobs.erase import erase

    if bool(user_id) == bool(pseudonym):
        raise click.UsageError("give exactly one of --user and --pseudonym")
    settings, fs = _fs(ctx)
    r = _locked(fs, lambda: erase(fs, settings.hash_key_bytes(), user_id, pseudonym))
    rows = ", ".join(f"{k} {v}" for k, v in sorted(r.rows.items())) or "nothing found"
    _emit(as_json, r, [f"erase      {r.total} row(s) in {r.files} file(s): {rows}",
                       f"           logged as subject {r.subject[:16]}... in _lake/"
                       f"erasures.jsonl"])


@jobs_group.command("erasures")
@click.pass_context
@_expected_errors
def jobs_erasures(ctx: click.Context) -> None:
    """Print the erasure log (one JSON object per erasure)."""
    from jobs.erase import erasure_log

    _, fs = _fs(ctx)
    for entry in erasure_log(fs):
        click.echo(json.dumps(entry))


@jobs_group.command("reprice")
@click.option("--since", required=True, help="First day (YYYY-MM-DD, UTC).")
@click.option("--until", default=None, help="Day after the last (default: since + 1 day).")
@click.option("--tenant", default=None, help="Only this tenant's calls.")
@click.option("--dry-run", is_flag=True, help="Count what would change; write nothing.")
@_json_option
@click.pass_context
@_expected_errors
def jobs_reprice(ctx: click.Context, since: str, until: str | None, tenant: str | None,
                 dry_run: bool, as_json: bool) -> None:
    """Recompute call costs of [since, until) with the current catalog, then the
    aggregates and rollups made from them."""
    from jobs.reprice import reprice

    first = _day(since)
    end = _day(until) if until else first + dt.timedelta(days=1)
    if end <= first:
        raise click.BadParameter("--until must be after --since")
    settings, fs = _fs(ctx)
    r = _locked(fs, lambda: reprice(fs, settings, first, end, tenant, dry_run))
    verb = "would change" if dry_run else "changed"
    r.changed_call_ids = set()          # not printed: can be millions
    _emit(as_json, r, [
        f"reprice    {r.calls_seen} LLM calls priced again, {verb} {r.calls_changed} in "
        f"{r.files} file(s); cost {r.cost_delta_usd:+f} USD, list {r.list_cost_delta_usd:+f}",
        f"           {r.aggregates_changed} agg_1m partial(s) adjusted, "
        f"{r.aggregates_missing} missing, {r.key_changed} call(s) skipped (model changed), "
        f"{r.days_rolled_up} day(s) rolled up again"])


def _connect(ctx: click.Context, data_dir: str | None) -> tuple[Settings, Any]:
    from pipeline.analytics import connect

    settings = _settings(ctx.find_root())
    return settings, connect(Path(data_dir) if data_dir else settings.lake_dir)


def _report_options(fn: Any) -> Any:
    from pipeline.report import BY_CHOICES, COMPARE_HELP, FORMATS, PERIOD_HELP

    for option in reversed([
        click.option("--since", default="7d", show_default=True, metavar="PERIOD",
                     help=PERIOD_HELP),
        click.option("--until", default=None, metavar="WHEN",
                     help="End of the period, exclusive: a date, 2026-11-10T14:00 (UTC) "
                          "or now (default: now, on the minute)."),
        click.option("--by", type=click.Choice(BY_CHOICES), default="team",
                     show_default=True, help="Group the main cost and quality tables by."),
        click.option("--tenant", default=None, help="Only this tenant (and its budgets)."),
        click.option("--compare", "compare_spec", default=None, metavar="A..B",
                     help=COMPARE_HELP),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                     show_default=True,
                     help="table (terminal), markdown, csv (long: section,row,key,metric,"
                          "value; exact) or json (money as decimal strings; exact)."),
        click.option("--out", type=click.Path(dir_okay=False), default=None,
                     help="Write the report to this file instead of the terminal."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="The lake (default: the configured data_dir)."),
    ]):
        fn = option(fn)
    return fn


@click.command("report")
@_report_options
@click.pass_context
@_expected_errors
def report_command(ctx: click.Context, since: str, until: str | None, by: str,
                   tenant: str | None, compare_spec: str | None, fmt: str, out: str | None,
                   data_dir: str | None) -> None:
    """The steering committee's KPIs over a period, from the lake.

    Cost per request and per business unit (tokens, infrastructure, operations), per
    active user and per team against budgets, P95 latency, success, timeout, fallback
    and escalation rates, cache savings, unpriced calls, top sessions and agents,
    change against the previous period, effective against list cost per provider.
    """
    from pipeline.report import ReportError, compare, kpis, parse_compare, parse_period, render

    settings, con = _connect(ctx, data_dir)
    try:
        if compare_spec:
            a, b = parse_compare(compare_spec, parse_period(since, until), tenant=tenant)
            rep = compare(con, settings, a, b)
        else:
            rep = kpis(con, settings, since, until, by=by, tenant=tenant)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    text = render(rep, fmt)
    if out:
        Path(out).write_text(text)
        click.echo(f"report written to {out}", err=True)
    else:
        click.echo(text, nl=False)


@click.group("export")
def export_group() -> None:
    """Export lake data in other tools' formats."""


@export_group.command("focus")
@click.option("--month", required=True, metavar="YYYY-MM", help="The UTC month to export.")
@click.option("--out", default=".", show_default=True,
              help="A directory (files named focus-YYYY-MM.parquet/.csv) or a path prefix.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The lake (default: the configured data_dir).")
@click.pass_context
@_expected_errors
def export_focus(ctx: click.Context, month: str, out: str, data_dir: str | None) -> None:
    """A month of LLM spend as a FinOps FOCUS 1.2 cost dataset (Parquet and CSV).

    Refuses to write an export that breaks a FOCUS column rule (and prints the rules).
    """
    from pipeline import focus

    try:
        first = focus.parse_month(month)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from None
    settings, con = _connect(ctx, data_dir)
    table = focus.charges(con, first, settings)
    problems = focus.validate(table)
    if problems:
        for p in problems[:20]:
            click.echo(f"llmspend: error: FOCUS rule broken: {p}", err=True)
        sys.exit(2)
    parquet, csv_path = focus.write(table, out)
    costs = sum((v for v in table.column("EffectiveCost").to_pylist() if v is not None),
                Decimal(0))
    click.echo(f"focus     {table.num_rows} charge row(s), EffectiveCost {costs} USD -> "
               f"{parquet}, {csv_path}")


@click.command("dashboard")
@click.option("--since", default="7d", show_default=True, metavar="PERIOD",
              help="The period shown (as llmspend report: 7d, 2026-11-10, 2026-W46, "
                   "2026-11, START..END).")
@click.option("--until", default=None, metavar="WHEN", help="End of the period, exclusive.")
@click.option("--tenant", default=None, help="Only this tenant.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the page here (default llmspend-dashboard.html).")
@click.option("--port", type=int, default=None,
              help="Serve the page on this port instead; each reload re-reads the lake.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The lake (default: the configured data_dir).")
@click.pass_context
@_expected_errors
def dashboard_command(ctx: click.Context, since: str, until: str | None,
                      tenant: str | None, out: str | None, port: int | None, host: str,
                      data_dir: str | None) -> None:
    """A self-contained HTML dashboard of the lake (works offline, no CDN)."""
    from pipeline import dashboard
    from pipeline.report import ReportError, parse_period

    settings, con = _connect(ctx, data_dir)
    try:
        period = parse_period(since, until)

        def build() -> str:
            return dashboard.render(dashboard.data(con, settings, period, tenant))
        html = build()
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    if port is not None:
        click.echo(f"dashboard http://{host}:{port}/ (Ctrl-C to stop)")
        dashboard.serve(build, host, port)
        return
    path = Path(out or "llmspend-dashboard.html")
    dashboard.write(html, path)
    click.echo(f"dashboard written to {path.resolve()} ({len(html.encode()) / 1e3:,.0f} KB)")
