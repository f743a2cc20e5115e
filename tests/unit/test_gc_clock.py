"""The worker's garbage-collector tuning and its /metrics clock (pipeline/gc_clock.py)."""

from __future__ import annotations

import gc

import pytest

from pipeline import gc_clock


@pytest.fixture
def restored_gc():
    """Leave the interpreter's collector as the test found it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_freezes_what_is_alive_and_raises_only_the_young_threshold(restored_gc):
    before = gc.get_threshold()
    assert gc_clock.tune(12_345)
    assert gc.get_threshold() == (12_345, before[1], before[2])
    assert gc.get_freeze_count() > 1000        # modules, functions, this test's objects


def test_tune_zero_keeps_cpython_defaults(restored_gc):
    before = gc.get_threshold()
    assert not gc_clock.tune(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_cycle_is_still_collected_after_tuning(restored_gc):
    gc_clock.tune(50_000)
    clock = gc_clock.GcClock().start()
    try:
        a: list = []
        a.append(a)            # a reference cycle: only the collector frees it
        del a
        gc.collect()
    finally:
        clock.stop()
    assert clock.collections[2] == 1
    assert clock.collected[2] >= 1
    assert clock.seconds[2] >= 0.0


def test_clock_counts_each_generation_and_stops_counting_when_stopped():
    clock = gc_clock.GcClock().start()
    try:
        gc.collect(0)
        gc.collect(1)
    finally:
        clock.stop()
    gc.collect()
    assert clock.collections == [1, 1, 0]


def test_metrics_render_each_family_once_and_parse_back():
    clock = gc_clock.GcClock()
    clock.collections = [7, 2, 1]
    clock.seconds = [0.5, 0.25, 0.125]
    clock.collected = [3, 0, 9]
    lines = list(clock.metrics())
    types = [line for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types)) == 4
    assert 'llmspend_gc_collections_total{generation="2"} 1' in lines
    parsed = gc_clock.parse("\n".join(lines) + "\nllmspend_other_total 5\n")
    assert parsed == {"collections": [7.0, 2.0, 1.0], "seconds": [0.5, 0.25, 0.125],
                      "objects_collected": [3.0, 0.0, 9.0]}
