"""The steering-committee KPI report (``llmspend report``): the pure core.

``kpis(con, settings, since, until)`` answers, for one period read from the lake views
(:mod:`pipeline.analytics`), what the LLM traffic cost and how well it served:

* cost per request and per business unit (per ``unit_type``: cost / distinct units),
  split into tokens, infrastructure and operations (the fixed monthly costs of
  ``[report]`` allocated pro rata to the period, then per request);
* cost per active user and per team, against the team budgets of ``[budgets.limits]``
  pro-rated to the period;
* P95 latency, success, error, timeout, fallback and escalation rates;
* cache savings at list prices, unpriced calls, sampled traffic, the top sessions and
  agents, effective against list cost per provider;
* the change against the previous period of the same length.

``compare(con, settings, a, b)`` puts two periods or two variants (``model=...``,
``prompt_version=...``) side by side; :func:`render` prints a report as ``table``,
``markdown``, ``csv`` or ``json``.

Rules (the report prints them too):

* A **request** is an LLM call (``kind = 'llm'``), priced or not; tool executions cost
  nothing and are counted as steps of sessions and agents only.
* Money is ``Decimal``: sums are exact (``DECIMAL(38,12)`` in DuckDB), and every derived
  amount (per request, per unit, pro-rated) is rounded once, half-even, to 12 places.
  Unpriced calls have no cost (never a made-up zero), so per-request figures divide the
  known cost by every request: read them with the unpriced share beside them.
* Periods are half-open ``[start, end)`` in UTC, on whole minutes (the aggregates are
  1-minute windows, so ``calls`` and ``agg_1m`` see exactly the same calls).
* Fixed monthly costs: for each calendar month (UTC) the period overlaps, the monthly
  amount x overlap / length of that month; then divided by the period's requests, and
  given to a business unit type in proportion to the requests that named one.
* Budgets: a daily limit x period length / 24 h; a monthly limit pro-rated like fixed
  costs, on the months of ``budgets.timezone``; a team's tightest limit is shown.
* Cache savings: cached input tokens x (input - cache read price) of the call's price
  version and tier (the tier a call's input tokens fall in, as pricing does), at list
  prices (batch discounts and tenant overrides ignored); the premium paid for cache
  writes (cache-write tokens x (cache write - input price)) is subtracted for the net.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import duckdb

from pipeline.budget import Budget, parse_budgets
from pipeline.config import Settings

UTC = dt.UTC
MONEY_PLACES = 12
ZERO = Decimal(0)
_MINUTE = dt.timedelta(minutes=1)
_US = dt.timedelta(microseconds=1)

BY_CHOICES = ("team", "model", "use_case", "service")
FORMATS = ("table", "markdown", "csv", "json")
TOP_N = 10
#: Columns a variant comparison may filter on, and their SQL over the ``calls`` view
#: (``model`` as in ``agg_1m``: the priced model, else the response, else the request).
VARIANT_COLUMNS: dict[str, str] = {
    "model": "coalesce(model, response_model, request_model)",
    "provider": "provider", "service": "service", "team": "team", "use_case": "use_case",
    "prompt_version": "prompt_version", "agent": "agent", "environment": "environment",
    "request_model": "request_model",
}
#: Variant columns that are also keys of the ``group`` view of ``agg_1m`` (where the
#: fallbacks and escalations are counted).
_AGG_COLUMNS = frozenset({"model", "provider", "service", "team", "use_case"})
#: ``--by`` keys over ``calls`` (over ``agg_1m`` they are the column itself).
_BY_CALLS = {"team": "team", "model": VARIANT_COLUMNS["model"], "use_case": "use_case",
             "service": "service"}
NONE_KEY = "(none)"
TOTAL_KEY = "TOTAL"

PERIOD_HELP = (
    "the period: 7d, 24h, 90m or 2w (the last N days/hours/minutes/weeks, ending at "
    "--until or now), a calendar unit 2026-11-10 (a day), 2026-W46 (an ISO week), "
    "2026-11 (a month), or START..END (also START/END), half-open [START, END) in UTC, "
    "each end a date or 2026-11-10T14:00; with --until, a unit or time starts the "
    "period and --until ends it")
COMPARE_HELP = (
    "A..B side by side with the difference. Two periods: 2026-W45..2026-W46, "
    "2026-11-09..2026-11-10 (days), 2026-11..2026-12, or "
    "2026-11-01/2026-11-08..2026-11-08/2026-11-15 (START/END ranges). Two variants over "
    "--since/--until: COLUMN=VALUE..COLUMN=VALUE or COLUMN=VALUE..VALUE, e.g. "
    "model=gpt-4o..gpt-4o-mini, prompt_version=ticket-reply-v1..ticket-reply-v2; "
    f"columns: {', '.join(VARIANT_COLUMNS)}")


class ReportError(ValueError):
    """A period, comparison or option the report cannot use; the message says why."""


# ------------------------------------------------------------------ periods


@dataclass(frozen=True)
class Period:
    """Half-open ``[start, end)`` in UTC on whole minutes; ``label`` is what the user
    typed (or a canonical form), for headings."""

    start: dt.datetime
    end: dt.datetime
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            t = getattr(self, name)
            if t.tzinfo is None or t.utcoffset() != dt.timedelta(0):
                raise ReportError(f"period {name} {t} must be UTC")
            if t.second or t.microsecond:
                raise ReportError(f"period {name} {t:%Y-%m-%d %H:%M:%S} is not on a whole "
                                  "minute (the aggregates are 1-minute windows)")
        if not self.start < self.end:
            raise ReportError(f"period start {self.start:%Y-%m-%d %H:%M} is not before its "
                              f"end {self.end:%Y-%m-%d %H:%M}")

    @property
    def length(self) -> dt.timedelta:
        return self.end - self.start

    @property
    def us(self) -> int:
        """Length in microseconds (exact arithmetic for pro-rating)."""
        return self.length // _US

    def previous(self) -> Period:
        """The period of the same length just before this one (period-over-period)."""
        return Period(self.start - self.length, self.start, "previous period")

    def describe(self) -> str:
        return f"{_when(self.start)} to {_when(self.end)} UTC ({_length(self.length)})"

    @classmethod
    def parse(cls, since: str, until: str | dt.datetime | None = None,
              now: dt.datetime | None = None) -> Period:
        """Parse ``--since``/``--until`` (syntax: :data:`PERIOD_HELP`)."""
        return parse_period(since, until, now)


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M")


def _length(d: dt.timedelta) -> str:
    minutes = d // _MINUTE
    for size, unit in ((7 * 24 * 60, "week"), (24 * 60, "day"), (60, "hour"), (1, "minute")):
        if minutes % size == 0:
            n = minutes // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{minutes} minutes"   # pragma: no cover (every length is whole minutes)


_DURATION = re.compile(r"^(\d+)([mhdw])$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_UNITS = {"m": dt.timedelta(minutes=1), "h": dt.timedelta(hours=1),
          "d": dt.timedelta(days=1), "w": dt.timedelta(weeks=1)}


def _now(now: dt.datetime | None) -> dt.datetime:
    t = (now or dt.datetime.now(UTC)).astimezone(UTC)
    return t.replace(second=0, microsecond=0)


def _unit(text: str, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime | None]:
    """(start, end of the calendar unit or None for a point in time) of one token."""
    text = text.strip()
    try:
        if text == "now":
            return _now(now), None
        if _DAY.match(text):
            d = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), UTC)
            return d, d + dt.timedelta(days=1)
        if m := _WEEK.match(text):
            d = dt.date.fromisocalendar(int(m[1]), int(m[2]), 1)
            start = dt.datetime.combine(d, dt.time(), UTC)
            return start, start + dt.timedelta(weeks=1)
        if m := _MONTH.match(text):
            start = dt.datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC)
            return start, _next_month(start)
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{text!r} is not a date (2026-11-10), ISO week (2026-W46), "
                          "month (2026-11), time (2026-11-10T14:00) or 'now'") from None
    return (t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)), None


def _next_month(t: dt.datetime) -> dt.datetime:
    return (t.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


def _split_range(text: str) -> tuple[str, str] | None:
    for sep in ("..", "/"):
        if sep in text:
            a, _, b = text.partition(sep)
            if sep in b or not a.strip() or not b.strip():
                raise ReportError(f"{text!r}: expected START{sep}END")
            return a, b
    return None


def parse_period(since: str, until: str | dt.datetime | None = None,
                 now: dt.datetime | None = None) -> Period:
    """The period of ``--since`` (and ``--until``); ``now`` (default: the clock, on the
    minute) ends relative periods. Syntax: :data:`PERIOD_HELP`."""
    since = since.strip()
    end: dt.datetime | None = None
    if until is not None:
        end = until.astimezone(UTC) if isinstance(until, dt.datetime) else _unit(until, now)[0]
    if m := _DURATION.match(since):
        n = int(m[1])
        if n <= 0:
            raise ReportError(f"{since!r}: the length must be positive")
        end = end or _now(now)
        return Period(end - n * _UNITS[m[2]], end, since)
    if rng := _split_range(since):
        if until is not None:
            raise ReportError(f"{since!r} is a START..END range: leave --until out")
        return Period(_unit(rng[0], now)[0], _unit(rng[1], now)[0], since)
    start, unit_end = _unit(since, now)
    if end is None:
        end = unit_end or _now(now)
    return Period(start, end, since if until is None else f"{since}..{until}")


# ------------------------------------------------------------------ money


def _round_money(x: Fraction | Decimal | int) -> Decimal:
    """Exact value -> Decimal at 12 places, rounded once, half-even (Fraction rounding
    is exact, so no double rounding whatever the size)."""
    return Decimal(round(Fraction(x) * 10**MONEY_PLACES)).scaleb(-MONEY_PLACES)


def _div(num: Fraction | Decimal | int, den: Fraction | Decimal | int) -> Decimal | None:
    """Money per something, or None when there is nothing to divide by."""
    return None if not den else _round_money(Fraction(num) / Fraction(den))


def _month_fractions(period: Period, tz: dt.tzinfo = UTC) -> Fraction:
    """How many months (of the calendar in ``tz``) the period covers: the sum over every
    month it overlaps of overlap / month length, exactly."""
    local = period.start.astimezone(tz)
    y, m = local.year, local.month
    total = Fraction(0)
    while True:
        start = dt.datetime(y, m, 1, tzinfo=tz).astimezone(UTC)
        if start >= period.end:
            return total
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        nxt = dt.datetime(y, m, 1, tzinfo=tz).astimezone(UTC)
        overlap = min(nxt, period.end) - max(start, period.start)
        if overlap > dt.timedelta(0):
            total += Fraction(overlap // _US, (nxt - start) // _US)


def _monthly_share(amount_per_month: Decimal | str, period: Period,
                   tz: dt.tzinfo = UTC) -> Fraction:
    return Fraction(Decimal(amount_per_month)) * _month_fractions(period, tz)


def allocate_monthly(amount_per_month: Decimal | str, period: Period,
                     tz: dt.tzinfo = UTC) -> Decimal:
    """A fixed monthly amount's share of ``period``: amount x overlap / month length,
    summed over the months it overlaps (a week across a month end takes its days from
    each month at that month's rate); exact, then rounded once to 12 places."""
    return _round_money(_monthly_share(amount_per_month, period, tz))


def prorate_budget(budget: Budget, period: Period, tz: dt.tzinfo = UTC) -> Decimal:
    """A budget's limit over ``period``: daily x (length / 24 h), or monthly pro-rated
    on the months of ``tz`` like fixed costs."""
    limit = Fraction(budget.limit_pico, 10**MONEY_PLACES)
    if budget.period == "daily":
        return _round_money(limit * Fraction(period.us, 86_400 * 10**6))
    return _round_money(limit * _month_fractions(period, tz))


# ------------------------------------------------------------------ the report shape


class Col(NamedTuple):
    """A displayed column: ``kind`` picks the formatting (``text``, ``count``, ``usd``,
    ``rate`` (a fraction shown as %), ``pct`` (already in %), ``ms``, ``s``, ``num``;
    ``auto``: the row's ``unit``); ``signed`` prints a + on increases."""

    name: str
    label: str
    kind: str = "text"
    signed: bool = False


@dataclass
class Section:
    """One table of the report: ``rows`` are dicts (money ``Decimal``, rates and
    latency ``float``, missing ``None``); ``columns`` say what table/markdown show and
    how, ``keys`` which columns name a row (the csv ``key``)."""

    key: str
    title: str
    columns: list[Col]
    rows: list[dict[str, Any]]
    keys: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def row(self, **match: Any) -> dict[str, Any]:
        """The first row whose columns equal ``match`` (KeyError if none)."""
        for r in self.rows:
            if all(r.get(k) == v for k, v in match.items()):
                return r
        raise KeyError(f"{self.key}: no row {match}")


@dataclass
class Report:
    """A titled list of sections, with the facts a reader needs first (``header``:
    (label, text) pairs), the machine-readable ``meta`` and the ``warnings``."""

    title: str
    header: list[tuple[str, str]]
    meta: dict[str, Any]
    sections: list[Section]
    warnings: list[str] = field(default_factory=list)

    def section(self, key: str) -> Section:
        for s in self.sections:
            if s.key == key:
                return s
        raise KeyError(f"no section {key!r} (have {', '.join(s.key for s in self.sections)})")


# ------------------------------------------------------------------ SQL helpers


_PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
           ) -> list[dict[str, Any]]:
    """Rows as dicts; only the parameters the SQL names are bound (DuckDB refuses
    extra ones)."""
    used = {k: params[k] for k in set(_PARAM.findall(sql))}
    cur = con.execute(sql, used)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@dataclass(frozen=True)
