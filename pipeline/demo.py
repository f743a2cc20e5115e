"""The end-to-end demo (`llmspend demo`, the README's first command).

An app instrumented with the real OpenTelemetry SDK and the stock OTLP/HTTP exporter
sends GenAI spans (several teams, models and conventions, with prompt text) to the
llmspend receiver; the receiver strips the text and produces to ``otlp_spans``; the
stream worker normalises and prices every call into ``llm_calls``; the demo reads the
priced calls back and prints what each team spent. Then an agent gets stuck in a loop
(the same tool call with the same arguments, over and over): the demo waits for the
detector's alerts on ``llm_alerts`` (warning at the 3rd repetition, critical at the 6th,
one incident) and prints them with the time they took. Finally it waits for the calls
to land in the Parquet lake and asks DuckDB what each team spent. Later stages (the
dashboard) extend it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pipeline.config import Settings
from schemas.topics import LLM_ALERTS, LLM_CALLS

#: (team, service, model, provider, input tokens, cached, output tokens) per demo call.
DEMO_CALLS = [
    ("support", "support-bot", "gpt-4o-mini", "openai", 2_400, 1_024, 180),
    ("support", "support-bot", "gpt-4o-mini", "openai", 3_100, 2_048, 220),
    ("support", "support-bot", "gpt-4o", "openai", 5_200, 0, 640),
    ("legal", "contract-review", "claude-sonnet-4-5", "anthropic", 18_000, 12_000, 1_500),
    ("legal", "contract-review", "claude-sonnet-4-5", "anthropic", 21_000, 18_000, 900),
    ("search", "doc-search", "text-embedding-3-small", "openai", 8_000, 0, 0),
    ("search", "doc-search", "gemini-2.5-flash", "gcp.gemini", 4_000, 0, 350),
    ("labs", "prototype", "my-finetune-v0", "openai", 1_000, 0, 100),
]


class DemoError(RuntimeError):
    """The demo could not show the whole path (one line for the CLI)."""


def sample_request(n_calls: int = 3) -> bytes:
    """An ExportTraceServiceRequest of GenAI chat spans made by the real OTel SDK."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    _emit(exporter, DEMO_CALLS[:1] * n_calls, session="sample")
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


def _emit(exporter, calls, session: str) -> None:
    """Emit one chat span per call through the SDK to ``exporter``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    by_service: dict[str, list] = defaultdict(list)
    for call in calls:
        by_service[call[1]].append(call)
    for service, group in by_service.items():
        provider = TracerProvider(resource=Resource.create(
            {"service.name": service, "deployment.environment.name": "demo"}),
            shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("llmspend.demo")
        for i, (team, _svc, model, prov, inp, cached, out) in enumerate(group):
            op = "embeddings" if "embedding" in model else "chat"
            with tracer.start_as_current_span(f"{op} {model}") as span:
                span.set_attribute("gen_ai.operation.name", op)
                span.set_attribute("gen_ai.provider.name", prov)
                span.set_attribute("gen_ai.request.model", model)
                span.set_attribute("gen_ai.conversation.id", f"{session}-{service}")
                span.set_attribute("gen_ai.usage.input_tokens", inp)
                span.set_attribute("gen_ai.usage.cache_read.input_tokens", cached)
                span.set_attribute("gen_ai.usage.output_tokens", out)
                span.set_attribute("llmspend.team", team)
                span.set_attribute("user.id", f"user-{i}")
                span.set_attribute("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text",
                                                 "content": f"demo question {i}"}]}]))
        # Flush, not shutdown: shutting a provider down also shuts the shared exporter.
        provider.force_flush()


#: The demo's runaway agent: rounds of (decide with the model, call the same tool).
LOOP_ROUNDS = 7


def _emit_loop(exporter, session: str) -> None:
    """An agent stuck in a loop: the same search with the same arguments, each answer
    empty, the model deciding to search again."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": "refund-agent", "deployment.environment.name": "demo"}),
        shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("llmspend.demo")
    with tracer.start_as_current_span("invoke_agent refund-agent") as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.agent.name", "refund-agent")
        root.set_attribute("gen_ai.conversation.id", session)
        for i in range(LOOP_ROUNDS):
            with tracer.start_as_current_span("chat gpt-4o-mini") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.provider.name", "openai")
                span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                span.set_attribute("gen_ai.conversation.id", session)
                span.set_attribute("gen_ai.usage.input_tokens", 1_800 + 60 * i)
                span.set_attribute("gen_ai.usage.output_tokens", 35)
                span.set_attribute("llmspend.team", "support")
            with tracer.start_as_current_span("execute_tool search_kb") as span:
                span.set_attribute("gen_ai.operation.name", "execute_tool")
                span.set_attribute("gen_ai.tool.name", "search_kb")
                span.set_attribute("gen_ai.conversation.id", session)
                span.set_attribute("gen_ai.tool.call.arguments",
                                   '{"query": "refund policy for damaged items"}')
            provider.force_flush()   # one export per step, as a live agent would
    provider.force_flush()


