"""Distinct unit counts: exact when few, a close and bounded estimate when many, and
mergeable, so per-minute partials add up to a day without counting a unit twice."""

from __future__ import annotations

import orjson

from pipeline.distinct import SPACE, DistinctCount, unit_hash


def counted(values, k: int = 64) -> DistinctCount:
    c = DistinctCount(k)
    for v in values:
        c.add(unit_hash("ticket", v))
    return c


def test_a_count_is_exact_below_2k_and_repeats_never_count():
    c = counted([f"TCK-{i}" for i in range(127)] * 2)
    assert c.count() == 127 and c.exact


def test_many_units_give_a_close_estimate_in_bounded_memory():
    c = counted((f"DOC-{i}" for i in range(200_000)), k=1024)
    assert not c.exact and len(c.hashes) < 2 * 1024
    assert abs(c.count() - 200_000) / 200_000 < 0.10        # ~3 % standard error


def test_merging_per_minute_sets_counts_a_unit_seen_twice_once():
    minutes = [counted([f"TCK-{i}" for i in range(m * 50, m * 50 + 80)]) for m in range(4)]
    day = DistinctCount(64)
    for m in minutes:
        day.merge(m.sorted_hashes(), m.saturated)
    assert day.count() == counted([f"TCK-{i}" for i in range(230)]).count()


def test_merging_sketches_estimates_the_union():
    a = counted((f"U-{i}" for i in range(0, 60_000)), k=512)
    b = counted((f"U-{i}" for i in range(30_000, 90_000)), k=512)
    assert a.saturated and b.saturated
    union = DistinctCount(512)
    union.merge(a.sorted_hashes()[:512], True)
    union.merge(b.sorted_hashes()[:512], True)
    assert abs(union.count() - 90_000) / 90_000 < 0.15


def test_state_round_trips_and_hashes_fit_int64():
    c = counted((f"DOC-{i}" for i in range(5_000)), k=1024)
    back = DistinctCount.from_state(orjson.loads(orjson.dumps(c.to_state())))
    assert back.count() == c.count() and back.saturated == c.saturated
    back.add(unit_hash("ticket", "DOC-5"))                 # seen before: no change
    assert back.count() == c.count()
    assert all(0 <= h < SPACE <= 2**63 for h in c.hashes)