class Slice:
    """What one side of a report reads: a period, optionally one tenant, optionally
    one variant (``column`` = ``value`` of :data:`VARIANT_COLUMNS`)."""

    period: Period
    tenant: str | None = None
    column: str | None = None
    value: str | None = None
    label: str = ""

    def params(self, settings: Settings) -> dict[str, Any]:
        a = settings.aggregate
        return {
            "start": self.period.start, "end": self.period.end,
            "d0": self.period.start.date(), "d1": (self.period.end - _US).date(),
            "tenant": self.tenant, "value": self.value,
            "timeout_types": sorted(t.strip() for t in a.timeout_error_types.split(",")
                                    if t.strip()),
            "timeout_ms": float(a.timeout_ms),
        }

    def cte(self) -> str:
        """``WITH c AS (...)``: the slice's calls. Filters on dt, start_time and tenant
        reach the files (the calls view is DISTINCT ON them)."""
        where = ["start_time >= $start", "start_time < $end", "dt BETWEEN $d0 AND $d1"]
        if self.tenant is not None:
            where.append("tenant = $tenant")
        if self.column is not None:
            where.append(f"{VARIANT_COLUMNS[self.column]} = $value")
        return f"WITH c AS (SELECT * FROM calls WHERE {' AND '.join(where)})\n"

    @property
    def in_agg(self) -> bool:
        """Whether ``agg_1m`` can tell this slice's calls apart (fallbacks need it)."""
        return self.column is None or self.column in _AGG_COLUMNS

    def agg_where(self) -> str:
        w = "view = 'group' AND window_start >= $start AND window_start < $end"
        w += " AND tenant = $tenant" if self.tenant is not None else ""
        return w + (f" AND {self.column} = $value" if self.column is not None else "")


