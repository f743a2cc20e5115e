"""The ground truth of a plan: what the pipeline must find in ``llm_calls``.

Definitions (what tests and benchmarks compare against):

* **call**: one span of kind ``llm`` (a chat attempt, failed ones included) or ``tool``
  (an ``execute_tool`` span), exactly what the normaliser turns into one ``llm_calls``
  row. ``invoke_agent`` and request/workflow root spans are not calls. A retry-storm
  duplicate is the same span again (same trace and span id, hence the same
  ``call_id``): it counts once. ``spans_emitted`` counts the copies.
* **tokens**: input INCLUDES cache-read and cache-write tokens (semconv meaning).
  Failed attempts report no usage.
* **cost**: exact list price from the catalog through :func:`pipeline.pricing.quote`
  (no tenant overrides), Decimal, 12 fractional digits, per call then summed. Tool calls
  cost 0. A call is **unpriced** (no cost, like ``cost_usd`` null) when it reports no
  usage (a failed attempt: ``no_usage``) or its model is not in the catalog
  (``model_not_in_catalog``, the ``unknown-model`` scenario), or the catalog has no
  price yet at its start time (``before_first_price``).
* **latency**: ``end - start`` of every LLM attempt of a model (timeouts and errors
  included), P95 by nearest rank: the value at rank ``ceil(0.95 * n)`` of the sorted
  latencies.
* Breakdowns by model (the model asked for), team, use case, tenant and service.
* **units**: per ``tenant/use_case``, the distinct business units its calls name
  (``llmspend.unit_id``) and the list cost of those calls: the cost per unit the
  unit-cost targets judge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline import pricing
from pipeline.traffic.plan import BUDGET_BURN, Plan, PlannedSpan

FORMAT = 1
ZERO = Decimal(0).quantize(pricing.QUANTUM)


@dataclass
class Tally:
    """Counts, tokens and exact list cost of a set of calls."""

    calls: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    errors: int = 0
    unpriced_calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    list_cost_usd: Decimal = ZERO

    def add(self, sp: PlannedSpan, cost: Decimal | None) -> None:
        c = sp.call
        self.calls += 1
        if c.kind == "tool":
            self.tool_calls += 1
        else:
            self.llm_calls += 1
            self.input_tokens += c.input_tokens
            self.cached_input_tokens += c.cache_read
            self.cache_write_tokens += c.cache_write
            self.output_tokens += c.output_tokens
            if cost is None:
                self.unpriced_calls += 1
        if sp.error and c.kind == "llm":
            self.errors += 1
        if cost is not None:
            self.list_cost_usd += cost


def p95(values: Iterable[float]) -> float | None:
    """Nearest-rank 95th percentile (None for no values)."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[max(0, math.ceil(0.95 * len(xs)) - 1)]


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with microseconds (exact, no float)."""
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Truth:
    """The ground truth of one generation (JSON: :meth:`to_json`, Decimals as strings)."""

    seed: int
    options: dict[str, Any]
    start_time: str
    end_time: str
    start_ns: int
    end_ns: int
    horizon_s: float
    sessions: int
    traces: int
    spans: int                  # distinct spans
    spans_emitted: int          # with retry-storm copies
    duplicate_spans: int        # spans_emitted - spans
    totals: Tally
    by_model: dict[str, Tally]
    by_team: dict[str, Tally]
    by_use_case: dict[str, Tally]
    by_tenant: dict[str, Tally]
    by_service: dict[str, Tally]
    latency_p95_ms: dict[str, float]
    unpriced: dict[str, int]    # reason -> LLM calls
    scenarios: list[dict[str, Any]]
    units: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    catalog: str = ""
    format: int = FORMAT

    @property
    def calls(self) -> int:
        return self.totals.calls

    @property
    def list_cost_usd(self) -> Decimal:
        return self.totals.list_cost_usd

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, Decimal):
                return format(v, "f")
            if isinstance(v, Tally):
                return {k: conv(x) for k, x in dataclasses.asdict(v).items()}
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v
        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Truth:
        def tally(x: dict[str, Any]) -> Tally:
            return Tally(**{**x, "list_cost_usd": Decimal(x["list_cost_usd"])})
        args = dict(d)
        args["totals"] = tally(d["totals"])
        for k in ("by_model", "by_team", "by_use_case", "by_tenant", "by_service"):
            args[k] = {n: tally(t) for n, t in d[k].items()}
        args["units"] = {k: {**u, "list_cost_usd": Decimal(u["list_cost_usd"])}
                         for k, u in d.get("units", {}).items()}
        return cls(**args)

    @classmethod
    def from_json(cls, text: str) -> Truth:
        return cls.from_dict(json.loads(text))


def price_call(catalog: pricing.Catalog, sp: PlannedSpan) -> tuple[Decimal | None, str]:
    """(exact list cost or None, unpriced reason) of one planned call span."""
    c = sp.call
    if c.kind == "tool":
        return ZERO, ""
    if c.error_type is not None:     # failed attempts report no usage
        return None, "no_usage"
    q = pricing.quote(catalog, (c.model, c.model), c.provider,
                      pricing.Usage(input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                                    cache_read=c.cache_read, cache_write=c.cache_write),
                      sp.start_ns)
    if q.list_cost is None:
        return None, next((i for i in q.issues if i in (
            "model_not_in_catalog", "before_first_price", "gpu_pricing_needs_latency")),
            "unpriced")
    return q.list_cost, ""


def compute(p: Plan, catalog: pricing.Catalog) -> Truth:
    """Price every call of a plan and tally the ground truth."""
    totals = Tally()
    groups: dict[str, dict[str, Tally]] = {k: {} for k in
                                           ("model", "team", "use_case", "tenant", "service")}
    lat: dict[str, list[float]] = {}
    unpriced: dict[str, int] = {}
    costs: list[tuple[PlannedSpan, Decimal | None]] = []
    units: dict[str, tuple[set[str], list[Decimal]]] = {}
    for sp in p.spans:
        if sp.call is None:
            continue
        cost, why = price_call(catalog, sp)
        costs.append((sp, cost))
        if why:
            unpriced[why] = unpriced.get(why, 0) + 1
        totals.add(sp, cost)
        keys = {"model": sp.call.model if sp.call.kind == "llm" else "(tool)",
                "team": sp.team, "use_case": sp.use_case, "tenant": sp.tenant,
                "service": sp.service}
        for g, k in keys.items():
            groups[g].setdefault(k, Tally()).add(sp, cost)
        if sp.call.kind == "llm":
            lat.setdefault(sp.call.model, []).append(sp.latency_ms)
        unit = sp.attributes.get("llmspend.unit_id")
        if unit:
            ids, cost_of = units.setdefault(f"{sp.tenant}/{sp.use_case}", (set(), [ZERO]))
            ids.add(f"{sp.attributes.get('llmspend.unit_type')}/{unit}")
            cost_of[0] += cost or ZERO
    copies = sum(sp.copies for sp in p.spans)
    events = [_event(e, p, costs) for e in p.events]
    o = json.loads(json.dumps(dataclasses.asdict(p.options)))   # tuples as lists
    return Truth(
        seed=p.options.seed, options=o, start_time=rfc3339(p.start_ns),
        end_time=rfc3339(p.end_ns), start_ns=p.start_ns, end_ns=p.end_ns,
        horizon_s=p.horizon_ns / 1e9, sessions=p.sessions, traces=p.traces,
        spans=len(p.spans), spans_emitted=copies, duplicate_spans=copies - len(p.spans),
        totals=totals, by_model=_sorted(groups["model"]), by_team=_sorted(groups["team"]),
        by_use_case=_sorted(groups["use_case"]), by_tenant=_sorted(groups["tenant"]),
        by_service=_sorted(groups["service"]),
        latency_p95_ms={m: p95(v) for m, v in sorted(lat.items())},
        unpriced=dict(sorted(unpriced.items())), scenarios=events,
        units={k: {"units": len(ids), "list_cost_usd": c[0]}
               for k, (ids, c) in sorted(units.items())},
        catalog=catalog.origin)


def _sorted(d: dict[str, Tally]) -> dict[str, Tally]:
    return {k: d[k] for k in sorted(d)}


def _event(e: Any, p: Plan, costs: list[tuple[PlannedSpan, Decimal | None]]
           ) -> dict[str, Any]:
    sig = dict(e.signature)
    if e.scenario == BUDGET_BURN:
        team, tenant = sig["team"], e.tenant
        inside = before = ZERO
        for sp, cost in costs:
            if cost is None or sp.team != team or sp.tenant != tenant:
                continue
            if e.start_ns <= sp.start_ns < e.end_ns:
                inside += cost
            elif sp.start_ns < e.start_ns:
                before += cost
        win_min = (e.end_ns - e.start_ns) / 60e9
        before_min = (e.start_ns - p.start_ns) / 60e9
        rate_in = inside / Decimal(str(win_min)) if win_min > 0 else None
        rate_before = before / Decimal(str(before_min)) if before_min > 0 else None
        sig.update(list_cost_usd_in_window=format(inside, "f"),
                   list_cost_usd_before=format(before, "f"),
                   cost_per_min_in_window=None if rate_in is None else f"{rate_in:.6f}",
                   cost_per_min_before=None if rate_before is None else f"{rate_before:.6f}",
                   ratio=None if not rate_before else round(float(rate_in / rate_before), 2))
    return {"scenario": e.scenario, "tenant": e.tenant, "start_time": rfc3339(e.start_ns),
            "end_time": rfc3339(e.end_ns), "start_ns": e.start_ns, "end_ns": e.end_ns,
            "session_ids": e.session_ids, "signature": sig}
