"""The library entry point: plan, price and (optionally) emit, in-process.

>>> from pipeline.traffic import generator
>>> result = generator.generate(generator.Options(seed=7, calls=500), dry_run=True)
>>> result.truth.calls, result.truth.list_cost_usd

Tests and ``bench/`` call :func:`generate` with their own exporters (an
``InMemorySpanExporter``, a ``KafkaSpanExporter``...) or with a protocol and endpoint as
the CLI does; the returned :class:`Result` holds the plan, the truth and what emission
did.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.sdk.trace.export import SpanExporter

from pipeline import pricing
from pipeline.config import Settings
from pipeline.traffic import emit as emit_mod
from pipeline.traffic import truth as truth_mod
from pipeline.traffic.emit import EmitStats
from pipeline.traffic.plan import Options, Plan, plan
from pipeline.traffic.truth import Truth

__all__ = ["Options", "Result", "generate", "now_ns", "shift", "trim"]


@dataclass
class Result:
    plan: Plan
    truth: Truth
    emitted: EmitStats | None          # None for a dry run
    plan_seconds: float                # planning + pricing, wall clock


def now_ns() -> int:
    return time.time_ns() // 1000 * 1000


def shift(p: Plan, delta_ns: int) -> Plan:
    """The same plan moved in event time by ``delta_ns`` (whole microseconds)."""
    delta_ns = delta_ns // 1000 * 1000
    for sp in p.spans:
        sp.start_ns += delta_ns
        sp.end_ns += delta_ns
    for e in p.events:
        e.start_ns += delta_ns
        e.end_ns += delta_ns
    p.start_ns += delta_ns
    p.end_ns += delta_ns
    p.options = dataclasses.replace(p.options, start_time_ns=p.start_ns)
    return p


def trim(p: Plan, end_ns: int) -> Plan:
    """The plan without the sessions still running at ``end_ns``: a short replay then
    ends near its horizon instead of waiting minutes for the last steps of long agent
    runs. Scenario events keep the sessions that are left (the truth of the result is
    its own: compute it from the trimmed plan)."""
    last: dict[str, int] = {}
    for sp in p.spans:
        last[sp.session_id] = max(last.get(sp.session_id, 0), sp.end_ns)
    drop = {sid for sid, t in last.items() if t > end_ns}
    if drop:
        p.spans = [sp for sp in p.spans if sp.session_id not in drop]
        for e in p.events:
            e.session_ids = [sid for sid in e.session_ids if sid not in drop]
        p.sessions -= len(drop)
        p.traces = len({sp.trace_id for sp in p.spans})
        p.end_ns = max(sp.end_ns for sp in p.spans)
    return p


def generate(options: Options | None = None, *, protocol: str = "http",
             endpoint: str | None = None,
             tenant_tokens: Mapping[str, str | None] | None = None,
             exporters: Mapping[str, SpanExporter] | None = None,
             settings: Settings | None = None, catalog: pricing.Catalog | None = None,
             max_rate: bool = True, dry_run: bool = False,
             progress: Callable[[int, int, EmitStats], None] | None = None) -> Result:
    """Plan the traffic of ``options``, compute its truth, and emit it unless ``dry_run``.

    Tenants: ``tenant_tokens`` maps tenant -> bearer token (None: no header), and
    overrides ``options.tenants``; ``exporters`` maps tenant -> exporter (then
    ``protocol``/``endpoint`` are unused). Without a start time, traffic starts now,
    or with ``max_rate`` it is laid out to END now (no span from the future).
    ``catalog`` defaults to ``settings.pricing.catalog`` (else the shipped catalog).
    """
    options = options or Options()
    if tenant_tokens:
        options = dataclasses.replace(options, tenants=tuple(tenant_tokens))
    elif exporters:
        options = dataclasses.replace(options, tenants=tuple(exporters))
    backfill = options.start_time_ns is None and max_rate
    if options.start_time_ns is None:
        options = dataclasses.replace(options, start_time_ns=now_ns())
    if catalog is None:
        catalog = pricing.load_catalog(settings.pricing.catalog if settings else None)
    t0 = time.perf_counter()
    p = plan(options)
    if backfill:
        shift(p, -(p.end_ns - p.start_ns))
    truth = truth_mod.compute(p, catalog)
    planned = time.perf_counter() - t0
    if dry_run:
        return Result(p, truth, None, planned)
    if exporters is None:
        if protocol == emit_mod.KAFKA and settings is None:
            from pipeline.config import load_settings

            settings = load_settings()
        tokens = tenant_tokens or {t: None for t in options.tenants}
        exporters = {t: emit_mod.make_exporter(protocol, endpoint, tok, t, settings)
                     for t, tok in tokens.items()}
    stats = emit_mod.emit(p, exporters, max_rate=max_rate, progress=progress)
    return Result(p, truth, stats, planned)