_TIMEOUT = ("((status = 'error' AND list_contains($timeout_types, error_type)) "
            "OR coalesce(latency_ms >= $timeout_ms, false))")
#: Per-request facts of a set of LLM calls (one row, or one per group).
_FACTS = f"""
    count(*) AS requests,
    count(*) FILTER (status = 'ok') AS ok,
    count(*) FILTER (status = 'error') AS errors,
    count(*) FILTER ({_TIMEOUT}) AS timeouts,
    count(*) FILTER (NOT priced) AS unpriced,
    coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd,
    count(DISTINCT CASE WHEN user_id IS NOT NULL THEN [tenant, user_id] END) AS users,
    llmspend_p95(llmspend_sketch_of(latency_ms)) AS p95_ms"""


def _facts(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
           key: str | None = None) -> list[dict[str, Any]]:
    """:data:`_FACTS` of the slice's requests, in total or per ``key`` (SQL)."""
    params = s.params(settings)
    if key is None:
        return _query(con, s.cte() + f"SELECT {_FACTS} FROM c WHERE kind = 'llm'", params)
    sql = (s.cte() + f"SELECT coalesce({key}, '{NONE_KEY}') AS key, {_FACTS}\n"
           "FROM c WHERE kind = 'llm' GROUP BY 1 ORDER BY cost_usd DESC, key")
    return _query(con, sql, params)


def _session_counts(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
                    key: str | None = None) -> dict[str, dict[str, int]]:
    """Fallbacks and escalations (counted by the aggregator, which sees each session's
    previous call) with the LLM calls they are a share of, from ``agg_1m``."""
    k = f"coalesce({key}, '{NONE_KEY}')" if key else f"'{TOTAL_KEY}'"
    sql = (f"SELECT {k} AS key, sum(llm_calls)::BIGINT AS llm_calls, "
           "sum(fallbacks)::BIGINT AS fallbacks, sum(escalations)::BIGINT AS escalations "
           f"FROM agg_1m WHERE {s.agg_where()} GROUP BY 1")
    return {r["key"]: r for r in _query(con, sql, s.params(settings))}


def _rate(n: int | None, d: int | None) -> float | None:
    return None if n is None or not d else n / d


def _pct(part: Decimal | None, whole: Decimal | None) -> float | None:
    return None if part is None or not whole else float(part / whole * 100)


# ------------------------------------------------------------------ totals of a slice


def _totals(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
            fixed: bool = True) -> dict[str, Any]:
    """The headline numbers of one slice (this period, the previous one, a variant)."""
    f = _facts(con, s, settings)[0]
    req = f["requests"]
    out: dict[str, Any] = dict(f)
    out["cost_per_request_usd"] = _div(f["cost_usd"], req)
    out["cost_per_user_usd"] = _div(f["cost_usd"], f["users"])
    out["success_rate"] = _rate(f["ok"], req)
    out["error_rate"] = _rate(f["errors"], req)
    out["timeout_rate"] = _rate(f["timeouts"], req)
    out["unpriced_share"] = _rate(f["unpriced"], req)
    if not s.in_agg:   # agg_1m has no prompt_version, agent...: no session counts
        out.update(fallback_rate=None, escalation_rate=None)
    else:
        agg = _session_counts(con, s, settings).get(TOTAL_KEY, {})
        out["fallback_rate"] = _rate(agg.get("fallbacks"), agg.get("llm_calls"))
        out["escalation_rate"] = _rate(agg.get("escalations"), agg.get("llm_calls"))
    if fixed:   # exact shares (Fractions, "_" keys) so that each figure rounds once
        infra = _monthly_share(settings.report.infra_usd_per_month, s.period)
        ops = _monthly_share(settings.report.ops_usd_per_month, s.period)
        total = Fraction(f["cost_usd"]) + infra + ops
        out.update(_infra=infra, _ops=ops, infra_usd=_round_money(infra),
                   ops_usd=_round_money(ops), fixed_usd=_round_money(infra + ops),
                   total_usd=_round_money(total), total_per_request_usd=_div(total, req))
    return out


_SUMMARY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("requests", "Requests (LLM calls)", "count"),
    ("cost_usd", "Token cost (USD)", "usd"),
    ("cost_per_request_usd", "Token cost per request (USD)", "usd"),
    ("fixed_usd", "Fixed costs: infrastructure + operations (USD)", "usd"),
    ("total_usd", "Total cost (USD)", "usd"),
    ("total_per_request_usd", "Total cost per request (USD)", "usd"),
    ("users", "Active users", "count"),
    ("cost_per_user_usd", "Token cost per active user (USD)", "usd"),
    ("p95_ms", "P95 latency (ms)", "ms"),
    ("success_rate", "Success rate", "rate"),
    ("error_rate", "Error rate", "rate"),
    ("timeout_rate", "Timeout rate", "rate"),
    ("fallback_rate", "Fallback rate", "rate"),
    ("escalation_rate", "Escalation rate", "rate"),
    ("unpriced", "Unpriced requests", "count"),
    ("unpriced_share", "Unpriced share", "rate"),
)


def _change(a: Any, b: Any) -> tuple[Any, float | None]:
    """(b - a, relative change of b against a in %), None where undefined."""
    if a is None or b is None:
        return None, None
    diff = b - a
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return diff, (float(Decimal(diff) / Decimal(a) * 100) if a else None)
    return diff, (diff / a * 100 if a else None)


def _metric_rows(metrics: Iterable[tuple[str, str, str]], a: dict[str, Any],
                 b: dict[str, Any], names: tuple[str, str]) -> list[dict[str, Any]]:
    rows = []
    for key, label, unit in metrics:
        diff, pct = _change(a.get(key), b.get(key))
        rows.append({"metric": key, "label": label, "unit": unit, names[0]: a.get(key),
                     names[1]: b.get(key), "change": diff, "change_pct": pct})
    return rows


# ------------------------------------------------------------------ the KPI report


