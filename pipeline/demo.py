"""The end-to-end demo (`llmspend demo`, the README's first command).

It replays a few minutes of compressed, realistic LLM traffic (the traffic generator:
sessions, agents, tools, several teams and span conventions, plus the ``runaway-loop``
and ``budget-burn`` scenarios) through the stock OTLP/HTTP exporter into the llmspend
receiver, and follows the whole path live: spans sent, calls priced in ``llm_calls``,
spend per team, P95 per model, alerts as they fire. Then it waits until the Parquet
lake holds every call, checks the outcome against the generator's truth (calls, exact
cost, the runaway loop's critical alert, the budget's 50/80/100 % crossings), prints
the KPI report and writes the HTML dashboard.

Each run is its own tenant (``demo-<id>``, with its own ingest token and a daily
budget of 90 % of what its ``growth`` team will spend), so runs never mix in the lake.
The pure parts (:func:`prepare`, :class:`Follower` folding records, :func:`view`) are
unit-tested; :func:`run` is the shell around Kafka, the services and DuckDB.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Settings
from schemas import aggregates as AG
from schemas import alerts as A
from schemas import calls as C
from schemas.topics import LLM_ALERTS, LLM_CALLS

#: Trace seconds replayed per wall second: 60 s of demo = 15 minutes of traffic.
RATE = 15.0
DEFAULT_DURATION_S = 180.0
SEED = 11
SCENARIOS = ("runaway-loop", "budget-burn")
#: The demo's daily budget for the budget-burn team, as a share of what it will spend.
BUDGET_SHARE = Decimal("0.9")
#: Sessions still open this long after the end of the traffic are left out of the plan
#: (long conversations would keep the replay going for minutes).
TAIL_S = 10.0
#: How long the demo waits, after the last span, for the lake and the alerts.
CATCH_UP_S = 300.0
#: The services the demo starts flush the lake this often (the default is a minute).
LAKE_FLUSH_S = "5"


class DemoError(RuntimeError):
    """The demo could not show the whole path (one line for the CLI)."""


def midday_zone(now: dt.datetime) -> str:
    """An ``Etc/GMT`` zone where it is about noon at ``now``: the demo's day (and its
    budget's) is then far from midnight whenever it runs."""
    n = now.astimezone(dt.UTC).hour - 12          # Etc/GMT+N is UTC-N
    return f"Etc/GMT{'+' if n >= 0 else '-'}{abs(n)}"


@dataclasses.dataclass
class DemoPlan:
    """What one demo run sends, its truth, and the settings its services need."""

    tenant: str
    token: str
    plan: Any                       # pipeline.traffic.plan.Plan
    truth: Any                      # pipeline.traffic.truth.Truth
    budget_team: str
    budget_usd: Decimal
    timezone: str
    duration_s: float
    catalog: Any = None             # the pricing catalog the truth was computed with

    def service_env(self, settings: Settings) -> dict[str, str]:
        """Environment of the receiver and worker: the demo tenant's token beside any
        configured ones, its budget beside any configured ones, a fast lake flush."""
        tokens = ",".join(t for t in (settings.ingest.tokens,
                                      f"{self.token}={self.tenant}") if t)
        limits = {**settings.budgets.limits,
                  f"team:{self.tenant}/{self.budget_team}": {"daily": str(self.budget_usd)}}
        env = {"LLMSPEND_INGEST_TOKENS": tokens,
               "LLMSPEND_BUDGETS_LIMITS": json.dumps(limits),
               "LLMSPEND_LAKE_FLUSH_S": LAKE_FLUSH_S}
        if not settings.budgets.limits:   # never move the days of configured budgets
            env["LLMSPEND_BUDGETS_TIMEZONE"] = self.timezone
        return env

    def shift_to(self, start_ns: int) -> None:
        """Move the plan (and its truth) so its first span is sent at ``start_ns``:
        event times are then wall-clock times, and alert latency is measurable."""
        from pipeline.traffic import generator, truth

        generator.shift(self.plan, start_ns - self.plan.start_ns)
        self.truth = truth.compute(self.plan, self.catalog)