def _show_loop_alerts(settings: Settings, endpoint: str, echo: Callable[[str], Any]
                      ) -> None:
    """Run the looping agent and print the alerts it raises."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from pipeline.alerts_view import format_line
    from pipeline.clients import end_offsets, read_from

    session = f"demo-loop-{uuid.uuid4().hex[:8]}"
    start = end_offsets(settings, LLM_ALERTS)
    t0 = time.perf_counter()
    _emit_loop(OTLPSpanExporter(endpoint=endpoint), session)
    echo(f"sent      an agent stuck in a loop: search_kb with the same arguments "
         f"{LOOP_ROUNDS} times (session {session})")
    alerts: list[dict] = []

    def done(records) -> bool:
        alerts.clear()
        for r in records:
            try:
                a = json.loads(r.value)
            except ValueError:
                continue
            if isinstance(a, dict) and a.get("subject") == session:
                alerts.append(a)
        return any(a.get("severity") == "critical" for a in alerts)

    read_from(settings, start, done, timeout_s=60)
    if not any(a.get("severity") == "critical" for a in alerts):
        raise DemoError(f"no critical alert for the looping session within 60 s "
                        f"({len(alerts)} alert(s)); see {settings.state_dir}/logs/")
    echo(f"alerted   {len(alerts)} records of ONE incident in {LLM_ALERTS} "
         f"{time.perf_counter() - t0:.1f} s after the first span was sent:")
    for a in alerts:
        echo("  " + format_line(a, color=False))
    echo(f"  it resolves once the session has been quiet for "
         f"{settings.detect.session_quiet_s:.0f} s (follow: llmspend alerts)")


def run(settings: Settings, echo: Callable[[str], Any]) -> None:
    """Send the demo calls through the receiver and print the priced calls."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from pipeline.clients import end_offsets, read_from

    session = f"demo-{uuid.uuid4().hex[:8]}"
    endpoint = f"http://{settings.ingest.host}:{settings.ingest.http_port}/v1/traces"
    start = end_offsets(settings, LLM_CALLS)
    t0 = time.perf_counter()
    _emit(OTLPSpanExporter(endpoint=endpoint), DEMO_CALLS, session)
    echo(f"sent      {len(DEMO_CALLS)} GenAI spans (with prompt text) to {endpoint} with the "
         f"stock OTLP/HTTP exporter")
    calls: dict[str, dict] = {}

    def done(records) -> bool:
        for r in records:
            for line in r.value.splitlines():
                c = json.loads(line)
                if c["session_id"].startswith(session):
                    calls[c["call_id"]] = c
        return len(calls) >= len(DEMO_CALLS)

    read_from(settings, start, done, timeout_s=20)
    if len(calls) < len(DEMO_CALLS):
        echo(f"waiting   {len(calls)} of {len(DEMO_CALLS)} calls priced so far: the worker "
             f"is still working through older records in otlp_spans")
        read_from(settings, start, done, timeout_s=300)
    if len(calls) < len(DEMO_CALLS):
        raise DemoError(f"only {len(calls)} of {len(DEMO_CALLS)} calls reached "
                        f"{LLM_CALLS} within 5 minutes; see {settings.state_dir}/logs/")
    echo(f"priced    {len(calls)} calls in {LLM_CALLS} after "
         f"{time.perf_counter() - t0:.1f} s (receiver -> otlp_spans -> worker -> llm_calls)")
    echo("")
    echo(f"  {'team':<8} {'model':<24} {'in':>7} {'cached':>7} {'out':>6} {'cost USD':>16}")
    teams: dict[str, Decimal] = defaultdict(Decimal)
    for c in sorted(calls.values(), key=lambda c: (c["team"] or "", c["start_time"])):
        cost = c["cost_usd"]
        echo(f"  {c['team'] or '-':<8} {c['request_model']:<24} {c['input_tokens'] or 0:>7} "
             f"{c['cached_input_tokens'] or 0:>7} {c['output_tokens'] or 0:>6} "
             f"{cost if cost is not None else 'unpriced':>16}")
        if cost is not None:
            teams[c["team"] or "-"] += Decimal(cost)
    echo("")
    for team, total in sorted(teams.items(), key=lambda kv: -kv[1]):
        echo(f"  team {team:<10} {total:>16} USD")
    unpriced = sum(1 for c in calls.values() if not c["priced"])
    echo(f"  {unpriced} call(s) with a model missing from the pricing catalog: kept, "
         f"cost_usd null, never priced as zero")
    leaked = [c for c in calls.values() if "demo question" in json.dumps(c)]
    echo("  prompt text in llm_calls: " + ("FOUND (bug!)" if leaked else
                                           "none (keyed hashes only)"))
    echo("")
    _show_loop_alerts(settings, endpoint, echo)
    echo("")
    _show_lake(settings, session, len(calls), echo)
    echo("")
    _show_report_and_dashboard(settings, echo)
    echo("demo      ok")