def kpis(con: duckdb.DuckDBPyConnection, settings: Settings, since: str | Period,
         until: str | dt.datetime | None = None, by: str | None = None,
         tenant: str | None = None, *, now: dt.datetime | None = None,
         top: int = TOP_N) -> Report:
    """The KPI report of one period (``since``/``until``: :func:`parse_period`, or a
    :class:`Period`), the main table grouped ``by`` team (default), model, use_case or
    service, optionally for one ``tenant``; ``now`` ends relative periods."""
    by = by or "team"
    if by not in BY_CHOICES:
        raise ReportError(f"--by {by!r}: choose from {', '.join(BY_CHOICES)}")
    if isinstance(since, Period):
        if until is not None:
            raise ReportError("give --until with a --since text, not with a Period")
        period = since
    else:
        period = parse_period(since, until, now)
    cur = Slice(period, tenant, label="this period")
    prev = Slice(period.previous(), tenant, label="previous period")
    t = _totals(con, cur, settings)
    p = _totals(con, prev, settings)
    sections = [
        Section("summary", "Summary (this period against the previous one)",
                [Col("label", "Metric"), Col("value", "This period", "auto"),
                 Col("previous", "Previous", "auto"),
                 Col("change", "Change", "auto", signed=True),
                 Col("change_pct", "Change %", "pct", signed=True)],
                _metric_rows(_SUMMARY_METRICS, p, t, ("previous", "value")),
                keys=("metric",),
                notes=["Change is this period minus the previous one (rates in percentage "
                       "points); Change % is relative to the previous period."]),
        _unit_costs(con, cur, settings, t),
        *_by_tables(con, cur, settings, by, t),
        _teams(con, cur, settings),
        _budgets(con, cur, settings),
        _cache(con, cur, settings),
        _unpriced(con, cur, settings, t["requests"]),
        _top_sessions(con, cur, settings, top),
        _top_agents(con, cur, settings, top),
        _providers(con, cur, settings),
    ]
    warnings = []
    sampling = _sampling(con, cur, settings)
    if sampling is not None:
        sections.append(sampling)
        warnings.append(sampling.notes[0])
    if t["unpriced"]:
        warnings.append(f"{t['unpriced']:,} of {t['requests']:,} requests "
                        f"({t['unpriced_share'] * 100:.2f}%) have no price: their cost is "
                        "unknown and in no total (see Unpriced requests).")
    if not p["requests"]:
        warnings.append("The previous period has no requests: no change to show.")
    if old := _retention_warning(settings, prev.period.start, tenant, now):
        warnings.append(old)
    r = settings.report
    header = [
        ("Period", period.describe()),
        ("Compared with", prev.period.describe()),
        ("Tenant", tenant or "all"),
        ("Grouped by", by),
        ("Fixed costs", f"infrastructure {r.infra_usd_per_month} USD/month, operations "
                        f"{r.ops_usd_per_month} USD/month, pro rata to the period"),
    ]
    meta = {"kind": "kpis", "period": _period_meta(period), "previous": _period_meta(prev.period),
            "tenant": tenant, "by": by,
            "infra_usd_per_month": Decimal(r.infra_usd_per_month),
            "ops_usd_per_month": Decimal(r.ops_usd_per_month)}
    return Report(f"LLM spend report: {period.label or period.describe()}", header, meta,
                  sections, warnings)


def _retention_warning(settings: Settings, start: dt.datetime, tenant: str | None,
                       now: dt.datetime | None) -> str | None:
    """Call-level rows older than ``jobs.calls_days`` are deleted by the retention job,
    and this report reads them: say so rather than show a silent drop."""
    j = settings.jobs
    days = ([j.calls_days_by_tenant.get(tenant, j.calls_days)] if tenant else
            [j.calls_days, *j.calls_days_by_tenant.values()])
    days = [d for d in days if d > 0]
    if not days:
        return None
    n = min(days)
    horizon = _now(now) - dt.timedelta(days=n)
    if start >= horizon:
        return None
    return (f"Call-level rows older than {n} day{'s' if n != 1 else ''} (jobs.calls_days) "
            f"may have been deleted by retention: figures before {_when(horizon)} UTC can "
            "be incomplete.")


def _period_meta(p: Period) -> dict[str, str]:
    return {"start": p.start.isoformat(), "end": p.end.isoformat(), "label": p.label}


def _unit_costs(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
                t: dict[str, Any]) -> Section:
    """Cost per request and per business unit type, split tokens / infra / ops."""
    sql = s.cte() + """
SELECT unit_type, count(DISTINCT [tenant, unit_id]) AS units, count(*) AS requests,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd
FROM c WHERE kind = 'llm' AND unit_type IS NOT NULL AND unit_id IS NOT NULL
GROUP BY unit_type ORDER BY unit_type"""
    req = t["requests"]
    rows = [{"unit": "request", "units": req, "requests": req, "cost_usd": t["cost_usd"],
             "tokens_per_unit_usd": _div(t["cost_usd"], req),
             "infra_per_unit_usd": _div(t["_infra"], req),
             "ops_per_unit_usd": _div(t["_ops"], req),
             "total_per_unit_usd": t["total_per_request_usd"]}]
    for u in _query(con, sql, s.params(settings)):
        # The unit type's share of the fixed costs is its share of the requests.
        infra = t["_infra"] * Fraction(u["requests"], req)
        ops = t["_ops"] * Fraction(u["requests"], req)
        rows.append({"unit": u["unit_type"], "units": u["units"], "requests": u["requests"],
                     "cost_usd": u["cost_usd"],
                     "tokens_per_unit_usd": _div(u["cost_usd"], u["units"]),
                     "infra_per_unit_usd": _div(infra, u["units"]),
                     "ops_per_unit_usd": _div(ops, u["units"]),
                     "total_per_unit_usd": _div(Fraction(u["cost_usd"]) + infra + ops,
                                                u["units"])})
    return Section(
        "unit_costs", "Cost per request and per business unit",
        [Col("unit", "Per"), Col("units", "Count", "count"),
         Col("requests", "Requests", "count"), Col("cost_usd", "Token cost USD", "usd"),
         Col("tokens_per_unit_usd", "Tokens", "usd"),
         Col("infra_per_unit_usd", "Infrastructure", "usd"),
         Col("ops_per_unit_usd", "Operations", "usd"),
         Col("total_per_unit_usd", "Total", "usd")],
        rows, keys=("unit",),
        notes=["Per request: costs / requests. Per business unit (unit_type): the cost of "
               "the requests that name a unit / distinct units (tenant, unit_id); fixed "
               "costs go to a unit type in proportion to its requests."])


