"""Detectors on closed 1-minute windows (``llm_agg_1m``): spend anomalies and quality.

:class:`WindowDetector` folds aggregate partials (the ``group`` view) into per-minute
series and evaluates each minute once it is complete: when every source partition has
shown a later window, or ``settle_s`` of wall time after the minute's first partial
(late partials still join the series, for later baselines, but a minute is judged once).
Completeness is per tenant: each tenant's minutes are judged on its own clock, so one
tenant's live traffic (or a baseline re-read after a restart) never marks another
tenant's backfilled minutes as already judged. A tenant silent for ``idle_s`` of wall
time is judged on the wall clock (its quiet minutes count as 0, so its incidents
resolve).

**Spend anomaly**, per (tenant, service, team), on spend per minute (exact pico-USD):

* baseline: the previous ``baseline_minutes`` minutes (quiet minutes count as 0) since
  the key first appeared, minus minutes judged anomalous (the baseline does not learn
  the anomaly it is reporting); no verdict before ``warmup_minutes`` of baseline;
* centre: the median; scale: the larger of 1.4826 x MAD, (P90 - median) / 1.2816 and
  10 % of the median. The P90 term keeps bursty series (many quiet minutes, a few busy
  ones) from looking calm, which MAD alone would;
* a minute is *high* when spend - median >= ``floor`` (USD per minute: small amounts
  never page), spend >= ratio x median and (spend - median) / scale >= z, with
  (ratio, z) = (warn_ratio, warn_z) for warning and the critical pair for critical;
* it fires after ``sustain_minutes`` high minutes in a row (one busy minute is not an
  incident); while it fires the baseline is frozen, and it resolves after
  ``resolve_minutes`` minutes in a row under warn_ratio x median (or within the floor),
  or, if it stays high for a whole baseline, by accepting the new level (said so).

**Quality**, per (tenant, model), over the last ``quality_window_minutes``: error,
timeout, fallback and escalation shares of LLM calls. A rate fires when the lower end of
its 95 % Wilson interval is above the threshold (so 3 errors in 20 calls does not page)
and at least ``quality_min_calls`` calls were seen; it resolves like a spend anomaly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pipeline.alerts import Incident, parse_rfc3339_us
from pipeline.callbatch import pico
from pipeline.detect import usd
from schemas import aggregates as G
from schemas import alerts as A

MINUTE_MS = 60_000
QUALITY_FIELDS = ("llm_calls", "errors", "timeouts", "fallbacks", "escalations")
RATES = (("error_rate", "errors"), ("timeout_rate", "timeouts"),
         ("fallback_rate", "fallbacks"), ("escalation_rate", "escalations"))


@dataclass(frozen=True)
class WindowLimits:
    """Thresholds of the window detectors (``[detect]`` settings)."""

    baseline_minutes: int = 30
    warmup_minutes: int = 10
    warn_z: float = 4.0
    critical_z: float = 8.0
    warn_ratio: float = 1.5
    critical_ratio: float = 3.0
    floor_pico: int = 50_000_000_000           # 0.05 USD per minute
    sustain_minutes: int = 2
    resolve_minutes: int = 5
    quality_window_minutes: int = 5
    quality_min_calls: int = 50
    rates: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "error_rate": (0.10, 0.30), "timeout_rate": (0.05, 0.20),
        "fallback_rate": (0.10, 0.30), "escalation_rate": (0.40, 0.0)})
    settle_s: float = 5.0
    idle_s: float = 120.0

    @classmethod
    def from_settings(cls, d: Any) -> WindowLimits:
        return cls(baseline_minutes=d.spend_baseline_minutes,
                   warmup_minutes=d.spend_warmup_minutes, warn_z=d.spend_warn_z,
                   critical_z=d.spend_critical_z, warn_ratio=d.spend_warn_ratio,
                   critical_ratio=d.spend_critical_ratio,
                   floor_pico=pico(d.spend_floor_usd_per_min),
                   sustain_minutes=d.spend_sustain_minutes,
                   resolve_minutes=d.window_resolve_minutes,
                   quality_window_minutes=d.quality_window_minutes,
                   quality_min_calls=d.quality_min_calls,
                   rates={name: (getattr(d, f"{name}_warn"), getattr(d, f"{name}_critical"))
                          for name, _ in RATES},
                   settle_s=d.window_settle_s, idle_s=d.window_idle_s)


def _median(xs: list[int]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def robust_baseline(history: list[int]) -> tuple[float, float]:
    """(median, scale) of a spend history (module docstring)."""
    med = _median(history)
    mad = _median([abs(x - med) for x in history])
    s = sorted(history)
    p90 = s[int(0.9 * (len(s) - 1))]
    return med, max(1.4826 * mad, (p90 - med) / 1.2816, 0.1 * med, 1.0)


def spend_level(x: int, med: float, scale: float, lim: WindowLimits) -> str | None:
    """Severity of one minute's spend against its baseline."""
    if x - med < lim.floor_pico:
        return None
    z = (x - med) / scale
    ratio = x / med if med > 0 else math.inf
    if ratio >= lim.critical_ratio and z >= lim.critical_z:
        return A.CRITICAL
    if ratio >= lim.warn_ratio and z >= lim.warn_z:
        return A.WARNING
    return None


