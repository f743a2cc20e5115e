"""Window detectors (pipeline/anomaly.py): spend anomalies on a robust baseline and
quality rates with a Wilson bound, judged once per complete minute."""

from __future__ import annotations

import random
from decimal import Decimal

from pipeline.anomaly import MINUTE_MS, WindowDetector, WindowLimits, rate_level, wilson_low
from schemas import alerts as A
from schemas.aggregates import rfc3339_ms as _rfc3339

M0 = 1_772_440_000_000 // MINUTE_MS * MINUTE_MS


def partial(minute: int, cost: float, *, service: str = "svc", llm_calls: int = 100,
            errors: int = 0, part: int = 0, model: str = "gpt-4o") -> dict:
    return {"view": "group", "tenant": "acme", "service": service, "team": "t",
            "model": model, "window_start": _rfc3339(M0 + minute * MINUTE_MS),
            "source_partition": part, "late": False,
            "cost_usd": str(Decimal(str(round(cost, 6)))), "llm_calls": llm_calls,
            "errors": errors, "timeouts": 0, "fallbacks": 0, "escalations": 0}


def run(series: list[float], **kw) -> list[dict]:
    det = WindowDetector(WindowLimits(**kw))
    alerts = []
    for m, cost in enumerate(series):
        alerts += det.add([partial(m, cost)], 0)
    return alerts + det.tick(10 ** 12)


def noisy(n: int, level: float, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [level * rng.uniform(0.85, 1.15) for _ in range(n)]


def test_a_sustained_step_is_one_incident_that_stays_open_while_high():
    alerts = run(noisy(20, 1.0) + noisy(10, 3.5, seed=2))
    assert {a["dedup_key"] for a in alerts} == {"spend_anomaly/acme/svc/t"}
    assert [a["state"] for a in alerts] == ["firing"] * len(alerts)
    assert alerts[0]["evidence"]["ratio"] >= 1.5 and A.validate(alerts[0]) == []


def test_it_resolves_once_spend_is_back_and_the_baseline_never_learned_it():
    alerts = run(noisy(20, 1.0) + noisy(8, 3.5, seed=2) + noisy(10, 1.0, seed=3))
    assert [a["state"] for a in alerts][-1] == "resolved"
    assert sum(a["state"] == "resolved" for a in alerts) == 1


def test_one_busy_minute_a_slow_ramp_and_small_amounts_do_not_page():
    spike = noisy(20, 1.0)
    spike[15] = 5.0
    assert run(spike) == []
    ramp = [1.0 + 0.03 * m for m in range(40)]           # +3 % a minute
    assert run(ramp) == []
    tiny = noisy(20, 0.001) + noisy(10, 0.01, seed=2)   # 10x, but cents per minute
    assert run(tiny) == []


def test_no_verdict_during_warm_up():
    assert run([*noisy(5, 1.0), 10.0, 10.0, 10.0]) == []


def test_a_minute_waits_for_every_partition_or_the_settle_time():
    det = WindowDetector(WindowLimits(settle_s=5))
    det.add([partial(0, 1.0, part=0), partial(0, 1.0, part=1)], 0)
    det.add([partial(1, 1.0, part=0)], 1000)
    assert det.judged_through("acme") == -1   # partition 1 has not moved past minute 0
    det.add([partial(1, 1.0, part=1)], 2000)
    assert det.judged_through("acme") == M0
    det.tick(7000)                            # minute 1 settles by wall time
    assert det.judged_through("acme") == M0 + MINUTE_MS


def test_error_rate_uses_a_wilson_bound_and_a_minimum_of_calls():
    assert rate_level(3, 20, 0.10, 0.30, 50) is None           # too few calls
    assert rate_level(12, 100, 0.10, 0.30, 50) is None         # 12 %: bound under 10 %
    assert rate_level(30, 100, 0.10, 0.30, 50) == A.WARNING      # bound 0.22
    assert rate_level(60, 100, 0.10, 0.30, 50) == A.CRITICAL
    assert 0 < wilson_low(10, 100) < 0.10
    det = WindowDetector()
    alerts = []
    for m in range(8):
        alerts += det.add([partial(m, 1.0, errors=45 if m >= 3 else 1)], 0)
    alerts += det.tick(10 ** 12)
    err = [a for a in alerts if a["detector"] == "error_rate"]
    assert err and {a["dedup_key"] for a in err} == {"error_rate/acme/gpt-4o"}
    assert err[0]["subject_kind"] == "model" and A.validate(err[0]) == []


def test_a_re_emitted_partial_replaces_its_predecessor():
    det = WindowDetector()
    first = {**partial(0, 1.0), "agg_id": "a"}
    again = {**partial(0, 1.5), "agg_id": "a"}       # the same partial, with a straggler
    det.add([first, {**partial(0, 2.0), "agg_id": "b"}, again], 0, judge=False)
    assert det.tenants["acme"].spend[("acme", "svc", "t")].values[M0] == 3_500_000_000_000
    assert det.tenants["acme"].quality[("acme", "gpt-4o")].values[M0][0] == 200


def of(tenant: str, p: dict) -> dict:
    return {**p, "tenant": tenant}


def test_a_backfilling_tenant_is_judged_on_its_own_clock():
    """Another tenant's later minutes (here: a baseline re-read after a restart) neither
    skip nor hurry a tenant that sends the last 40 minutes at once."""
    det = WindowDetector()
    det.add([of("live", partial(m, 1.0)) for m in range(41)], 0, judge=False)
    det.skip_judged()
    assert det.judged_through("live") == M0 + 39 * MINUTE_MS
    alerts = []
    for m, cost in enumerate(noisy(20, 1.0) + noisy(20, 3.5, seed=2)):
        alerts += det.add([partial(m, cost)], 1000)
    alerts += det.tick(10 ** 12)
    assert {a["dedup_key"] for a in alerts} == {"spend_anomaly/acme/svc/t"}
    assert det.stats["partials_after_verdict"] == 0
    assert det.stats["minutes_judged"] >= 39


def test_partitions_of_one_tenant_do_not_complete_another_tenants_minute():
    det = WindowDetector(WindowLimits(settle_s=5))
    det.add([of("a", partial(0, 1.0, part=0)), of("a", partial(0, 1.0, part=1)),
             of("b", partial(0, 1.0, part=0))], 0)
    det.add([of("a", partial(1, 1.0, part=0)), of("b", partial(1, 1.0, part=0))], 1000)
    assert det.judged_through("a") == -1      # a's partition 1 is still at minute 0
    assert det.judged_through("b") == M0      # b only ever came from partition 0


def test_a_tenant_that_goes_silent_resolves_on_the_wall_clock_and_is_forgotten():
    lim = WindowLimits(idle_s=120)
    det = WindowDetector(lim)
    series = noisy(20, 1.0) + noisy(5, 3.5, seed=2)
    alerts = []
    wall = M0 + MINUTE_MS + 40_000             # partials land 40 s after their minute
    for m, cost in enumerate(series):
        alerts += det.add([partial(m, cost)], wall + m * MINUTE_MS)
    assert alerts and alerts[-1]["state"] == "firing"
    last = wall + (len(series) - 1) * MINUTE_MS
    assert det.tick(last + 119_000) == []      # not idle yet
    quiet = det.tick(last + 121_000 + 10 * MINUTE_MS)
    assert [a["state"] for a in quiet] == ["resolved"]
    det.tick(last + 121_000 + 60 * MINUTE_MS)
    assert "acme" not in det.tenants           # nothing left to judge: memory freed
