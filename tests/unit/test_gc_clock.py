"""The worker's garbage-collector tuning and its /metrics clock (pipeline/gc_clock.py)."""

from __future__ import annotations

import gc

import pytest

from pipeline import gc_clock


@pytest.fixture
def unfrozen():
    """Leave the interpreter's collector as the test found it."""
    yield
    gc.unfreeze()


def test_freeze_moves_what_is_alive_out_of_collections_and_keeps_thresholds(unfrozen):
    before = gc.get_threshold()
    frozen = gc_clock.freeze()
    assert frozen == gc.get_freeze_count() > 1000    # modules, functions, these tests
    assert gc.get_threshold() == before


def test_freeze_disabled_changes_nothing(unfrozen):
    assert gc_clock.freeze(False) == 0
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_after_freezing_is_still_collected(unfrozen):
    gc_clock.freeze()
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


def test_metrics_report_the_objects_frozen_without_counting_them_again(unfrozen, monkeypatch):
    """A scrape must not walk the permanent generation (about 0.1 s in a worker)."""
    frozen = gc_clock.freeze()
    monkeypatch.setattr(gc, "get_freeze_count", lambda: pytest.fail("counted again"))
    assert f"llmspend_gc_frozen_objects {frozen}" in list(gc_clock.GcClock().metrics())