def prepare(settings: Settings, duration_s: float, seed: int = SEED,
            now: dt.datetime | None = None) -> DemoPlan:
    """Plan ``duration_s`` wall seconds of traffic (``RATE`` x compressed) with the
    scenarios, and the budget its burn must cross (pure but for the catalog file)."""
    from pipeline import pricing
    from pipeline.traffic import truth as truth_mod
    from pipeline.traffic.generator import trim
    from pipeline.traffic.plan import Options, plan

    now = now or dt.datetime.now(dt.UTC)
    run_id = uuid.uuid4().hex[:6]
    tenant = f"demo-{run_id}"
    opts = Options(seed=seed, start_time_ns=int(now.timestamp() * 1e6) * 1000, rate=RATE,
                   duration_s=duration_s * RATE, scenarios=SCENARIOS, tenants=(tenant,))
    opts.validate()
    catalog = pricing.load_catalog(settings.pricing.catalog)
    p = trim(plan(opts), opts.start_time_ns + int((duration_s + TAIL_S) * 1e9))
    truth = truth_mod.compute(p, catalog)
    burn = next(e for e in truth.scenarios if e["scenario"] == "budget-burn")
    team = burn["signature"]["team"]
    budget = (truth.by_team[team].list_cost_usd * BUDGET_SHARE).quantize(Decimal("0.01"))
    return DemoPlan(tenant=tenant, token=f"demo-token-{uuid.uuid4().hex}", plan=p,
                    truth=truth, budget_team=team, budget_usd=budget,
                    timezone=midday_zone(now), duration_s=duration_s, catalog=catalog)


# --------------------------------------------------------------------------- follow


class Follower:
    """What reached ``llm_calls`` and ``llm_alerts`` for the demo tenant: calls (each
    ``call_id`` once), spend per team, latencies per model, alerts with the wall time
    they were seen. ``fold_*`` are pure; :meth:`run` feeds them from Kafka."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.lock = threading.Lock()
        self.call_ids: set[str] = set()
        self.cost_by_team: dict[str, Decimal] = defaultdict(Decimal)
        self.latency_by_model: dict[str, list[float]] = defaultdict(list)
        self.unpriced = 0
        self.alerts: list[tuple[float, dict[str, Any]]] = []
        self.first_priced: float | None = None

    def fold_calls(self, value: bytes, seen: float) -> None:
        import orjson

        with self.lock:
            for line in value.splitlines():
                if not line.strip():
                    continue
                c = orjson.loads(line)
                if c.get(C.TENANT) != self.tenant or c[C.CALL_ID] in self.call_ids:
                    continue
                self.call_ids.add(c[C.CALL_ID])
                self.first_priced = self.first_priced or seen
                if c.get(C.COST_USD) is None:
                    self.unpriced += 1
                else:
                    self.cost_by_team[c.get(C.TEAM) or "-"] += Decimal(c[C.COST_USD])
                if c.get(C.KIND) == "llm" and c.get(C.LATENCY_MS) is not None:
                    model = c.get(C.RESPONSE_MODEL) or c.get(C.REQUEST_MODEL) or "?"
                    self.latency_by_model[model].append(float(c[C.LATENCY_MS]))

    def fold_alert(self, value: bytes, seen: float) -> None:
        try:
            a = json.loads(value)
        except ValueError:
            return
        if isinstance(a, dict) and a.get(A.TENANT) == self.tenant:
            with self.lock:
                if all(a.get(A.ID) != b.get(A.ID) for _, b in self.alerts):
                    self.alerts.append((seen, a))

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for the view (P95 per model computed here)."""
        with self.lock:
            return {"calls": len(self.call_ids), "unpriced": self.unpriced,
                    "cost_by_team": dict(self.cost_by_team),
                    "p95_by_model": {m: (len(v), float(np.percentile(v, 95)))
                                     for m, v in self.latency_by_model.items()},
                    "alerts": list(self.alerts)}

    def run(self, settings: Settings, start: dict[Any, int], stop: threading.Event) -> None:
        from pipeline import clients

        c = clients.consumer(settings)
        try:
            c.assign(list(start))
            for tp, off in start.items():
                c.seek(tp, off)
            while not stop.is_set():
                for tp, recs in c.poll(timeout_ms=300, max_records=2000).items():
                    now = time.time()
                    for r in recs:
                        if r.value is None:
                            continue
                        if tp.topic == LLM_CALLS:
                            self.fold_calls(r.value, now)
                        else:
                            self.fold_alert(r.value, now)
        finally:
            c.close()