def _show_lake(settings: Settings, session: str, n: int, echo: Callable[[str], Any]) -> None:
    """Wait for the demo's calls in the lake, then query them with DuckDB."""
    from pipeline.analytics import connect

    t0 = time.perf_counter()
    sql = ("SELECT team, count(*) AS calls, sum(cost_usd) AS cost_usd FROM calls "
           "WHERE session_id LIKE ? GROUP BY team ORDER BY cost_usd DESC NULLS LAST")
    rows: list = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = connect(settings.lake_dir).execute(sql, [session + "%"]).fetchall()
        if sum(r[1] for r in rows) >= n:
            break
        time.sleep(1)
    else:
        raise DemoError(f"the demo's calls did not reach the lake ({settings.lake_dir}) "
                        f"within 3 minutes; see {settings.state_dir}/logs/worker.log")
    echo(f"lake      {n} calls in Parquet after {time.perf_counter() - t0:.1f} s more "
         f"({settings.lake_dir}/calls/); DuckDB says:")
    echo(f"  llmspend sql \"{sql.replace('?', repr(session + '%'))}\"")
    for team, calls, cost in rows:
        echo(f"  team {team or '-':<10} {calls:>3} calls {cost if cost is not None else 0:>16} USD")


def _show_report_and_dashboard(settings: Settings, echo: Callable[[str], Any]) -> None:
    """The KPI report's summary of the last 24 hours, and the dashboard page, from the
    lake the demo just filled (plus whatever earlier runs left there)."""
    import dataclasses
    import datetime as dt

    from pipeline import dashboard
    from pipeline.analytics import connect
    from pipeline.report import kpis, parse_period, render

    con = connect(settings.lake_dir)
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    period = parse_period("24h", now)
    rep = kpis(con, settings, period)
    summary = dataclasses.replace(rep, sections=[rep.section("summary")], warnings=[])
    echo("report    the KPI report of the last 24 hours (summary; the whole report: "
         "llmspend report --since 24h):")
    for line in render(summary, "table").splitlines():
        echo("  " + line)
    path = settings.state_dir / "dashboard.html"
    dashboard.write(dashboard.render(dashboard.data(con, settings, period)), path)
    echo(f"dashboard {path.resolve()} (open it in a browser; it works offline; live: "
         f"llmspend dashboard --since 24h --port 8050)")