def _by_tables(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings, by: str,
               t: dict[str, Any]) -> list[Section]:
    """The main table (cost) and its quality twin, one row per ``by`` key + TOTAL."""
    groups = _facts(con, s, settings, _BY_CALLS[by])
    agg = _session_counts(con, s, settings, by)
    total = {**_facts(con, s, settings)[0], "key": TOTAL_KEY}
    agg_total = _session_counts(con, s, settings).get(TOTAL_KEY, {})
    req_all = t["requests"]
    cost_rows, quality_rows = [], []
    for g, a in [*((g, agg.get(g["key"], {})) for g in groups), (total, agg_total)]:
        fixed = ((t["_infra"] + t["_ops"]) * Fraction(g["requests"], req_all) if req_all
                 else Fraction(0))
        cost_rows.append({
            by: g["key"], "requests": g["requests"], "cost_usd": g["cost_usd"],
            "share_pct": _pct(g["cost_usd"], t["cost_usd"]),
            "cost_per_request_usd": _div(g["cost_usd"], g["requests"]),
            "fixed_usd": _round_money(fixed),
            "total_usd": _round_money(Fraction(g["cost_usd"]) + fixed),
            "users": g["users"], "cost_per_user_usd": _div(g["cost_usd"], g["users"])})
        quality_rows.append({
            by: g["key"], "requests": g["requests"], "p95_ms": g["p95_ms"],
            "success_rate": _rate(g["ok"], g["requests"]),
            "error_rate": _rate(g["errors"], g["requests"]),
            "timeout_rate": _rate(g["timeouts"], g["requests"]),
            "fallback_rate": _rate(a.get("fallbacks"), a.get("llm_calls")),
            "escalation_rate": _rate(a.get("escalations"), a.get("llm_calls")),
            "unpriced": g["unpriced"]})
    name = by.replace("_", " ")
    return [
        Section(f"by_{by}", f"Cost by {name}",
                [Col(by, name.capitalize()), Col("requests", "Requests", "count"),
                 Col("cost_usd", "Token cost USD", "usd"), Col("share_pct", "Share", "pct"),
                 Col("cost_per_request_usd", "Per request", "usd"),
                 Col("fixed_usd", "Fixed USD", "usd"), Col("total_usd", "Total USD", "usd"),
                 Col("users", "Users", "count"),
                 Col("cost_per_user_usd", "Per user", "usd")],
                cost_rows, keys=(by,),
                notes=["Fixed costs are shared in proportion to requests. Users are "
                       "distinct (tenant, user_id); TOTAL counts each user once."]),
        Section(f"quality_by_{by}", f"Latency and quality by {name}",
                [Col(by, name.capitalize()), Col("requests", "Requests", "count"),
                 Col("p95_ms", "P95 ms", "ms"), Col("success_rate", "Success", "rate"),
                 Col("error_rate", "Errors", "rate"), Col("timeout_rate", "Timeouts", "rate"),
                 Col("fallback_rate", "Fallbacks", "rate"),
                 Col("escalation_rate", "Escalations", "rate"),
                 Col("unpriced", "Unpriced", "count")],
                quality_rows, keys=(by,),
                notes=["P95: lower nearest rank on the 1 % latency sketch (as agg_1m and "
                       "llmspend_p95). Timeouts: errors of a timeout type or latency >= "
                       f"{settings.aggregate.timeout_ms:g} ms. Fallbacks and escalations "
                       "from agg_1m (share of its LLM calls)."]),
    ]


def _team_budgets(settings: Settings, tenant: str | None) -> list[Budget]:
    return [b for b in parse_budgets(settings.budgets.limits)
            if tenant is None or b.tenant == tenant]


def _teams(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings) -> Section:
    """Cost per active user per team, against the team's tightest pro-rated budget."""
    sql = s.cte() + f"""
SELECT tenant, coalesce(team, '{NONE_KEY}') AS team, count(*) AS requests,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd,
       count(DISTINCT user_id) AS users
FROM c WHERE kind = 'llm' GROUP BY ALL ORDER BY cost_usd DESC, tenant, team"""
    tz = ZoneInfo(settings.budgets.timezone)
    limits: dict[tuple[str, str], tuple[Decimal, str]] = {}
    for b in _team_budgets(settings, s.tenant):
        if b.scope == "team":
            amount = prorate_budget(b, s.period, tz)
            k = (b.tenant, b.name)
            if k not in limits or amount < limits[k][0]:
                limits[k] = (amount, b.period)
    rows = []
    for r in _query(con, sql, s.params(settings)):
        budget, basis = limits.get((r["tenant"], r["team"]), (None, None))
        rows.append({**r, "cost_per_user_usd": _div(r["cost_usd"], r["users"]),
                     "budget_usd": budget, "budget_basis": basis,
                     "budget_used_pct": _pct(r["cost_usd"], budget)})
    return Section(
        "teams", "Teams: cost per active user and budget",
        [Col("tenant", "Tenant"), Col("team", "Team"), Col("requests", "Requests", "count"),
         Col("cost_usd", "Token cost USD", "usd"), Col("users", "Active users", "count"),
         Col("cost_per_user_usd", "Per user", "usd"),
         Col("budget_usd", "Budget USD", "usd"), Col("budget_basis", "Basis"),
         Col("budget_used_pct", "Used", "pct")],
        rows, keys=("tenant", "team"),
        notes=["Budget: the team's tightest budget (budgets.limits) pro-rated to the "
               "period: daily x days, monthly x share of the month "
               f"({settings.budgets.timezone}); Used = token cost / budget."])


_SCOPE_SQL = {"tenant": "''", "team": "team", "user": "user_id", "use_case": "use_case"}


def _budgets(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings) -> Section:
    """Every configured budget of the slice's tenants: spend in the period against its
    pro-rated limit (all calls count, as in the budget detector)."""
    budgets = _team_budgets(settings, s.tenant)
    tz = ZoneInfo(settings.budgets.timezone)
    spend: dict[tuple[str, str, str], Decimal] = {}
    for scope in sorted({b.scope for b in budgets}):
        sql = s.cte() + (f"SELECT tenant, {_SCOPE_SQL[scope]} AS name, "
                         "coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd "
                         "FROM c GROUP BY ALL")
        for r in _query(con, sql, s.params(settings)):
            spend[(scope, r["tenant"], r["name"] or "")] = r["cost_usd"]
    rows = []
    for b in sorted(budgets, key=lambda b: (b.scope, b.tenant, b.name, b.period)):
        limit = prorate_budget(b, s.period, tz)
        spent = spend.get((b.scope, b.tenant, b.name), ZERO)
        rows.append({"budget": b.id.rsplit(":", 1)[0], "scope": b.scope, "limit_basis":
                     b.period, "limit_usd": _round_money(Fraction(b.limit_pico, 10**12)),
                     "period_budget_usd": limit, "spent_usd": spent,
                     "used_pct": _pct(spent, limit)})
    return Section(
        "budgets", "Budgets",
        [Col("budget", "Budget"), Col("limit_basis", "Per"),
         Col("limit_usd", "Limit USD", "usd"), Col("period_budget_usd", "For period", "usd"),
         Col("spent_usd", "Spent USD", "usd"), Col("used_pct", "Used", "pct")],
        rows, keys=("budget", "limit_basis"),
        notes=["Budgets from budgets.limits; each limit pro-rated to the report period."
               if rows else "No budgets configured (budgets.limits)."])