# --------------------------------------------------------------------------- outcome


def runaway_alerts(alerts: list[tuple[float, dict]]) -> list[tuple[float, dict]]:
    return [(s, a) for s, a in alerts if a.get(A.SUBJECT_KIND) == "session"
            and a.get(A.STATE) == A.FIRING]


def budget_crossings(alerts: list[tuple[float, dict]], team: str) -> list[int]:
    """Threshold percentages the team's budget crossed (firing records), sorted."""
    return sorted(a[A.EVIDENCE]["threshold_pct"] for _, a in alerts
                  if a.get(A.DETECTOR) == "budget" and a.get(A.STATE) == A.FIRING
                  and a.get(A.SUBJECT) == team and "threshold_pct" in a.get(A.EVIDENCE, {}))


def alert_latency_s(seen: float, alert: dict[str, Any]) -> float:
    """Wall seconds from the evidence that raised the alert (its ``last_seen`` event
    time, which the demo sends at that wall time) to the alert record on Kafka."""
    last = dt.datetime.fromisoformat(alert[A.LAST_SEEN].replace("Z", "+00:00"))
    emitted = dt.datetime.fromisoformat(alert[A.EMITTED_AT].replace("Z", "+00:00"))
    return max(0.0, min(seen, emitted.timestamp()) - last.timestamp())


def outcome_problems(dp: DemoPlan, calls: int, cost: Decimal | None,
                     alerts: list[tuple[float, dict]]) -> list[str]:
    """What the run got wrong against the generator's truth (empty: all of it right)."""
    out = []
    if calls != dp.truth.calls:
        out.append(f"{calls} calls in the lake, {dp.truth.calls} generated")
    if (cost or Decimal(0)) != dp.truth.list_cost_usd:
        out.append(f"lake cost {cost} USD, truth {dp.truth.list_cost_usd} USD")
    if not any(a.get(A.SEVERITY) == A.CRITICAL for _, a in runaway_alerts(alerts)):
        out.append("no critical alert for the runaway session")
    got = budget_crossings(alerts, dp.budget_team)
    if got != [50, 80, 100]:
        out.append(f"budget crossings {got}, expected [50, 80, 100]")
    return out


# --------------------------------------------------------------------------- view


def usd(d: Decimal | None, places: int = 2) -> str:
    return "-" if d is None else f"${d:,.{places}f}"


