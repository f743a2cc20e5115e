"""Budgets: nested spend limits per period, and unit-cost targets (the pure core).

A :class:`Budget` caps one scope's spend per day or per month, in a configured time
zone: a tenant, a team of a tenant, a user of a tenant, or a use case of a tenant. A
call counts against EVERY budget whose scope contains it (its user's, its team's, its
use case's and its tenant's): the levels never ignore each other, and the tightest one
is simply the first to cross.

:class:`BudgetBook` folds calls in and returns alert records (detector ``budget``):

* one per threshold crossing of a budget's period (default 50 / 80 / 100 %: info,
  warning, critical), each its own incident of that (budget, period), opened once, so an
  exhausted budget never alerts again for the rest of its period, whatever the traffic;
* one ``projected`` incident per (budget, period) when the burn rate so far (spend /
  elapsed part of the period) projects past the limit before the period ends, once at
  least ``min_elapsed`` of the period has passed and the budget is not yet exhausted;
* one ``unit_cost`` incident per (use case, day) when its cost per business unit (the
  spend of its calls that name a unit / their distinct ``unit_id``) is above its target
  once ``min_units`` units have been seen (distinct units are exact up to 8,191 a day,
  then estimated within about 2 %: ``pipeline/distinct.py``);
* at a period boundary the old period's open incidents resolve, and counting restarts.

Money is exact (integer pico-USD). Time is the calls' event time (``start_time``); the
book keeps the current and the previous period of each budget, so calls arriving a bit
late still count where they belong. :meth:`BudgetBook.to_state` / ``from_state`` are
JSON-able, for a changelog.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.alerts import Incident
from pipeline.callbatch import pico
from pipeline.detect import time_us, usd
from pipeline.distinct import DistinctCount, unit_hash
from schemas import alerts as A
from schemas import calls as C

SCOPES = ("tenant", "team", "user", "use_case")
PERIODS = ("daily", "monthly")
SUBJECT_KIND = {"tenant": "tenant", "team": "team", "user": "user", "use_case": "use_case"}


class BudgetError(ValueError):
    """A budget definition that cannot be used; the message names it."""


@dataclass(frozen=True)
class Budget:
    """``scope`` of ``tenant`` (``name`` is the team, user or use case; empty for the
    tenant itself) may spend ``limit_pico`` per ``period``."""

    scope: str
    tenant: str
    name: str
    period: str
    limit_pico: int

    @property
    def id(self) -> str:
        return f"{self.scope}:{self.tenant}" + (f"/{self.name}" if self.name else "") + \
            f":{self.period}"

    def matches(self, row: dict[str, Any]) -> bool:
        if row.get(C.TENANT) != self.tenant:
            return False
        if self.scope == "tenant":
            return True
        col = {"team": C.TEAM, "user": C.USER_ID, "use_case": C.USE_CASE}[self.scope]
        return row.get(col) == self.name


def parse_budgets(limits: dict[str, Any]) -> list[Budget]:
    """Budgets from the ``[budgets.limits]`` table: keys ``scope:tenant[/name]``, values
    ``{daily = "100", monthly = "2000"}`` (USD, decimal strings)."""
    out = []
    for key, periods in limits.items():
        scope, sep, rest = key.partition(":")
        tenant, _, name = rest.partition("/")
        if not sep or scope not in SCOPES or not tenant or (scope != "tenant") != bool(name):
            raise BudgetError(f"budget {key!r}: expected tenant:T, team:T/TEAM, "
                              f"user:T/USER or use_case:T/USE_CASE")
        if not isinstance(periods, dict) or not periods:
            raise BudgetError(f"budget {key!r}: expected {{daily = \"...\", monthly = "
                              f"\"...\"}}")
        for period, amount in periods.items():
            if period not in PERIODS:
                raise BudgetError(f"budget {key!r}: unknown period {period!r}")
            try:
                limit = pico(str(amount))
            except (ArithmeticError, ValueError):
                raise BudgetError(f"budget {key!r}: {amount!r} is not an amount") from None
            if limit <= 0:
                raise BudgetError(f"budget {key!r}: the {period} limit must be positive")
            out.append(Budget(scope, tenant, name, period, limit))
    return out


def period_bounds(us: int, period: str, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) in microseconds of the day or month containing ``us``, in ``tz``
    (a day is 23 or 25 hours across a DST change)."""
    local = dt.datetime.fromtimestamp(us / 1e6, tz)
    if period == "daily":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + dt.timedelta(days=1, hours=2)).replace(hour=0)
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + dt.timedelta(days=32)).replace(day=1)
    start = start.replace(tzinfo=tz)
    nxt = nxt.replace(tzinfo=tz)
    return round(start.timestamp() * 1e6), round(nxt.timestamp() * 1e6)