def _cache(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings) -> Section:
    """What prompt caching saved at list prices, per provider, and the write premium."""
    sql = s.cte() + """
, t AS (
    SELECT c.provider, c.cached_input_tokens AS cached, c.cache_write_tokens AS written,
           p.input_usd_per_mtok AS p_in, p.cache_read_usd_per_mtok AS p_read,
           p.cache_write_usd_per_mtok AS p_write
    FROM c JOIN prices p ON p.price_version = c.price_version
     AND (p.above_input_tokens = 0 OR c.input_tokens > p.above_input_tokens)
    WHERE c.kind = 'llm' AND c.priced
      AND (coalesce(c.cached_input_tokens, 0) > 0 OR coalesce(c.cache_write_tokens, 0) > 0)
    QUALIFY row_number() OVER (PARTITION BY c.call_id ORDER BY p.above_input_tokens DESC) = 1)
SELECT provider, coalesce(sum(cached), 0)::BIGINT AS cached_tokens,
       coalesce(sum(cached * (p_in - p_read)), 0) AS saved_mtok,
       coalesce(sum(written), 0)::BIGINT AS cache_write_tokens,
       coalesce(sum(written * (p_write - p_in)), 0) AS premium_mtok
FROM t GROUP BY provider ORDER BY provider"""
    rows = []
    totals = {"cached_tokens": 0, "saved_usd": ZERO, "cache_write_tokens": 0,
              "write_premium_usd": ZERO}
    for r in _query(con, sql, s.params(settings)):
        # USD per Mtok x tokens / 1e6, exact, then rounded once to 12 places.
        saved = _round_money(Fraction(r["saved_mtok"]) / 10**6)
        premium = _round_money(Fraction(r["premium_mtok"]) / 10**6)
        row = {"provider": r["provider"], "cached_tokens": r["cached_tokens"],
               "saved_usd": saved, "cache_write_tokens": r["cache_write_tokens"],
               "write_premium_usd": premium, "net_saved_usd": saved - premium}
        rows.append(row)
        for k in totals:
            totals[k] += row[k]
    rows.sort(key=lambda r: (-r["net_saved_usd"], r["provider"]))
    rows.append({"provider": TOTAL_KEY, **totals,
                 "net_saved_usd": totals["saved_usd"] - totals["write_premium_usd"]})
    return Section(
        "cache", "Prompt cache savings (list prices)",
        [Col("provider", "Provider"), Col("cached_tokens", "Cached tokens", "count"),
         Col("saved_usd", "Saved USD", "usd"),
         Col("cache_write_tokens", "Cache-write tokens", "count"),
         Col("write_premium_usd", "Write premium USD", "usd"),
         Col("net_saved_usd", "Net saved USD", "usd")],
        rows, keys=("provider",),
        notes=["Saved = cached input tokens x (input - cache read price); write premium = "
               "cache-write tokens x (cache write - input price); prices of the call's "
               "price version and tier, at list (batch discounts and tenant overrides "
               "ignored)."])


def _unpriced(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
              requests: int) -> Section:
    sql = s.cte() + """
SELECT coalesce(response_model, request_model, '(unknown)') AS model,
       coalesce(provider, '(unknown)') AS provider,
       CASE WHEN list_contains(string_split(issues, ','), 'model_not_in_catalog')
                 THEN 'model not in catalog'
            WHEN list_contains(string_split(issues, ','), 'no_usage')
                 THEN 'no usage reported'
            ELSE coalesce(issues, 'unpriced') END AS reason,
       count(*) AS requests
FROM c WHERE kind = 'llm' AND NOT priced
GROUP BY ALL ORDER BY requests DESC, model, reason"""
    rows = [{**r, "share": _rate(r["requests"], requests)}
            for r in _query(con, sql, s.params(settings))]
    n = sum(r["requests"] for r in rows)
    return Section(
        "unpriced", "Unpriced requests",
        [Col("model", "Model"), Col("provider", "Provider"), Col("reason", "Reason"),
         Col("requests", "Requests", "count"), Col("share", "Share of requests", "rate")],
        rows, keys=("model", "provider", "reason"),
        notes=[f"{n:,} of {requests:,} requests have no price; their cost is unknown and in "
               "no total (failed calls usually report no usage)."])


def _top_sessions(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
                  top: int) -> Section:
    sql = s.cte() + f"""
SELECT tenant, session_id, min(agent) AS agent, min(team) AS team,
       count(*) FILTER (kind = 'llm') AS requests, count(*) FILTER (kind = 'tool') AS tools,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd,
       (epoch_us(max(coalesce(end_time, start_time))) - epoch_us(min(start_time)))
           / 1e6 AS duration_s
FROM c GROUP BY tenant, session_id
ORDER BY cost_usd DESC, tenant, session_id LIMIT {int(top)}"""
    return Section(
        "top_sessions", f"Top {top} sessions by cost",
        [Col("tenant", "Tenant"), Col("session_id", "Session"), Col("agent", "Agent"),
         Col("team", "Team"), Col("requests", "Requests", "count"),
         Col("tools", "Tool calls", "count"), Col("cost_usd", "Cost USD", "usd"),
         Col("duration_s", "Duration s", "s")],
        _query(con, sql, s.params(settings)), keys=("tenant", "session_id"))


def _top_agents(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings,
                top: int) -> Section:
    sql = s.cte() + f"""
SELECT tenant, agent, count(DISTINCT session_id) AS sessions,
       count(*) FILTER (kind = 'llm') AS requests, count(*) FILTER (kind = 'tool') AS tools,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd
FROM c WHERE agent IS NOT NULL GROUP BY tenant, agent
ORDER BY cost_usd DESC, tenant, agent LIMIT {int(top)}"""
    rows = [{**r, "cost_per_session_usd": _div(r["cost_usd"], r["sessions"])}
            for r in _query(con, sql, s.params(settings))]
    return Section(
        "top_agents", f"Top {top} agents by cost",
        [Col("tenant", "Tenant"), Col("agent", "Agent"), Col("sessions", "Sessions", "count"),
         Col("requests", "Requests", "count"), Col("tools", "Tool calls", "count"),
         Col("cost_usd", "Cost USD", "usd"),
         Col("cost_per_session_usd", "Per session", "usd")],
        rows, keys=("tenant", "agent"))


def _providers(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings) -> Section:
    sql = s.cte() + """
SELECT coalesce(provider, '(unknown)') AS provider, count(*) AS requests,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd,
       coalesce(sum(list_cost_usd), 0)::DECIMAL(38, 12) AS list_cost_usd
FROM c WHERE kind = 'llm' AND priced GROUP BY 1 ORDER BY cost_usd DESC, provider"""
    rows = []
    for r in _query(con, sql, s.params(settings)):
        saved = r["list_cost_usd"] - r["cost_usd"]
        rows.append({**r, "savings_usd": saved, "savings_pct": _pct(saved, r["list_cost_usd"])})
    if rows:
        tot = {k: sum((r[k] for r in rows), ZERO) for k in ("cost_usd", "list_cost_usd")}
        saved = tot["list_cost_usd"] - tot["cost_usd"]
        rows.append({"provider": TOTAL_KEY, "requests": sum(r["requests"] for r in rows),
                     **tot, "savings_usd": saved,
                     "savings_pct": _pct(saved, tot["list_cost_usd"])})
    return Section(
        "providers", "Effective against list cost per provider",
        [Col("provider", "Provider"), Col("requests", "Priced requests", "count"),
         Col("cost_usd", "Cost USD", "usd"), Col("list_cost_usd", "List USD", "usd"),
         Col("savings_usd", "Savings USD", "usd"), Col("savings_pct", "Savings", "pct")],
        rows, keys=("provider",),
        notes=["Priced requests only: cost_usd (negotiated prices, batch) against "
               "list_cost_usd (list prices) of the same calls."])


