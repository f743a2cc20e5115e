"""``llmspend generate``: the click command (registered by ``pipeline/cli.py``)."""

from __future__ import annotations

import datetime as dt
import sys
from decimal import Decimal
from typing import Any

import click

from pipeline.traffic import emit as emit_mod
from pipeline.traffic.plan import DEFAULT_MIX, SCENARIOS, Options, PlanError, parse_mix
from pipeline.traffic.truth import Truth

_MIX_TEXT = ",".join(f"{c}={w:g}" for c, w in DEFAULT_MIX)


def _tenant_tokens(pairs: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pair in pairs:
        token, sep, tenant = pair.partition("=")
        if not sep or not token.strip() or not tenant.strip():
            raise click.BadParameter(f"expected TOKEN=TENANT, got {pair!r}",
                                     param_hint="--tenant-token")
        if tenant.strip() in out:
            raise click.BadParameter(f"tenant {tenant.strip()!r} given twice",
                                     param_hint="--tenant-token")
        out[tenant.strip()] = token.strip()
    return out


def _start_time(text: str | None) -> int | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time",
                                 param_hint="--start-time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1_000_000) * 1000


def _money(d: Decimal) -> str:
    return f"${d:,.6f}"


def summary_lines(truth: Truth, emitted: Any = None) -> list[str]:
    """The ground-truth summary as plain text lines."""
    t = truth.totals
    out = [f"traffic   {truth.start_time} -> {truth.end_time}  ({truth.horizon_s:,.0f} s of "
           f"trace time, seed {truth.seed})",
           f"calls     {t.calls:,} ({t.llm_calls:,} llm, {t.tool_calls:,} tool; "
           f"{t.errors:,} failed attempts, {t.unpriced_calls:,} unpriced)  "
           f"sessions {truth.sessions:,}  spans {truth.spans:,} (+{truth.duplicate_spans:,} "
           f"duplicates)",
           f"tokens    input {t.input_tokens:,} (cache read {t.cached_input_tokens:,}, "
           f"cache write {t.cache_write_tokens:,})  output {t.output_tokens:,}",
           f"cost      {_money(t.list_cost_usd)} at list prices (exact: "
           f"{t.list_cost_usd:f} USD)"]
    for title, group in (("model", truth.by_model), ("team", truth.by_team),
                         ("use case", truth.by_use_case), ("tenant", truth.by_tenant)):
        out.append(f"by {title}:")
        for name, g in group.items():
            extra = ""
            if title == "model" and name in truth.latency_p95_ms:
                extra = f"  p95 {truth.latency_p95_ms[name]:,.0f} ms"
            out.append(f"  {name:<24} {g.calls:>8,} calls  {_money(g.list_cost_usd):>14}"
                       f"{extra}")
    if truth.unpriced:
        out.append("unpriced: " + ", ".join(f"{k} {v:,}" for k, v in truth.unpriced.items()))
    for e in truth.scenarios:
        sig = ", ".join(f"{k}={v}" for k, v in e["signature"].items())
        ids = e["session_ids"]
        shown = ", ".join(ids[:3]) + (f" (+{len(ids) - 3} more)" if len(ids) > 3 else "")
        out.append(f"scenario  {e['scenario']} tenant={e['tenant']} {e['start_time']} -> "
                   f"{e['end_time']} sessions: {shown or '-'}")
        out.append(f"          {sig}")
    if emitted is not None:
        out.append(f"sent      {emitted.exported:,} of {emitted.spans:,} spans in "
                   f"{emitted.seconds:,.1f} s ({emitted.spans_per_s:,.0f} spans/s, "
                   f"{emitted.batches:,} batches)"
                   + (f"; {emitted.failed:,} FAILED" if emitted.failed else ""))
    return out


@click.command("generate")
@click.option("--endpoint", default=None,
              help="Where to send: OTLP/HTTP URL (default http://127.0.0.1:4318/v1/traces; "
                   "a base URL gets /v1/traces), gRPC host:port (default 127.0.0.1:4317). "
                   "Unused for kafka (the LLMSPEND_KAFKA_* settings).")
@click.option("--protocol", type=click.Choice(emit_mod.PROTOCOLS), default="http",
              show_default=True, help="Stock OTLP exporter, or llmspend's Kafka exporter.")
@click.option("--rate", type=float, default=60.0, show_default=True,
              help="Time compression: trace seconds per wall second (60: an hour in a "
                   "minute).")
@click.option("--max-rate", is_flag=True,
              help="Send as fast as the endpoint accepts (event times then end now).")
@click.option("--duration", "duration_s", type=float, default=None,
              help="Traffic (trace) seconds to generate [default: the trace's hour].")
@click.option("--calls", type=int, default=None,
              help="Stop the baseline traffic after about N calls (scenarios add theirs).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--scenario", "scenarios", type=click.Choice(SCENARIOS), multiple=True,
              help="Add a scenario (repeatable, combinable).")
@click.option("--mix", default=_MIX_TEXT, show_default=True,
              help="Share of sessions per span convention.")
@click.option("--tenant-token", "tenant_tokens", multiple=True, metavar="TOKEN=TENANT",
              help="Bearer token of a tenant (repeatable): sessions are spread over them. "
                   "Default: tenant 'default' without a header.")
@click.option("--service-prefix", default="",
              help="Prefix of every service.name (tell runs apart).")
@click.option("--environment", default="production", show_default=True,
              help="deployment.environment.name of every service.")
@click.option("--start-time", default=None,
              help="Event time of the first arrival (ISO 8601; default now).")
@click.option("--dry-run", is_flag=True, help="Plan and print the truth; send nothing.")
@click.option("--truth", "truth_file", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Write the ground truth as JSON to this file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@click.pass_context
def generate_command(ctx: click.Context, endpoint: str | None, protocol: str, rate: float,
                     max_rate: bool, duration_s: float | None, calls: int | None, seed: int,
                     scenarios: tuple[str, ...], mix: str, tenant_tokens: tuple[str, ...],
                     service_prefix: str, environment: str, start_time: str | None,
                     dry_run: bool, truth_file: str | None, quiet: bool) -> None:
    """Generate realistic GenAI traffic (spans through the real OTel SDK) with its truth.

    Replays the Azure LLM inference trace 2023 (CC BY 4.0) as sessions of several
    services, teams and tenants, and prints the ground truth (calls, tokens, exact list
    cost, P95 latency, scenario events) that llmspend's output must match.
    """
    from pipeline.traffic import generator

    tokens = _tenant_tokens(tenant_tokens)
    try:
        opts = Options(seed=seed, start_time_ns=_start_time(start_time), rate=rate,
                       duration_s=duration_s, calls=calls, scenarios=tuple(scenarios),
                       mix=parse_mix(mix), tenants=tuple(tokens) or ("default",),
                       environment=environment, service_prefix=service_prefix)
        opts.validate()
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    settings = None
    if protocol == emit_mod.KAFKA and not dry_run:
        from pipeline.config import load_settings

        settings = load_settings(config_file=ctx.find_root().params.get("config"))
    show = not quiet and sys.stderr.isatty()
    progress_cb, bar = None, None
    if show and not dry_run:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]:>8} spans/s"),
                       TextColumn("acked {task.fields[acked]}"),
                       TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        task = bar.add_task("generate", total=None, rate="-", acked="0")

        def progress_cb(done: int, total: int, stats: Any) -> None:
            bar.update(task, completed=done, total=total, rate=f"{stats.spans_per_s:,.0f}",
                       acked=f"{stats.exported:,}")
    try:
        if bar is not None:
            bar.start()
        result = generator.generate(
            opts, protocol=protocol, endpoint=endpoint,
            tenant_tokens=tokens if any(tokens.values()) else None,
            settings=settings, max_rate=max_rate, dry_run=dry_run, progress=progress_cb)
    except (PlanError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if bar is not None:
            bar.stop()
    if truth_file:
        result.truth.write(truth_file)
    if not quiet:
        for line in summary_lines(result.truth, result.emitted):
            click.echo(line)
        if truth_file:
            click.echo(f"truth     written to {truth_file}")
    if result.emitted is not None and result.emitted.failed:
        click.echo(f"llmspend: error: {result.emitted.failed} spans were not accepted by "
                   f"the endpoint; the truth counts them", err=True)
        sys.exit(1)