@dataclass
class _Period:
    start: int
    end: int
    spent: int = 0
    first_us: int = 0
    last_us: int = 0
    units: DistinctCount = field(default_factory=DistinctCount)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class BookConfig:
    thresholds: tuple[int, ...] = (50, 80, 100)
    tz: str = "UTC"
    #: Part of the period that must have passed before a projection may alert.
    min_elapsed: float = 0.10
    min_units: int = 20


def threshold_severity(pct: int, thresholds: tuple[int, ...]) -> str:
    """The top threshold (>= 100 %) is critical, the one below it warning, others info."""
    top = sorted(thresholds)
    if pct >= 100 or pct == top[-1]:
        return A.CRITICAL
    if len(top) >= 2 and pct == top[-2]:
        return A.WARNING
    return A.INFO


class BudgetBook:
    """Every budget's current and previous period (module docstring)."""

    def __init__(self, budgets: list[Budget], unit_targets: dict[str, int] | None = None,
                 config: BookConfig | None = None) -> None:
        self.budgets = budgets
        self.unit_targets = unit_targets or {}     # "tenant/use_case" -> pico per unit
        self.config = config or BookConfig()
        self.tz = ZoneInfo(self.config.tz)
        self.periods: dict[str, list[_Period]] = {}  # budget or unit id -> [prev, current]

    # ------------------------------------------------------------------ input

    def add(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold calls in (duplicates must be removed upstream); the alert records."""
        out: list[dict[str, Any]] = []
        for row in rows:
            cost = pico(row.get(C.COST_USD))
            start = time_us(row.get(C.START_TIME))
            if start is None:
                continue
            view = row.get("_view")
            for b in self.budgets if view != "unit" else ():
                if view is not None and (view == "user") != (b.scope == "user"):
                    continue
                if cost and b.matches(row):
                    p = self._period(b.id, b.period, start, out)
                    if p is not None:
                        self._spend(b, p, cost, start, out)
            unit = row.get(C.UNIT_ID)
            uc = f"{row.get(C.TENANT)}/{row.get(C.USE_CASE)}"
            if (unit or view == "unit") and view in (None, "unit") and uc in self.unit_targets:
                p = self._period(f"unit:{uc}", "daily", start, out)
                if p is not None:
                    p.spent += cost
                    if view == "unit":
                        p.units.merge(row["_hashes"], row["_saturated"])
                    else:
                        p.units.add(unit_hash(row.get(C.UNIT_TYPE), unit))
                    self._unit_cost(uc, p, start, out)
        return out

    def add_partials(self, partials: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold ``llm_agg_1m`` partials in instead of calls: budgets need every call of
        a tenant, and calls are partitioned by session, while the partials of one key
        come from every partition. Tenant, team and use-case budgets read the ``group``
        view, user budgets the ``user`` view (each call is in each view once, so nothing
        counts twice); unit costs read the ``unit`` view (a unit id seen in several
        minutes is still one unit). A partial's time is its window start."""
        rows = []
        for p in partials:
            view = p.get("view")
            if view not in ("group", "user", "unit") or not p.get("cost_usd"):
                continue
            row = {C.TENANT: p.get("tenant"), C.TEAM: p.get("team"),
                   C.USER_ID: p.get("user_id"), C.USE_CASE: p.get("use_case"),
                   C.COST_USD: p.get("cost_usd"), C.START_TIME: p["window_start"],
                   "_view": view}
            if view == "unit":
                hashes = p.get("unit_hashes") or []
                row.update(_hashes=hashes, _saturated=(p.get("units") or 0) > len(hashes))
            rows.append(row)
        return self.add(rows)

    def tick(self, now_us: int) -> list[dict[str, Any]]:
        """Resolve the incidents of periods that ended by ``now_us`` (event time)."""
        out: list[dict[str, Any]] = []
        for key, periods in self.periods.items():
            for p in periods:
                if p.end <= now_us:
                    self._close(key, p, out)
        return out

    # ------------------------------------------------------------------ internals

    def _period(self, key: str, period: str, us: int, out: list) -> _Period | None:
        periods = self.periods.setdefault(key, [])
        for p in periods:
            if p.start <= us < p.end:
                return p
        start, end = period_bounds(us, period, self.tz)
        if periods and start < periods[-1].start:
            return None          # older than the periods kept: too late to count
        for p in periods:
            self._close(key, p, out)
        p = _Period(start, end)
        self.periods[key] = [*periods[-1:], p]
        return p

    def _spend(self, b: Budget, p: _Period, cost: int, us: int, out: list) -> None:
        before = p.spent
        p.spent += cost
        p.first_us = p.first_us or us
        p.last_us = max(p.last_us, us)
        crossed = [t for t in sorted(self.config.thresholds)
                   if before * 100 < t * b.limit_pico <= p.spent * 100]
        for pct in crossed:   # one record per threshold, even if one call jumps two
            level = threshold_severity(pct, self.config.thresholds)
            text = (f"{self._who(b)} spent {usd(p.spent)} USD of its {b.period} budget of "
                    f"{usd(b.limit_pico)} USD ({p.spent * 100 / b.limit_pico:.0f} %, past "
                    f"{pct} %).")
            self._observe(b, p, f"spent-{pct}", level, text, pct, us, out)
        elapsed = (us - p.start) / (p.end - p.start)
        if p.spent < b.limit_pico and elapsed >= self.config.min_elapsed:
            projected = p.spent / elapsed
            if projected > b.limit_pico:
                text = (f"{self._who(b)} is on course to spend {usd(int(projected))} USD "
                        f"this {'day' if b.period == 'daily' else 'month'}, over "
                        f"its budget of {usd(b.limit_pico)} USD ({usd(p.spent)} so far).")
                self._observe(b, p, "projected", A.WARNING, text, None, us, out,
                              projected=int(projected))

    def _observe(self, b: Budget, p: _Period, kind: str, level: str, text: str,
                 pct: int | None, us: int, out: list, projected: int | None = None) -> None:
        key = A.dedup_key("budget", b.tenant, b.scope, b.name or b.tenant, b.period,
                          _day(p.start), kind)
        state = p.incidents.get(kind)
        inc = Incident.from_state(state) if state else Incident(
            key, SUBJECT_KIND[b.scope], b.name or b.tenant, b.tenant)
        ev = {"budget": b.id, "scope": b.scope, "period": b.period,
              "period_start": _iso(p.start), "period_end": _iso(p.end),
              "limit_usd": usd(b.limit_pico), "spent_usd": usd(p.spent),
              "spent_pct": round(p.spent * 100 / b.limit_pico, 2)}
        if pct is not None:
            ev["threshold_pct"] = pct
        if projected is not None:
            ev["projected_usd"] = usd(projected)
        rec = inc.observe(level, "budget", text, ev, us)
        p.incidents[kind] = inc.to_state()
        if rec is not None:
            out.append(rec)

    def _unit_cost(self, uc: str, p: _Period, us: int, out: list) -> None:
        n = p.units.count()
        if n < self.config.min_units:
            return
        target = self.unit_targets[uc]
        per_unit = p.spent // n
        if per_unit <= target:
            return
        tenant, _, use_case = uc.partition("/")
        key = A.dedup_key("budget", tenant, "unit_cost", use_case, _day(p.start))
        state = p.incidents.get("unit_cost")
        inc = Incident.from_state(state) if state else Incident(key, "use_case", use_case,
                                                                tenant)
        text = (f"Use case {use_case} (tenant {tenant}) costs {usd(per_unit)} USD per unit "
                f"today, above its target of {usd(target)} ({n} units, {usd(p.spent)} USD).")
        rec = inc.observe(A.WARNING, "budget", text, {
            "use_case": use_case, "units": n, "spent_usd": usd(p.spent),
            "units_exact": p.units.exact, "cost_per_unit_usd": usd(per_unit),
            "target_usd": usd(target), "period_start": _iso(p.start)}, us)
        p.incidents["unit_cost"] = inc.to_state()
        if rec is not None:
            out.append(rec)

    def _close(self, key: str, p: _Period, out: list) -> None:
        for kind, state in list(p.incidents.items()):
            inc = Incident.from_state(state)
            rec = inc.resolve(f"The period of {key} ended ({usd(p.spent)} USD spent); "
                              f"resolved.", p.end)
            p.incidents[kind] = inc.to_state()
            if rec is not None:
                rec[A.EVIDENCE] = {"budget": key, "spent_usd": usd(p.spent),
                                   "period_end": _iso(p.end)}
                out.append(rec)

    @staticmethod
    def _who(b: Budget) -> str:
        if b.scope == "tenant":
            return f"Tenant {b.tenant}"
        return f"{b.scope.replace('_', ' ').capitalize()} {b.name} (tenant {b.tenant})"

    # ------------------------------------------------------------------ state

    def to_state(self) -> dict[str, Any]:
        return {k: [{"start": p.start, "end": p.end, "spent": p.spent, "first": p.first_us,
                     "last": p.last_us, "units": p.units.to_state(),
                     "incidents": p.incidents} for p in ps]
                for k, ps in self.periods.items()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.periods = {k: [_Period(d["start"], d["end"], d["spent"], d["first"], d["last"],
                                    DistinctCount.from_state(d["units"]), d["incidents"])
                              for d in ps]
                        for k, ps in state.items()}


def unit_targets(table: dict[str, Any]) -> dict[str, int]:
    """``{"tenant/use_case" = "0.05"}`` -> pico-USD per unit."""
    out = {}
    for key, amount in table.items():
        tenant, _, use_case = key.partition("/")
        if not tenant or not use_case:
            raise BudgetError(f"unit cost target {key!r}: expected tenant/use_case")
        try:
            out[key] = pico(str(amount))
        except (ArithmeticError, ValueError):
            raise BudgetError(f"unit cost target {key!r}: {amount!r} is not an "
                              f"amount") from None
        if out[key] <= 0:
            raise BudgetError(f"unit cost target {key!r}: must be positive")
    return out


def _day(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M")


_iso = C.rfc3339