def _sampling(con: duckdb.DuckDBPyConnection, s: Slice, settings: Settings) -> Section | None:
    """Sampled traffic (sampling_ratio < 1): recorded against scaled-up cost, or None
    when every call was kept. Scaling is exact in Decimal: the ratio is read as the
    decimal it prints as."""
    sql = s.cte() + """
SELECT sampling_ratio, count(*) AS requests,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd
FROM c WHERE kind = 'llm' GROUP BY 1 ORDER BY sampling_ratio NULLS FIRST"""
    groups = _query(con, sql, s.params(settings))
    if not any(g["sampling_ratio"] is not None and 0 < g["sampling_ratio"] < 1
               for g in groups):
        return None
    rows = []
    exact = Fraction(0)
    for g in groups:
        ratio = g["sampling_ratio"]
        scale = (Fraction(repr(ratio)) if ratio is not None and 0 < ratio < 1
                 else Fraction(1))
        exact += Fraction(g["cost_usd"]) / scale
        rows.append({"sampling_ratio": ratio, "requests": g["requests"],
                     "cost_usd": g["cost_usd"],
                     "estimated_cost_usd": _round_money(Fraction(g["cost_usd"]) / scale),
                     "estimated_requests": float(g["requests"] / scale)})
    recorded = sum((r["cost_usd"] for r in rows), ZERO)
    est = _round_money(exact)
    sampled = sum(r["requests"] for r in rows if r["sampling_ratio"] is not None
                  and 0 < r["sampling_ratio"] < 1)
    total = sum(r["requests"] for r in rows)
    rows.append({"sampling_ratio": None, "requests": total, "cost_usd": recorded,
                 "estimated_cost_usd": est,
                 "estimated_requests": sum(r["estimated_requests"] for r in rows),
                 "total": True})
    warn = (f"Sampled traffic: {sampled:,} of {total:,} requests were recorded with "
            "sampling_ratio < 1, so every figure here is of the sampled traffic only "
            f"(recorded cost {_usd(recorded)} USD; scaled up, sum(cost / sampling_ratio) "
            f"= {_usd(est)} USD).")
    for r in rows:
        r["ratio"] = ("all" if r.pop("total", False)
                      else "unknown / 1" if r["sampling_ratio"] is None
                      else f"{r['sampling_ratio']:g}")
    return Section(
        "sampling", "Sampled traffic",
        [Col("ratio", "Sampling ratio"), Col("requests", "Recorded requests", "count"),
         Col("cost_usd", "Recorded USD", "usd"),
         Col("estimated_requests", "Estimated requests", "num"),
         Col("estimated_cost_usd", "Estimated USD", "usd")],
        rows, keys=("ratio",), notes=[warn])


# ------------------------------------------------------------------ comparisons


def parse_compare(text: str, period: Period | None = None,
                  now: dt.datetime | None = None, tenant: str | None = None
                  ) -> tuple[Slice, Slice]:
    """``A..B`` (:data:`COMPARE_HELP`) -> the two slices. Exactly one ``..`` splits
    the sides; the left side decides: ``COLUMN=VALUE`` is a variant comparison over
    ``period`` (required), anything else two periods (a calendar unit or START/END)."""
    if text.count("..") != 1:
        raise ReportError(f"--compare {text!r}: expected exactly one '..' between A and B")
    a, _, b = (x.strip() for x in text.partition(".."))
    if not a or not b:
        raise ReportError(f"--compare {text!r}: expected A..B")
    if "=" in a:
        col, _, va = (x.strip() for x in a.partition("="))
        col_b, sep, vb = (x.strip() for x in b.partition("="))
        if not sep:
            col_b, vb = col, b
        for c in (col, col_b):
            if c not in VARIANT_COLUMNS:
                raise ReportError(f"--compare: unknown column {c!r}; choose from "
                                  f"{', '.join(VARIANT_COLUMNS)}")
        if col != col_b:
            raise ReportError(f"--compare {text!r}: both sides must name the same column")
        if not va or not vb:
            raise ReportError(f"--compare {text!r}: a variant needs a value")
        if period is None:
            raise ReportError("--compare of variants needs a period (--since)")
        return (Slice(period, tenant, col, va, f"{col}={va}"),
                Slice(period, tenant, col, vb, f"{col}={vb}"))
    sides = []
    for side in (a, b):
        if "=" in side:
            raise ReportError(f"--compare {text!r}: do not mix a period and a variant")
        if rng := _split_range(side):
            p = Period(_unit(rng[0], now)[0], _unit(rng[1], now)[0], side)
        else:
            start, end = _unit(side, now)
            if end is None:
                raise ReportError(f"--compare: {side!r} is a point in time; give a day, "
                                  "week, month or START/END")
            p = Period(start, end, side)
        sides.append(Slice(p, tenant, label=side))
    return sides[0], sides[1]


_COMPARE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("requests", "Requests", "count"),
    ("cost_usd", "Token cost (USD)", "usd"),
    ("cost_per_request_usd", "Cost per request (USD)", "usd"),
    ("users", "Active users", "count"),
    ("cost_per_user_usd", "Cost per active user (USD)", "usd"),
    ("p95_ms", "P95 latency (ms)", "ms"),
    ("success_rate", "Success rate", "rate"),
    ("error_rate", "Error rate", "rate"),
    ("timeout_rate", "Timeout rate", "rate"),
    ("unpriced_share", "Unpriced share", "rate"),
)


def compare(con: duckdb.DuckDBPyConnection, settings: Settings, a: Slice, b: Slice,
            *, now: dt.datetime | None = None) -> Report:
    """Two slices (:func:`parse_compare`) side by side: unit costs (per request, per
    active user, per business unit), P95 latency and error rates, with B - A and the
    change relative to A. Token costs only: fixed costs are the same for both."""
    ta, tb = _totals(con, a, settings, fixed=False), _totals(con, b, settings, fixed=False)
    metrics = list(_COMPARE_METRICS)
    if a.in_agg and b.in_agg:
        metrics += [("fallback_rate", "Fallback rate", "rate"),
                    ("escalation_rate", "Escalation rate", "rate")]
    for side, t in ((a, ta), (b, tb)):
        sql = side.cte() + """
SELECT unit_type, count(DISTINCT [tenant, unit_id]) AS units,
       coalesce(sum(cost_usd), 0)::DECIMAL(38, 12) AS cost_usd
FROM c WHERE kind = 'llm' AND unit_type IS NOT NULL AND unit_id IS NOT NULL GROUP BY 1"""
        for u in _query(con, sql, side.params(settings)):
            t[f"units_{u['unit_type']}"] = u["units"]
            t[f"cost_per_{u['unit_type']}_usd"] = _div(u["cost_usd"], u["units"])
    types = sorted({k[len("units_"):] for k in (*ta, *tb) if k.startswith("units_")})
    for ut in types:
        metrics += [(f"units_{ut}", f"Units: {ut}", "count"),
                    (f"cost_per_{ut}_usd", f"Cost per {ut} (USD)", "usd")]
    rows = _metric_rows(metrics, ta, tb, ("a", "b"))
    warnings = []
    for side in (a, b):
        smp = _sampling(con, side, settings)
        if smp is not None:
            warnings.append(f"{side.label}: {smp.notes[0]}")
    start = min(a.period.start, b.period.start)
    if old := _retention_warning(settings, start, a.tenant, now):
        warnings.append(old)
    header = [("A", f"{a.label}: {a.period.describe()}"),
              ("B", f"{b.label}: {b.period.describe()}"),
              ("Tenant", a.tenant or "all")]
    notes = ["Difference is B - A (rates in percentage points); Change % is relative to A. "
             "Token costs only (fixed costs are not split by variant); per-unit cost is "
             "the cost of a side's requests that name a unit / the distinct units they "
             "name."]
    if not a.in_agg:
        notes.append("Fallback and escalation rates need the session's previous call and "
                     "are counted per model/team/service/use case only (agg_1m), so a "
                     f"{a.column} comparison leaves them out.")
    section = Section(
        "compare", f"{a.label} against {b.label}",
        [Col("label", "Metric"), Col("a", f"A: {a.label}", "auto"),
         Col("b", f"B: {b.label}", "auto"), Col("change", "Difference", "auto", signed=True),
         Col("change_pct", "Change %", "pct", signed=True)],
        rows, keys=("metric",), notes=notes)
    meta = {"kind": "compare", "tenant": a.tenant,
            "a": {"label": a.label, "period": _period_meta(a.period), "column": a.column,
                  "value": a.value},
            "b": {"label": b.label, "period": _period_meta(b.period), "column": b.column,
                  "value": b.value}}
    return Report(f"LLM spend comparison: {a.label} vs {b.label}", header, meta, [section],
                  warnings)


