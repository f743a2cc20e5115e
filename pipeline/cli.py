"""The ``llmspend`` command line: a thin shell over the pipeline's modules.

Expected failures (port taken, no Java, mvn failure, bad configuration) print one line
``llmspend: error: ...`` and exit non-zero, without a Python traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from jobs.journal import JobError
from pipeline import broker, services, topics
from pipeline.config import ConfigError, Settings, describe, load_settings
from schemas import alerts as A
from schemas.topics import DEAD_LETTERS, OTLP_SPANS_DLQ

EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, broker.BrokerError, topics.TopicSpecError, services.ServiceError, JobError)

#: Background services `up` starts, in order (`down` stops them in reverse).
SERVICES = ("ingest", "worker", "notify")


def _expected_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            click.echo(f"llmspend: error: {exc}", err=True)
            sys.exit(2)
    return wrapper


def _settings(ctx: click.Context) -> Settings:
    if ctx.obj is None:
        ctx.obj = load_settings(config_file=ctx.find_root().params.get("config"))
    return ctx.obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="TOML settings file (default: $LLMSPEND_CONFIG or ./llmspend.toml).")
def main(config: str | None) -> None:
    """llmspend: what your LLM calls cost, as it happens."""


def ensure_topics(settings: Settings) -> topics.TopicPlan:
    """Create missing declared topics and return the plan (for up and demo)."""
    from pipeline.clients import admin_client

    specs = topics.load_topics(settings.topics_file)
    try:
        admin = admin_client(settings, request_timeout_ms=15000)
    except Exception as exc:  # noqa: BLE001 - kafka-python raises several kinds
        raise broker.BrokerError(f"cannot reach Kafka at "
                                 f"{settings.kafka.bootstrap_servers}: {exc}") from None
    try:
        return topics.ensure_topics(admin, specs)
    finally:
        admin.close()


def bring_up(settings: Settings, echo: Callable[[str], Any] = click.echo,
             with_services: bool = False) -> bool:
    """Start the broker if llmspend manages it, the topics, and optionally the services.

    Returns True if a broker was started now.
    """
    started = False
    if settings.kafka.managed:
        pid, started = broker.start(settings)
        verb = "started" if started else "already running"
        echo(f"kafka     {verb} (pid {pid}) on {settings.kafka.bootstrap_servers}")
    else:
        broker.wait_reachable(settings.kafka.bootstrap_servers, 15.0, settings)
        echo(f"kafka     using existing cluster {settings.kafka.bootstrap_servers}")
    plan = ensure_topics(settings)
    for spec in plan.create:
        echo(f"topic     created {spec.name} ({spec.partitions} partitions)")
    for name, declared, actual in plan.mismatched:
        echo(f"topic     WARNING {name} has {actual} partitions, {declared} declared "
             f"(left unchanged)")
    if not plan.create:
        echo(f"topics    {len(plan.present) + len(plan.mismatched)} declared topics present")
    if with_services:
        start_services(settings, echo)
    return started


def _ingest_ready(settings: Settings) -> Callable[[], bool]:
    import urllib.error
    import urllib.request

    url = f"http://{settings.ingest.host}:{settings.ingest.http_port}/health"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
    return ready


def start_services(settings: Settings, echo: Callable[[str], Any] = click.echo) -> None:
    """Start the receivers (and, as stages land, the stream workers) in the background."""
    s = settings.ingest
    pid, now = services.start(settings, "ingest", ["ingest"], _ingest_ready(settings))
    echo(f"ingest    {'started' if now else 'already running'} (pid {pid}): "
         f"OTLP/HTTP http://{s.host}:{s.http_port}/v1/traces, OTLP/gRPC {s.host}:{s.grpc_port}"
         f", log {services.log_path(settings, 'ingest')}")
    start_worker(settings, echo)
    if settings.notify.targets:
        ready_file = settings.state_dir / "run" / "notify.ready"
        if services.running_pid(settings, "notify") is None:
            ready_file.unlink(missing_ok=True)
        pid, now = services.start(settings, "notify", ["notify"], ready_file.exists)
        echo(f"notify    {'started' if now else 'already running'} (pid {pid}): "
             f"{len(settings.notify.targets)} target(s), "
             f"log {services.log_path(settings, 'notify')}")


def start_worker(settings: Settings, echo: Callable[[str], Any] = click.echo) -> None:
    from pipeline.stream.worker import ready_file

    def ready() -> bool:
        return ready_file(settings).exists()

    if services.running_pid(settings, "worker") is None:
        ready_file(settings).unlink(missing_ok=True)
    pid, now = services.start(settings, "worker", ["worker"], ready, timeout_s=120)
    echo(f"worker    {'started' if now else 'already running'} (pid {pid}): stream stages, "
         f"log {services.log_path(settings, 'worker')}")


def stop_services(settings: Settings, echo: Callable[[str], Any] = click.echo) -> None:
    for name in reversed(SERVICES):
        if services.stop(settings, name):
            echo(f"{name:<9} stopped")


@main.command()
@click.pass_context
@_expected_errors
@click.option("--kafka-only", is_flag=True, help="Only the broker and topics, no services.")
def up(ctx: click.Context, kafka_only: bool) -> None:
    """Start the local Kafka broker (unless LLMSPEND_KAFKA_BOOTSTRAP is set), the topics,
    the OTLP receivers and the stream workers."""
    bring_up(_settings(ctx), with_services=not kafka_only)


@main.command()
@click.pass_context
@_expected_errors
def down(ctx: click.Context) -> None:
    """Stop what `up` started. Not an error when nothing runs."""
    settings = _settings(ctx)
    stop_services(settings)
    if not settings.kafka.managed:
        click.echo("kafka     external cluster: nothing to stop")
        return
    click.echo("kafka     stopped" if broker.stop(settings) else "kafka     not running")


@main.command()
@click.pass_context
@_expected_errors
def status(ctx: click.Context) -> None:
    """What runs, where; topics with partition counts and end offsets."""
    settings = _settings(ctx)
    st = broker.status(settings)
    where = "local, managed by llmspend" if st.managed else "external"
    if st.managed:
        state = f"running (pid {st.pid})" if st.pid else "not running"
    else:
        state = "reachable" if st.reachable else "NOT reachable"
    click.echo(f"kafka     {state} at {st.bootstrap} ({where})")
    if st.log_file:
        click.echo(f"log       {st.log_file}")
    for name in SERVICES:
        pid = services.running_pid(settings, name)
        click.echo(f"{name:<9} " + (f"running (pid {pid}), log {services.log_path(settings, name)}"
                                    if pid else "not running"))
    if not st.reachable:
        sys.exit(1)
    for line in topic_report(settings):
        click.echo(line)


def topic_report(settings: Settings) -> list[str]:
    """One line per topic: declared or not, partitions, sum of end offsets."""
    from kafka import TopicPartition

    from pipeline.clients import admin_client, consumer

    declared = {s.name: s for s in topics.load_topics(settings.topics_file)}
    admin = admin_client(settings)
    try:
        existing = topics.existing_partitions(admin)
    finally:
        admin.close()
    c = consumer(settings)
    try:
        tps = [TopicPartition(t, p) for t, n in existing.items() for p in range(n)]
        ends = c.end_offsets(tps) if tps else {}
    finally:
        c.close()
    lines = [f"{'topic':<24} {'partitions':>10} {'end offsets':>12}  note"]
    for name in sorted(set(existing) | set(declared)):
        if name not in existing:
            lines.append(f"{name:<24} {'-':>10} {'-':>12}  MISSING (run `llmspend up`)")
            continue
        total = sum(v for tp, v in ends.items() if tp.topic == name)
        note = ""
        if name in declared and declared[name].partitions != existing[name]:
            note = f"declared {declared[name].partitions} partitions"
        elif name not in declared:
            note = "not declared in topics file"
        lines.append(f"{name:<24} {existing[name]:>10} {total:>12}  {note}")
    return lines


@main.command()
@click.pass_context
@_expected_errors
def ingest(ctx: click.Context) -> None:
    """Run the OTLP/HTTP and OTLP/gRPC receivers in the foreground."""
    import asyncio

    from pipeline import logs
    from pipeline.ingest.server import ReceiverError, serve

    logs.configure()
    try:
        asyncio.run(serve(_settings(ctx)))
    except ReceiverError as exc:
        click.echo(f"llmspend: error: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option("--loglevel", default="info", show_default=True)
@click.pass_context
@_expected_errors
def worker(ctx: click.Context, loglevel: str) -> None:
    """Run the stream stages (Faust worker) in the foreground."""
    from pipeline.stream.worker import run

    run(_settings(ctx), loglevel)


@main.command()
@click.pass_context
@_expected_errors
def notify(ctx: click.Context) -> None:
    """Deliver llm_alerts to the configured targets (webhook, Slack, PagerDuty,
    Alertmanager) in the foreground; each target resumes where it stopped."""
    from pipeline import logs
    from pipeline.notify import run

    logs.configure()
    run(_settings(ctx))


@main.group()
def dlq() -> None:
    """The dead-letter topics: otlp_spans.dlq (span batches that could not be decoded)
    and lake.dlq (records the lake sink could not land)."""


@dlq.command("list")
@click.option("--limit", default=20, show_default=True, help="Show the last N records.")
@click.option("--topic", type=click.Choice(list(DEAD_LETTERS)), default=OTLP_SPANS_DLQ,
              show_default=True, help="Which dead-letter topic.")
@click.pass_context
@_expected_errors
def dlq_list(ctx: click.Context, limit: int, topic: str) -> None:
    """Show dead letters: where they came from and why they failed."""
    import datetime as dt

    from pipeline.dlq import list_dead_letters

    total, entries = list_dead_letters(_settings(ctx.find_root()), limit, topic=topic)
    click.echo(f"{total} record(s) in {topic}" + (f", last {len(entries)}:"
                                                   if entries else ""))
    for e in entries:
        when = dt.datetime.fromtimestamp(e.timestamp_ms / 1000, dt.UTC).isoformat(
            timespec="seconds")
        click.echo(f"  [{e.partition}]@{e.offset} {when} from {e.source} tenant={e.tenant} "
                   f"{e.size} B: {e.error}")


@dlq.command("replay")
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed.")
@click.pass_context
@_expected_errors
def dlq_replay(ctx: click.Context, dry_run: bool) -> None:
    """Send dead letters not yet replayed back to otlp_spans (after a fix)."""
    from pipeline.dlq import replay

    n = replay(_settings(ctx.find_root()), dry_run=dry_run)
    click.echo(f"{n} record(s) {'would be ' if dry_run else ''}replayed to otlp_spans")


@main.command("sql")
@click.argument("query", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
              default="table", show_default=True, help="Output format.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the result to this file (needed for parquet).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The lake (default: the configured data_dir).")
@click.pass_context
@_expected_errors
def sql(ctx: click.Context, query: str | None, fmt: str, out: str | None,
        data_dir: str | None) -> None:
    """Run QUERY over the lake's DuckDB views (calls, agg_1m, alerts...); without QUERY,
    an interactive prompt (statements end with ';', .help)."""
    from pipeline.analytics import connect
    from pipeline.sql_shell import SqlError, run, shell

    settings = _settings(ctx.find_root())
    con = connect(data_dir or settings.lake_dir)
    if query is None:
        shell(con, history=settings.state_dir / "sql_history")
        return
    try:
        run(con, query, fmt, out)
    except SqlError as exc:
        click.echo(f"llmspend: error: {exc}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.stderr.close()


@main.command("alerts")
@click.option("--since", default=None, metavar="DURATION|TIME",
              help="Start with the alerts written since then: a duration back from now "
                   "(30s, 10m, 2h, 1d) or an ISO 8601 time (naive = UTC). Default: only "
                   "alerts written from now on.")
@click.option("--json", "as_json", is_flag=True,
              help="Print each record as one compact JSON line (for scripts).")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep tailing; --no-follow prints what is there up to the current end "
                   "and exits.")
@click.option("--severity", type=click.Choice(A.SEVERITIES, case_sensitive=False),
              default=None,
              help="Minimum severity.")
@click.option("--detector", type=click.Choice(list(A.DETECTORS)), default=None,
              metavar="NAME", help=f"Only this detector: {', '.join(A.DETECTORS)}.")
@click.option("--tenant", default=None, help="Only this tenant (`*`: the pipeline's own).")
@click.option("--state", type=click.Choice(A.STATES, case_sensitive=False), default=None,
              help="Only firing or only resolved records.")
@click.pass_context
@_expected_errors
def alerts(ctx: click.Context, since: str | None, as_json: bool, follow: bool,
           severity: str | None, detector: str | None, tenant: str | None,
           state: str | None) -> None:
    """Tail the alert topic llm_alerts: one line per incident state change.

    Malformed records are reported on stderr (with partition@offset) and skipped.
    Ctrl-C stops.
    """
    import datetime as dt

    from pipeline.alerts_view import parse_since

    settings = _settings(ctx.find_root())
    start_time = None
    if since is not None:
        try:
            start_time = parse_since(since, dt.datetime.now(dt.UTC))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    view = _AlertView(as_json=as_json, color=not as_json and _color_wanted(ctx),
                      filters={"severity": severity, "detector": detector, "tenant": tenant,
                               "state": state})
    try:
        _tail_alerts(settings, start_time, follow, view)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `llmspend alerts | head`: the reader left, not an error
        _silence_stdout()


def _color_wanted(ctx: click.Context) -> bool:
    import os

    if ctx.color is not None:
        return ctx.color
    return "NO_COLOR" not in os.environ and click.get_text_stream("stdout").isatty()


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests)
        pass


class _AlertView:
    """Decode, filter and print alert records for `llmspend alerts`."""

    def __init__(self, as_json: bool, color: bool, filters: dict[str, str | None]) -> None:
        self.as_json, self.color, self.filters = as_json, color, filters

    def decode(self, r: Any) -> dict[str, Any] | None:
        """The record of a Kafka message if it is a well-formed alert that passes the
        filters; a warning on stderr if it is malformed."""
        import json

        from pipeline.alerts_view import matches

        if r.value is None:  # a tombstone: nothing to show
            return None
        problem = ""
        try:
            record = json.loads(r.value.decode("utf-8"))
            if not isinstance(record, dict):
                problem = f"not a JSON object but {type(record).__name__}"
            else:
                problem = "; ".join(A.validate(record))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            problem = f"not UTF-8 JSON ({exc})"
        except Exception as exc:  # noqa: BLE001 - a bad record must never stop the tail
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            problem = " ".join(problem.split())
            click.echo(f"llmspend: warning: malformed alert {r.topic}[{r.partition}]"
                       f"@{r.offset}, skipped: {problem[:300]}", err=True)
            return None
        return record if matches(record, **self.filters) else None

    def show(self, record: dict[str, Any]) -> None:
        import json

        from pipeline.alerts_view import format_line

        if self.as_json:
            click.echo(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
        else:
            click.echo(format_line(record, self.color), color=self.color)


def _tail_alerts(settings: Settings, start_time: Any, follow: bool, view: _AlertView,
                 stall_s: float = 30.0) -> None:
    """Print llm_alerts from ``start_time`` (None: from the end) up to the end offsets
    taken at start, in time order across partitions; then, if ``follow``, what arrives."""
    import heapq
    import time

    from kafka import TopicPartition

    from pipeline.clients import consumer
    from schemas.topics import LLM_ALERTS

    try:
        c = consumer(settings, enable_auto_commit=False, group_id=None)
    except Exception as exc:  # noqa: BLE001 - kafka-python raises several kinds
        raise broker.BrokerError(f"cannot reach Kafka at "
                                 f"{settings.kafka.bootstrap_servers}: {exc}") from None
    try:
        ids = c.partitions_for_topic(LLM_ALERTS)
        if not ids:
            raise broker.BrokerError(f"topic {LLM_ALERTS} does not exist on "
                                     f"{settings.kafka.bootstrap_servers} (run `llmspend up`)")
        parts = [TopicPartition(LLM_ALERTS, p) for p in sorted(ids)]
        c.assign(parts)
        ends = c.end_offsets(parts)
        start = dict(ends)
        if start_time is not None:
            ts_ms = max(0, int(start_time.timestamp() * 1000))
            found = c.offsets_for_times({tp: ts_ms for tp in parts})
            start = {tp: found[tp].offset if found.get(tp) is not None else ends[tp]
                     for tp in parts}
        for tp in parts:
            c.seek(tp, start[tp])
        if follow and sys.stderr.isatty():
            click.echo(f"llmspend: tailing {LLM_ALERTS} on {settings.kafka.bootstrap_servers}"
                       f"{'' if start_time is None else f' since {start_time:%Y-%m-%d %H:%M:%S}Z'}"
                       f" (Ctrl-C to stop)", err=True)

        # The backlog up to the end offsets: buffered per partition, then merged by
        # timestamp (each partition keeps its own order, which is an incident's order).
        backlog: dict[Any, list[tuple[int, dict[str, Any]]]] = {tp: [] for tp in parts}
        positions = {tp: c.position(tp) for tp in parts}
        moved = time.monotonic()
        while any(positions[tp] < ends[tp] for tp in parts):
            for tp, batch in c.poll(timeout_ms=500).items():
                for r in batch:
                    if not follow and r.offset >= ends[tp]:
                        continue
                    record = view.decode(r)
                    if record is not None:
                        backlog[tp].append((r.timestamp, record))
            now_positions = {tp: c.position(tp) for tp in parts}
            if now_positions != positions:
                positions, moved = now_positions, time.monotonic()
            elif time.monotonic() - moved > stall_s:
                click.echo(f"llmspend: warning: no progress reading {LLM_ALERTS} for "
                           f"{stall_s:.0f}s, showing what was read", err=True)
                break
        for _ts, record in heapq.merge(*backlog.values(), key=lambda item: item[0]):
            view.show(record)
        del backlog

        while follow:
            batches = c.poll(timeout_ms=1000)
            fresh = [[(r.timestamp, rec) for r in batch
                      if (rec := view.decode(r)) is not None] for batch in batches.values()]
            for _ts, record in heapq.merge(*fresh, key=lambda item: item[0]):
                view.show(record)
    finally:
        c.close(autocommit=False)


@main.command("config")
@click.pass_context
@_expected_errors
def show_config(ctx: click.Context) -> None:
    """Print every setting: environment variable, TOML key and effective value."""
    settings = _settings(ctx)
    for env_name, dotted, _default in describe():
        value: Any = settings
        for part in dotted.split("."):
            value = getattr(value, part)
        if "password" in dotted and value:
            value = "***"
        click.echo(f"{env_name:<34} {dotted:<26} {value}")


@main.command()
@click.option("--duration", "duration_s", type=click.FloatRange(min=10), default=180.0,
              show_default=True,
              help="Wall seconds of traffic to send (15x compressed: 60 s = 15 minutes).")
@click.option("--seed", type=int, default=11, show_default=True,
              help="Seed of the generated traffic.")
@click.option("--live/--no-live", default=None,
              help="Live terminal view [default: when stdout is a terminal].")
@click.option("--keep", is_flag=True,
              help="Leave the broker and services running afterwards.")
@click.pass_context
@_expected_errors
def demo(ctx: click.Context, duration_s: float, seed: int, live: bool | None,
         keep: bool) -> None:
    """End-to-end demo: realistic traffic with a runaway agent and a budget burn, live.

    Starts Kafka, the receiver and the worker, replays generated traffic through the
    stock OTLP exporter, shows it being priced and alerted on, waits for the Parquet
    lake, checks everything against the generator's truth, prints the KPI report and
    writes the dashboard. Ctrl-C stops it; nothing it started is left running unless
    --keep.
    """
    import os

    from pipeline import demo as demo_mod

    settings = _settings(ctx)
    running = [n for n in SERVICES if services.running_pid(settings, n) is not None]
    if running:
        raise click.ClickException(
            f"{', '.join(running)} already running: the demo starts its own receiver and "
            f"worker (with its tenant's token and budget); stop them first: llmspend down")
    if live is None:
        live = sys.stdout.isatty()
    click.echo(f"plan      {duration_s:.0f} s of traffic ({duration_s * demo_mod.RATE / 60:.0f} "
               f"minutes compressed {demo_mod.RATE:.0f}x) with {' and '.join(demo_mod.SCENARIOS)}")
    dp = demo_mod.prepare(settings, duration_s, seed)
    click.echo(f"plan      tenant {dp.tenant}: {dp.truth.calls:,} calls, {dp.truth.spans:,} "
               f"spans, {dp.truth.list_cost_usd:.2f} USD at list price; daily budget of team "
               f"{dp.budget_team}: {dp.budget_usd} USD")
    os.environ.update(dp.service_env(settings))     # inherited by the services below
    ctx.obj = None
    settings = _settings(ctx)                       # the report sees the demo's budget
    started = False
    try:
        started = bring_up(settings, with_services=True)
        demo_mod.run(settings, click.echo, dp, live=live)
        click.echo("demo      ok")
    except demo_mod.DemoError as exc:
        click.echo(f"llmspend: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: stopping what the demo started", err=True)
        sys.exit(130)
    finally:
        if not keep:
            for name in reversed(SERVICES):
                if services.stop(settings, name):
                    click.echo(f"{name:<9} stopped")
            if started:
                broker.stop(settings)
                click.echo("kafka     stopped (use --keep to leave everything running)")


def _register_generate() -> None:
    from pipeline.lake_cli import dashboard_command, export_group, jobs_group, report_command
    from pipeline.traffic.cli import generate_command

    main.add_command(generate_command, "generate")
    main.add_command(jobs_group, "jobs")
    main.add_command(report_command, "report")
    main.add_command(export_group, "export")
    main.add_command(dashboard_command, "dashboard")


_register_generate()

if __name__ == "__main__":  # pragma: no cover
    main()