def view(dp: DemoPlan, snap: dict[str, Any], progress: dict[str, Any]) -> Any:
    """The live terminal view (a rich renderable) of one moment of the run."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    sent, total = progress.get("sent", 0), max(progress.get("total", 1), 1)
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(f"{progress.get('phase', '')}", style="bold cyan"),
        Text(f"replay {sent:,}/{total:,} spans ({100 * sent / total:.0f} %)"),
        Text(f"{progress.get('spans_per_s', 0):,.0f} spans/s ingested"),
        Text(f"{snap['calls']:,}/{dp.truth.calls:,} calls priced"),
        Text(f"{usd(sum(snap['cost_by_team'].values(), Decimal(0)))} so far"),
        Text(f"lake {progress.get('lake_calls', 0):,} calls"))
    teams = Table(title="spend by team (USD)", expand=True, title_justify="left")
    teams.add_column("team")
    teams.add_column("USD", justify="right")
    for team, cost in sorted(snap["cost_by_team"].items(), key=lambda kv: -kv[1])[:8]:
        teams.add_row(team, usd(cost, 4))
    models = Table(title="P95 latency by model", expand=True, title_justify="left")
    models.add_column("model")
    models.add_column("calls", justify="right")
    models.add_column("P95 ms", justify="right")
    for model, (n, p95) in sorted(snap["p95_by_model"].items(), key=lambda kv: -kv[1][0])[:8]:
        models.add_row(model, f"{n:,}", f"{p95:,.0f}")
    side = Table.grid(expand=True)
    side.add_row(teams, models)
    alerts = Table(title="alerts (llm_alerts)", expand=True, title_justify="left")
    for col in ("severity", "detector", "after", "summary"):
        alerts.add_column(col, overflow="fold" if col == "summary" else "ellipsis")
    colour = {A.CRITICAL: "bold red", A.WARNING: "yellow", A.INFO: "cyan"}
    for seen, a in snap["alerts"][-8:]:
        alerts.add_row(Text(str(a.get(A.SEVERITY)), style=colour.get(a.get(A.SEVERITY), "")),
                       str(a.get(A.DETECTOR)), f"{alert_latency_s(seen, a):.1f} s",
                       str(a.get(A.SUMMARY)))
    return Panel(Group(head, side, alerts),
                 title=f"llmspend demo · tenant {dp.tenant} · {dp.duration_s:.0f} s of "
                       f"traffic at {RATE:.0f}x", border_style="blue")


def status_line(dp: DemoPlan, snap: dict[str, Any], progress: dict[str, Any]) -> str:
    """The view as one plain line (when stdout is not a terminal)."""
    return (f"{progress.get('phase', ''):<9} sent {progress.get('sent', 0):,}/"
            f"{progress.get('total', 0):,} spans ({progress.get('spans_per_s', 0):,.0f}/s), "
            f"priced {snap['calls']:,}/{dp.truth.calls:,} calls, "
            f"{usd(sum(snap['cost_by_team'].values(), Decimal(0)))}, "
            f"lake {progress.get('lake_calls', 0):,}, alerts {len(snap['alerts'])}")


# --------------------------------------------------------------------------- shell


def lake_totals(settings: Settings, tenant: str) -> tuple[int, Decimal | None, int]:
    """(calls, their cost, calls counted by the landed 1-minute aggregates)."""
    from pipeline.analytics import connect

    try:
        con = connect(settings.lake_dir)
        n, cost = con.execute(f"SELECT count(*), sum({C.COST_USD}) FROM calls "
                              f"WHERE {C.TENANT} = ?", [tenant]).fetchone()
        (agg,) = con.execute(f"SELECT coalesce(sum(calls), 0) FROM agg_1m "
                             f"WHERE {AG.VIEW} = '{AG.VIEW_GROUP}' AND {C.TENANT} = ?",
                             [tenant]).fetchone()
        con.close()
    except Exception:  # noqa: BLE001 - no file landed yet
        return 0, None, 0
    return int(n), cost, int(agg)


class Screen:
    """The live view on a terminal, or a status line every 10 s elsewhere."""

    def __init__(self, dp: DemoPlan, follower: Follower, echo: Callable[[str], Any],
                 live: bool) -> None:
        self.dp, self.follower, self.echo = dp, follower, echo
        self.progress: dict[str, Any] = {"phase": "starting"}
        self._live = None
        self._last_line = 0.0
        if live:
            from rich.live import Live

            self._live = Live(get_renderable=self._render, refresh_per_second=2,
                              transient=False)

    def _render(self) -> Any:
        return view(self.dp, self.follower.snapshot(), self.progress)

    def update(self, **kw: Any) -> None:
        self.progress.update(kw)
        if self._live is None and time.monotonic() - self._last_line >= 10:
            self._last_line = time.monotonic()
            self.echo(status_line(self.dp, self.follower.snapshot(), self.progress))

    def __enter__(self) -> Screen:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()
        else:
            self.echo(status_line(self.dp, self.follower.snapshot(), self.progress))


def run(settings: Settings, echo: Callable[[str], Any], dp: DemoPlan,
        live: bool = False) -> dict[str, Any]:
    """Send the plan, follow it to the lake, check it, report it. The services are up.
    Returns the measured figures (also written to ``<state>/demo/summary.json``)."""
    from pipeline.clients import end_offsets
    from pipeline.traffic import emit as emit_mod
    from pipeline.traffic.generator import now_ns

    endpoint = f"http://{settings.ingest.host}:{settings.ingest.http_port}/v1/traces"
    start = {**end_offsets(settings, LLM_CALLS), **end_offsets(settings, LLM_ALERTS)}
    follower = Follower(dp.tenant)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(settings, start, stop),
                              daemon=True, name="llmspend-demo-follow")
    thread.start()
    out_dir = settings.state_dir / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Screen(dp, follower, echo, live) as screen:
            dp.shift_to(now_ns())
            dp.truth.write(out_dir / "truth.json")
            exporter = emit_mod.make_exporter("http", endpoint, dp.token, dp.tenant)

            def progress(n: int, total: int, stats: Any) -> None:
                # exported = acknowledged by the receiver: ingested into otlp_spans
                screen.update(phase="replaying", sent=n, total=total,
                              spans_per_s=(stats.exported / stats.seconds
                                           if stats.seconds else 0.0))

            t0 = time.monotonic()
            stats = emit_mod.emit(dp.plan, {dp.tenant: exporter}, max_rate=False,
                                  progress=progress)
            sent_s = time.monotonic() - t0
            if stats.failed:
                raise DemoError(f"the receiver refused {stats.failed} of {stats.spans} "
                                f"spans; see {settings.state_dir}/logs/ingest.log")
            screen.update(phase="catching", sent=stats.spans, total=stats.spans,
                          spans_per_s=stats.spans / sent_s)
            lake_calls, cost, after = _wait_for_lake(settings, dp, follower, screen)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        stop.set()
        thread.join(5)
    snap = follower.snapshot()
    problems = outcome_problems(dp, lake_calls, cost, snap["alerts"])
    figures = _figures(dp, stats, sent_s, after, snap, lake_calls, cost)
    (out_dir / "summary.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    _print_outcome(settings, echo, dp, figures, snap)
    if problems:
        raise DemoError("the pipeline's outcome differs from the truth: " + "; ".join(problems))
    _print_report_and_dashboard(settings, echo, dp)
    return figures


def _wait_for_lake(settings: Settings, dp: DemoPlan, follower: Follower, screen: Screen
                   ) -> tuple[int, Decimal | None, dict[str, float | None]]:
    """Poll the lake until it holds every call, the aggregates count them all (the
    dashboard's time charts read agg_1m: the last minute's window closes last) and the
    alerts are in, or time is up. Seconds after the last span to each, when reached."""
    t0 = time.monotonic()
    n, cost = 0, None
    after: dict[str, float | None] = {"calls": None, "aggregates": None, "alerts": None}
    while time.monotonic() - t0 < CATCH_UP_S:
        n, cost, agg = lake_totals(settings, dp.tenant)
        screen.update(lake_calls=n)
        alerts = follower.snapshot()["alerts"]
        done = {"calls": n >= dp.truth.calls, "aggregates": agg >= dp.truth.calls,
                "alerts": budget_crossings(alerts, dp.budget_team)[-1:] == [100]
                and any(a.get(A.SEVERITY) == A.CRITICAL for _, a in runaway_alerts(alerts))}
        for k, ok in done.items():
            if ok and after[k] is None:
                after[k] = round(time.monotonic() - t0, 2)
        if all(done.values()):
            break
        time.sleep(1)
    return n, cost, after


def _figures(dp: DemoPlan, stats: Any, sent_s: float, after: dict[str, float | None],
             snap: dict, lake_calls: int, cost: Decimal | None) -> dict[str, Any]:
    runaway = runaway_alerts(snap["alerts"])
    crit = [(s, a) for s, a in runaway if a.get(A.SEVERITY) == A.CRITICAL]
    budget = [(s, a) for s, a in snap["alerts"] if a.get(A.DETECTOR) == "budget"
              and a.get(A.STATE) == A.FIRING]
    return {
        "tenant": dp.tenant, "duration_s": dp.duration_s, "rate": RATE,
        "traffic_seconds": dp.duration_s * RATE,
        "spans_sent": stats.spans, "send_seconds": round(sent_s, 2),
        "spans_per_s": round(stats.spans / sent_s, 1) if sent_s else None,
        "calls_generated": dp.truth.calls, "calls_in_lake": lake_calls,
        "cost_truth_usd": str(dp.truth.list_cost_usd), "cost_lake_usd": str(cost),
        "calls_priced_on_kafka": snap["calls"],
        "calls_in_lake_after_last_span_s": after["calls"],
        "aggregates_in_lake_after_last_span_s": after["aggregates"],
        "runaway_critical_alert_latency_s": (round(alert_latency_s(*crit[0]), 2)
                                             if crit else None),
        "budget_team": dp.budget_team, "budget_daily_usd": str(dp.budget_usd),
        "budget_crossings_pct": budget_crossings(snap["alerts"], dp.budget_team),
        "budget_alert_latencies_s": [round(alert_latency_s(s, a), 2) for s, a in budget],
        "alerts": len(snap["alerts"]),
    }


def _print_outcome(settings: Settings, echo: Callable[[str], Any], dp: DemoPlan,
                   f: dict[str, Any], snap: dict[str, Any]) -> None:
    from pipeline.alerts_view import format_line

    echo(f"sent      {f['spans_sent']:,} spans ({f['traffic_seconds'] / 60:.0f} minutes of "
         f"traffic) in {f['send_seconds']:.0f} s: {f['spans_per_s']:,.0f} spans/s through "
         f"the stock OTLP/HTTP exporter")
    echo(f"lake      {f['calls_in_lake']:,} of {f['calls_generated']:,} generated calls in "
         f"Parquet {f['calls_in_lake_after_last_span_s']} s after the last span (their "
         f"1-minute aggregates after {f['aggregates_in_lake_after_last_span_s']} s); cost "
         f"{f['cost_lake_usd']} USD (truth {f['cost_truth_usd']} USD)")
    echo(f"alerts    {len(snap['alerts'])} records on {LLM_ALERTS}; runaway loop critical "
         f"after {f['runaway_critical_alert_latency_s']} s; budget "
         f"{dp.budget_team} ({usd(dp.budget_usd)}/day) crossed {f['budget_crossings_pct']} %")
    for _seen, a in snap["alerts"]:
        echo("  " + format_line(a, color=False))


def _print_report_and_dashboard(settings: Settings, echo: Callable[[str], Any],
                                dp: DemoPlan) -> None:
    """The KPI report of the run's period and tenant, the dashboard, where things are."""
    from pipeline.analytics import connect
    from pipeline.report import Period, kpis, render

    def minute(t: dt.datetime) -> dt.datetime:
        return t.replace(second=0, microsecond=0)

    start = dt.datetime.fromtimestamp(dp.plan.start_ns / 1e9, dt.UTC)
    end = dt.datetime.fromtimestamp(dp.plan.end_ns / 1e9, dt.UTC)
    period = Period(minute(start), minute(end) + dt.timedelta(minutes=1),
                    label=f"the demo run ({minute(start):%H:%M}-{minute(end):%H:%M} UTC)")
    con = connect(settings.lake_dir)
    rep = kpis(con, settings, period, tenant=dp.tenant)
    report_path = settings.state_dir / "demo" / "report.md"
    report_path.write_text(render(rep, "markdown"))
    echo("")
    echo(f"report    the KPI report of the run (also {report_path}):")
    summary = dataclasses.replace(rep, sections=[rep.section("summary")], warnings=[])
    for line in render(summary, "table").splitlines():
        echo("  " + line)
    path = write_dashboard(settings, con, period, dp.tenant)
    lake = settings.lake_dir.resolve()
    since = period.start.strftime("%Y-%m-%dT%H:%M")
    echo("")
    echo(f"dashboard {path} (self-contained, works offline)")
    echo(f"          live: llmspend dashboard --since {since} --tenant {dp.tenant} "
         f"(http://127.0.0.1:8050/)")
    echo(f"parquet   {lake}/calls/ (and agg_1m/, alerts/); ask DuckDB:")
    for q in (f"SELECT team, count(*) AS calls, sum(cost_usd) AS usd FROM calls "
              f"WHERE tenant = '{dp.tenant}' GROUP BY ALL ORDER BY usd DESC",
              f"SELECT model, round(llmspend_p95(flatten(list(latency_buckets)))) AS "
              f"p95_ms FROM agg_1m WHERE view = 'group' AND tenant = '{dp.tenant}' "
              f"AND llm_calls > 0 GROUP BY ALL",
              f"SELECT severity, detector, summary FROM alerts "
              f"WHERE tenant = '{dp.tenant}' ORDER BY first_seen"):
        echo(f"  llmspend sql \"{q}\"")
    echo(f"report    llmspend report --since {since} --tenant {dp.tenant}")


def write_dashboard(settings: Settings, con: Any, period: Any, tenant: str) -> Path:
    from pipeline import dashboard

    path = settings.state_dir / "dashboard.html"
    dashboard.write(dashboard.render(dashboard.data(con, settings, period, tenant)), path)
    return path.resolve()