# ------------------------------------------------------------------ rendering


def _usd(d: Decimal) -> str:
    """Sensible rounding for people: cents from 1 USD, 4 places from a cent, else 6."""
    places = 2 if abs(d) >= 1 or d == 0 else 4 if abs(d) >= Decimal("0.01") else 6
    return f"{d.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP):,}"


def _cell(value: Any, kind: str, row: dict[str, Any], signed: bool = False) -> str:
    """One value as table/markdown text."""
    if kind == "auto":
        kind = row.get("unit", "text")
        if signed and kind == "rate":
            kind = "pp"
    if value is None:
        return "n/a"
    sign = "+" if signed and value > 0 else ""
    if kind == "usd":
        return sign + _usd(Decimal(value))
    if kind == "count":
        return f"{sign}{value:,}"
    if kind == "rate":
        return f"{sign}{value * 100:.2f}%"
    if kind == "pp":
        return f"{sign}{value * 100:.2f} pp"
    if kind == "pct":
        return f"{sign}{value:.1f}%"
    if kind == "ms":
        return f"{sign}{value:,.0f}"
    if kind in ("s", "num"):
        return f"{sign}{value:,.1f}"
    return str(value)


def _numeric(kind: str) -> bool:
    return kind != "text"


def _grid(s: Section) -> list[list[str]]:
    return [[_cell(r.get(c.name), c.kind, r, c.signed) for c in s.columns] for r in s.rows]


def render(report: Report, fmt: str = "table") -> str:
    """The report as ``table`` (aligned plain text), ``markdown``, ``csv`` (long format:
    one line per value, ``section,row,key,metric,value``, exact) or ``json`` (money as
    decimal strings, exact)."""
    if fmt == "table":
        return _render_table(report)
    if fmt == "markdown":
        return _render_markdown(report)
    if fmt == "csv":
        return _render_csv(report)
    if fmt == "json":
        return json.dumps(to_dict(report), indent=2) + "\n"
    raise ReportError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")


def _render_table(report: Report) -> str:
    out = [report.title, "=" * len(report.title)]
    out += [f"{k}: {v}" for k, v in report.header]
    for w in report.warnings:
        out.append(f"WARNING: {w}")
    for s in report.sections:
        out += ["", s.title, "-" * len(s.title)]
        grid = _grid(s)
        if not grid:
            out.append("(none)")
        else:
            widths = [max(len(c.label), *(len(g[i]) for g in grid))
                      for i, c in enumerate(s.columns)]
            out.append(_line([c.label for c in s.columns], widths, s.columns))
            out.append("  ".join("-" * w for w in widths))
            out += [_line(g, widths, s.columns) for g in grid]
        out += [f"  {n}" for n in s.notes]
    return "\n".join(out) + "\n"


def _line(cells: list[str], widths: list[int], cols: list[Col]) -> str:
    """One aligned line: numbers to the right, text to the left."""
    return "  ".join(cell.rjust(w) if _numeric(c.kind) else cell.ljust(w)
                     for cell, w, c in zip(cells, widths, cols, strict=True)).rstrip()


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _render_markdown(report: Report) -> str:
    out = [f"# {_md(report.title)}", ""]
    out += [f"- **{k}:** {_md(v)}" for k, v in report.header]
    for w in report.warnings:
        out += ["", f"> **Warning:** {_md(w)}"]
    for s in report.sections:
        out += ["", f"## {_md(s.title)}", ""]
        grid = _grid(s)
        if not grid:
            out.append("_None._")
        else:
            out.append("| " + " | ".join(_md(c.label) for c in s.columns) + " |")
            out.append("|" + "|".join("---:" if _numeric(c.kind) else ":---"
                                      for c in s.columns) + "|")
            out += ["| " + " | ".join(_md(x) for x in g) + " |" for g in grid]
        for n in s.notes:
            out += ["", f"_{_md(n)}_"]
    return "\n".join(out) + "\n"


def _exact(value: Any) -> Any:
    """A value for json/csv: money as its exact decimal string, times ISO 8601."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    return value


def to_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-able data: every row key (not only the displayed columns),
    Decimals as strings (``Decimal(s)`` gives them back exactly)."""
    return {
        "title": report.title, "meta": _exact(report.meta),
        "header": [{"label": k, "text": v} for k, v in report.header],
        "warnings": list(report.warnings),
        "sections": [{"key": s.key, "title": s.title, "keys": list(s.keys),
                      "columns": [{"name": c.name, "label": c.label, "kind": c.kind}
                                  for c in s.columns],
                      "rows": [_exact(r) for r in s.rows], "notes": list(s.notes)}
                     for s in report.sections],
    }


def _csv_value(value: Any) -> str:
    v = _exact(value)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def _render_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "row", "key", "metric", "value"])
    for k, v in _flat(report.meta):
        w.writerow(["report", 0, "", k, _csv_value(v)])
    for i, msg in enumerate(report.warnings):
        w.writerow(["warnings", i, "", "warning", msg])
    for s in report.sections:
        for i, r in enumerate(s.rows):
            key = "/".join(str(r.get(k)) for k in s.keys)
            for name, value in r.items():
                if name not in s.keys:
                    w.writerow([s.key, i, key, name, _csv_value(value)])
    return buf.getvalue()


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


__all__ = ["BY_CHOICES", "COMPARE_HELP", "FORMATS", "PERIOD_HELP", "VARIANT_COLUMNS", "Col",
           "Period", "Report", "ReportError", "Section", "Slice", "allocate_monthly",
           "compare", "kpis", "parse_compare", "parse_period", "prorate_budget", "render",
           "to_dict"]