def wilson_low(k: int, n: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of k successes in n trials."""
    if n == 0:
        return 0.0
    p = k / n
    d = 1 + z * z / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / d


def rate_level(k: int, n: int, warn: float, critical: float, min_calls: int) -> str | None:
    if n < min_calls:
        return None
    low = wilson_low(k, n)
    if critical > 0 and low > critical:
        return A.CRITICAL
    if warn > 0 and low > warn:
        return A.WARNING
    return None


@dataclass
class _Key:
    """A key's per-minute series and detector memory."""

    first_minute: int
    values: dict[int, Any] = field(default_factory=dict)
    anomalous: set[int] = field(default_factory=set)
    pending: list[int] = field(default_factory=list)
    streak: int = 0
    calm: int = 0


@dataclass
class _Tenant:
    """One tenant's series and its own minute clock. A tenant's minutes are complete by
    its own partials, so another tenant's traffic (live, backfilled, or a baseline
    re-read after a restart) never judges them early nor skips them."""

    spend: dict[tuple, _Key] = field(default_factory=dict)
    quality: dict[tuple, _Key] = field(default_factory=dict)
    rates: dict[tuple, _Key] = field(default_factory=dict)     # (model, rate) streaks
    partition_max: dict[int, int] = field(default_factory=dict)  # partition -> minute
    first_arrival: dict[int, int] = field(default_factory=dict)  # minute -> wall ms
    #: agg_id -> what it added (minute, keys, cost, counts), to replace re-emissions.
    partials: dict[str, tuple] = field(default_factory=dict)
    evaluated_through: int = -1
    last_wall_ms: int = 0


class WindowDetector:
    """Spend-anomaly and quality detectors over every ``llm_agg_1m`` partial."""

    def __init__(self, limits: WindowLimits | None = None) -> None:
        self.limits = limits or WindowLimits()
        self.tenants: dict[str, _Tenant] = {}
        self.incidents: dict[str, Incident] = {}
        self.stats: dict[str, int] = defaultdict(int)

    def judged_through(self, tenant: str) -> int:
        """The last minute (epoch ms) judged for a tenant; -1 before any."""
        t = self.tenants.get(tenant)
        return -1 if t is None else t.evaluated_through

    # ------------------------------------------------------------------ input

    def add(self, partials: list[dict[str, Any]], wall_ms: int,
            judge: bool = True) -> list[dict[str, Any]]:
        """Fold partials in; the alert records of every minute this completes (none
        when ``judge`` is false: a restart re-reading its baseline)."""
        for p in partials:
            if p.get("view") != G.VIEW_GROUP:
                continue
            minute = parse_rfc3339_us(p["window_start"]) // 1000
            tenant = p.get("tenant") or ""
            t = self.tenants.get(tenant)
            if t is None:
                t = self.tenants[tenant] = _Tenant()
            if minute <= t.evaluated_through and not p.get("late"):
                self.stats["partials_after_verdict"] += 1
            sk = (tenant, p.get("service") or "", p.get("team") or "")
            qk = (tenant, p.get("model") or "")
            cost = pico(p.get("cost_usd"))
            nums = [int(p.get(name) or 0) for name in QUALITY_FIELDS]
            # A re-emitted partial (same agg_id) REPLACES its predecessor: take the
            # predecessor out before adding it, or stragglers would count twice.
            old = t.partials.get(p.get("agg_id", ""))
            if old is not None:
                self.stats["partials_replaced"] += 1
                self._fold(t, *old, sign=-1)
            self._fold(t, minute, sk, qk, cost, nums)
            if p.get("agg_id"):
                t.partials[p["agg_id"]] = (minute, sk, qk, cost, nums)
            part = int(p.get("source_partition", -1))
            t.partition_max[part] = max(t.partition_max.get(part, minute), minute)
            t.first_arrival.setdefault(minute, wall_ms)
            t.last_wall_ms = max(t.last_wall_ms, wall_ms)
            self.stats["partials"] += 1
        return self.tick(wall_ms) if judge else []

    @staticmethod
    def _fold(t: _Tenant, minute: int, sk: tuple, qk: tuple, cost: int, nums: list[int],
              sign: int = 1) -> None:
        k = t.spend.setdefault(sk, _Key(minute))
        k.first_minute = min(k.first_minute, minute)
        k.values[minute] = k.values.get(minute, 0) + sign * cost
        q = t.quality.setdefault(qk, _Key(minute))
        counts = q.values.setdefault(minute, [0] * len(QUALITY_FIELDS))
        for i, n in enumerate(nums):
            counts[i] += sign * n

    def skip_judged(self) -> None:
        """After re-reading a baseline: every minute seen but a tenant's last counts as
        judged (it was, before the restart), so nothing re-fires."""
        for t in self.tenants.values():
            if t.first_arrival:
                t.evaluated_through = max(t.evaluated_through,
                                          max(t.first_arrival) - MINUTE_MS)

    def tick(self, wall_ms: int) -> list[dict[str, Any]]:
        """Judge every minute that is now complete (also called by a timer).

        A tenant's minute is complete once every source partition that carried the
        tenant has shown a later minute of it, or ``settle_s`` of wall time after the
        minute's first partial. A tenant that sent nothing for ``idle_s`` of wall time
        is judged on the wall clock: its quiet minutes count as 0, so its incidents
        still resolve and its memory is freed."""
        out: list[dict[str, Any]] = []
        settle = int(self.limits.settle_s * 1000)
        for name, t in list(self.tenants.items()):
            complete_before = min(t.partition_max.values(), default=-1)
            for minute in sorted(m for m in t.first_arrival if m > t.evaluated_through):
                if not (minute < complete_before
                        or wall_ms - t.first_arrival[minute] >= settle):
                    break
                out += self.evaluate(name, minute)
                t.evaluated_through = minute
            if wall_ms - t.last_wall_ms >= self.limits.idle_s * 1000 \
                    and t.evaluated_through >= 0 \
                    and not any(m > t.evaluated_through for m in t.first_arrival):
                idle_through = (wall_ms - int(self.limits.idle_s * 1000)) // MINUTE_MS \
                    * MINUTE_MS - MINUTE_MS
                # Only the minutes any baseline or window still reads can change a
                # verdict; past those, judging more quiet minutes changes nothing.
                keep = self._keep_minutes() + self.limits.resolve_minutes + 1
                start = max(t.evaluated_through + MINUTE_MS,
                            idle_through - keep * MINUTE_MS)
                for minute in range(start, idle_through + 1, MINUTE_MS):
                    out += self.evaluate(name, minute)
                    t.evaluated_through = minute
            horizon = t.evaluated_through - (self.limits.baseline_minutes + 2) * MINUTE_MS
            for m in [m for m in t.first_arrival if m < horizon]:
                del t.first_arrival[m]
            for agg_id in [a for a, v in t.partials.items() if v[0] < horizon]:
                del t.partials[agg_id]
            if not (t.spend or t.quality or t.first_arrival):
                del self.tenants[name]     # nothing left to judge: memory freed
        return out

    def _keep_minutes(self) -> int:
        return max(self.limits.baseline_minutes, self.limits.quality_window_minutes) + 1

    # ------------------------------------------------------------------ verdicts

    def evaluate(self, tenant: str, minute: int) -> list[dict[str, Any]]:
        """The alert records of one complete minute of one tenant."""
        t = self.tenants[tenant]
        self.stats["minutes_judged"] += 1
        out = [r for key, k in list(t.spend.items())
               if (r := self._spend(t, key, k, minute)) is not None]
        out += [r for key, q in list(t.quality.items())
                for r in self._quality(t, key, q, minute)]
        return out

    def _spend(self, t: _Tenant, key: tuple, k: _Key, minute: int
               ) -> dict[str, Any] | None:
        lim = self.limits
        start = max(k.first_minute, minute - lim.baseline_minutes * MINUTE_MS)
        history = [k.values.get(m, 0) for m in range(start, minute, MINUTE_MS)
                   if m not in k.anomalous]
        x = k.values.get(minute, 0)
        tenant, service, team = key
        dk = A.dedup_key("spend_anomaly", tenant, service, team)
        inc = self.incidents.get(dk)
        self._forget(k, minute)
        if not k.values and not (inc and inc.firing):
            del t.spend[key]
            return None
        if len(history) < lim.warmup_minutes:
            if inc is not None and inc.firing:
                # Elevated for a whole baseline: that is the new normal; say so once.
                k.anomalous.clear()
                k.calm = k.streak = 0
                return inc.resolve(f"Spend of {service} ({team or 'no team'}, tenant "
                                   f"{tenant}) stayed at about {usd(x)} USD/min for "
                                   f"{lim.baseline_minutes} minutes: accepted as its new "
                                   f"baseline; resolved.", minute * 1000)
            return None
        med, scale = robust_baseline(history)
        level = spend_level(x, med, scale, lim)
        firing = inc is not None and inc.firing
        if not firing:
            k.streak = k.streak + 1 if level else 0
            k.pending = [*k.pending, minute] if level else []
            if not level or k.streak < lim.sustain_minutes:
                return None
            k.anomalous.update(k.pending)   # the baseline never learns the incident
            k.pending, k.calm = [], 0
        else:
            k.anomalous.add(minute)
            high = x - med >= lim.floor_pico and x >= lim.warn_ratio * med
            k.calm = 0 if high else k.calm + 1
            if k.calm >= lim.resolve_minutes:
                k.calm = k.streak = 0
                return inc.resolve(f"Spend of {service} ({team or 'no team'}, tenant "
                                   f"{tenant}) is back to {usd(x)} USD/min (baseline "
                                   f"{usd(int(med))}); resolved.", minute * 1000)
            if not level:
                return None
        if inc is None:
            inc = self.incidents[dk] = Incident(dk, "service", service, tenant)
        ratio = x / med if med > 0 else None
        ev = {"service": service, "team": team or None, "window_start": _iso(minute),
              "cost_usd_per_min": usd(x), "baseline_median_usd_per_min": usd(int(med)),
              "baseline_scale_usd_per_min": usd(int(scale)),
              "ratio": None if ratio is None else round(ratio, 2),
              "z": round((x - med) / scale, 1), "baseline_minutes": len(history),
              "excess_usd_per_min": usd(int(x - med))}
        summary = (f"Spend of {service} ({team or 'no team'}, tenant {tenant}) is "
                   f"{usd(x)} USD/min, {ev['ratio'] or 'inf'}x its baseline of "
                   f"{usd(int(med))} USD/min.")
        return inc.observe(level, "spend_anomaly", summary, ev, minute * 1000)

    def _quality(self, t: _Tenant, key: tuple, q: _Key, minute: int
                 ) -> list[dict[str, Any]]:
        lim = self.limits
        window = range(minute - (lim.quality_window_minutes - 1) * MINUTE_MS,
                       minute + 1, MINUTE_MS)
        sums = [0, 0, 0, 0, 0]
        for m in window:
            for i, v in enumerate(q.values.get(m, ())):
                sums[i] += v
        tenant, model = key
        self._forget(q, minute)
        out = []
        for i, (name, field_name) in enumerate(RATES, start=1):
            warn, crit = lim.rates[name]
            level = rate_level(sums[i], sums[0], warn, crit, lim.quality_min_calls)
            dk = A.dedup_key(name, tenant, model)
            inc = self.incidents.get(dk)
            firing = inc is not None and inc.firing
            st = t.rates.setdefault((model, name), _Key(minute))
            if level:
                st.calm = 0
                if inc is None:
                    inc = self.incidents[dk] = Incident(dk, "model", model, tenant)
                share = sums[i] / sums[0]
                ev = {"model": model, field_name: sums[i], "llm_calls": sums[0],
                      "rate": round(share, 4), "wilson_low": round(wilson_low(
                          sums[i], sums[0]), 4), "threshold": crit if level == A.CRITICAL
                      else warn, "window_minutes": lim.quality_window_minutes,
                      "window_end": _iso(minute + MINUTE_MS)}
                summary = (f"{model} (tenant {tenant}): {share:.0%} of {sums[0]} LLM calls "
                           f"in the last {lim.quality_window_minutes} min were "
                           f"{field_name}, above {ev['threshold']:.0%}.")
                rec = inc.observe(level, name, summary, ev, (minute + MINUTE_MS) * 1000)
                if rec is not None:
                    out.append(rec)
            elif firing:
                st.calm += 1
                if st.calm >= lim.resolve_minutes:
                    st.calm = 0
                    rec = inc.resolve(f"{model} (tenant {tenant}): {field_name} back under "
                                      f"{warn:.0%}; resolved.", (minute + MINUTE_MS) * 1000)
                    if rec is not None:
                        out.append(rec)
        if not q.values and not any(
                (i := self.incidents.get(A.dedup_key(n, tenant, model))) and i.firing
                for n, _ in RATES):
            del t.quality[key]
            for n, _ in RATES:
                t.rates.pop((model, n), None)
        return out

    def _forget(self, k: _Key, minute: int) -> None:
        """Drop minutes older than any baseline or quality window still needs."""
        old = minute - self._keep_minutes() * MINUTE_MS
        for m in [m for m in k.values if m < old]:
            del k.values[m]
        k.anomalous = {m for m in k.anomalous if m >= old}

    def restore(self, incidents: dict[str, Incident]) -> None:
        """Take the incidents recovered from ``llm_alerts`` (restart)."""
        for dk, inc in incidents.items():
            if inc.detector in ("spend_anomaly", *(n for n, _ in RATES)):
                self.incidents[dk] = inc


def _iso(minute_ms: int) -> str:
    return G.rfc3339_ms(minute_ms)
