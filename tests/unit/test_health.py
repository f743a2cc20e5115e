"""Pipeline health (pipeline/health.py): a stalled or falling-behind worker alerts once,
resolves once, and an idle pipeline stays quiet."""

from __future__ import annotations

import orjson

from pipeline.config import Settings
from pipeline.health import MAX_SAMPLES, HealthMonitor
from schemas import alerts as A

T0 = 1_772_442_000.0  # 2026-03-02 09:00 UTC
STEP = 15.0


def monitor(**kw) -> HealthMonitor:
    args = {"stall_s": 300.0, "lag_window_s": 300.0, "lag_floor": 1000, **kw}
    return HealthMonitor("llmspend", **args)


def feed(m: HealthMonitor, samples) -> list[dict]:
    """Feed (end, committed) pairs, one every STEP seconds from T0; every record."""
    out: list[dict] = []
    for i, (end, committed) in enumerate(samples):
        out += m.observe(T0 + i * STEP, end, committed)
    return out


def assert_valid(records: list[dict]) -> None:
    for r in records:
        assert A.validate(r) == [], r
        assert orjson.loads(orjson.dumps(r)) == r


def test_steady_progress_is_quiet():
    m = monitor()
    out = feed(m, [(100 * i + 50, 100 * i) for i in range(100)])
    assert out == []


def test_no_traffic_is_quiet_even_without_commits():
    assert feed(monitor(), [(500, 400)] * 100) == []
    assert feed(monitor(), [(500, None)] * 100) == []


def test_stalled_fires_once_then_resolves_when_commits_move():
    m = monitor()
    # 300 s = 20 steps: spans keep arriving, the committed offsets stay at 1000.
    samples = [(1000 + 10 * i, 1000) for i in range(40)]
    out = feed(m, samples)
    assert len(out) == 1
    r = out[0]
    assert (r[A.DETECTOR], r[A.SEVERITY], r[A.STATE]) == ("pipeline_stalled", A.CRITICAL,
                                                          A.FIRING)
    assert (r[A.SUBJECT_KIND], r[A.SUBJECT], r[A.TENANT]) == ("pipeline", "llmspend", "*")
    assert r[A.DEDUP_KEY] == A.dedup_key("pipeline", "*", "llmspend", "stalled")
    ev = r[A.EVIDENCE]
    assert ev["end_offsets_total"] == 1200 and ev["committed_total"] == 1000
    assert ev["lag"] == 200 and ev["seconds_without_progress"] >= 300
    assert "stalled" in r[A.SUMMARY]
    # It fired at the first sample whose history spans stall_s (step 20 = 300 s).
    assert r[A.FIRST_SEEN].startswith("2026-03-02T09:05:00")
    # The worker commits again: exactly one resolved record.
    more = m.observe(T0 + 40 * STEP, 1400, 1300)
    assert [(x[A.DETECTOR], x[A.STATE]) for x in more] == [("pipeline_stalled",
                                                            A.RESOLVED)]
    assert more[0][A.ID] != r[A.ID]
    assert m.observe(T0 + 41 * STEP, 1410, 1410) == []
    assert_valid([r, *more])


def test_group_that_never_committed_stalls():
    m = monitor()
    out = feed(m, [(10 * i, None) for i in range(30)])
    assert [(x[A.DETECTOR], x[A.STATE]) for x in out] == [("pipeline_stalled", A.FIRING)]
    assert out[0][A.EVIDENCE]["committed_total"] is None
    # First commit ever: the stall resolves.
    out = m.observe(T0 + 30 * STEP, 300, 290)
    assert [(x[A.DETECTOR], x[A.STATE]) for x in out] == [("pipeline_stalled", A.RESOLVED)]
    assert_valid(out)


def test_short_stall_is_quiet():
    """Commits pausing for less than stall_s (a rebalance, a slow batch) say nothing."""
    samples = []
    committed = 0
    for i in range(100):
        if i % 15 == 0:  # one commit every 225 s
            committed = 10 * i
        samples.append((10 * i + 5, committed))
    assert feed(monitor(), samples) == []


def test_lag_growing_above_floor_warns_once_then_resolves():
    m = monitor()
    # The worker progresses but slower than arrivals: lag +100 per step from 800.
    samples = [(10_000 + 300 * i, 9_200 + 200 * i) for i in range(40)]
    out = feed(m, samples)
    assert len(out) == 1
    r = out[0]
    assert (r[A.DETECTOR], r[A.SEVERITY], r[A.STATE]) == ("pipeline_lag", A.WARNING,
                                                          A.FIRING)
    assert r[A.DEDUP_KEY] == A.dedup_key("pipeline", "*", "llmspend", "lag")
    assert r[A.EVIDENCE]["lag"] >= 1000
    assert r[A.EVIDENCE]["lag"] > r[A.EVIDENCE]["lag_at_window_start"]
    # Catching up: the lag shrinks, one resolved record.
    more = m.observe(T0 + 40 * STEP, 10_000 + 300 * 40, 9_200 + 200 * 40 + 1000)
    assert [(x[A.DETECTOR], x[A.STATE]) for x in more] == [("pipeline_lag", A.RESOLVED)]
    assert_valid([r, *more])


def test_lag_growing_below_floor_is_quiet():
    samples = [(10_000 + 12 * i, 10_000 + 10 * i) for i in range(100)]  # ends at 198
    assert feed(monitor(), samples) == []


def test_lag_that_dips_inside_the_window_is_quiet():
    samples = []
    for i in range(60):
        lag = 2000 + 50 * i - (300 if i % 10 == 9 else 0)
        samples.append((100_000 + 500 * i, 100_000 + 500 * i - lag))
    assert feed(monitor(), samples) == []


def test_stalled_pipeline_does_not_also_open_lag():
    m = monitor(lag_floor=10)
    out = feed(m, [(1000 + 100 * i, 1000) for i in range(40)])
    assert [x[A.DETECTOR] for x in out] == ["pipeline_stalled"]


def test_restore_keeps_incident_across_restart():
    m = monitor()
    fired = feed(m, [(1000 + 10 * i, 1000) for i in range(25)])
    assert len(fired) == 1
    # A new ingest process reads the alert log back: no second firing record, and the
    # first commit it sees resolves the incident it inherited.
    m2 = monitor()
    m2.restore([*fired, {"dedup_key": "someone/else"}])
    t = T0 + 100 * STEP
    out = [*m2.observe(t, 2000, 1000)]
    out += [x for i in range(1, 25) for x in m2.observe(t + i * STEP, 2000 + i, 1000)]
    assert out == []
    out = m2.observe(t + 25 * STEP, 2100, 2000)
    assert [(x[A.DETECTOR], x[A.STATE]) for x in out] == [("pipeline_stalled", A.RESOLVED)]


def test_samples_are_bounded():
    m = monitor()
    feed(m, [(100 * i + 50, 100 * i) for i in range(500)])
    assert len(m.samples) <= 300 / STEP + 2
    m = monitor(max_samples=50)
    for i in range(200):  # far more samples than the cap within one window
        m.observe(T0 + i * 0.01, 60_000, 50_000)
    assert len(m.samples) == 50
    assert MAX_SAMPLES * STEP > 3600  # the default cap holds an hour of checks


def test_from_settings_uses_the_worker_group():
    m = HealthMonitor.from_settings(Settings())
    assert m.group == Settings().stream.app_id
    assert (m.stall_s, m.lag_window_s, m.lag_floor) == (300.0, 300.0, 1000)
