"""Partitions read as one stream in timestamp order (pipeline/timealign.py), and what it
changes for the window detectors when one partition's backlog is fetched first."""

from __future__ import annotations

import random

from pipeline.anomaly import WindowDetector
from pipeline.timealign import TimeAligner
from tests.unit.test_anomaly import noisy, partial


def test_a_partition_behind_holds_back_what_the_others_wrote_after_its_last_record():
    al = TimeAligner()
    al.offer(0, [(100, "a0"), (200, "a1"), (300, "a2")])
    al.offer(1, [(150, "b0")])
    out, clock = al.release(1000, {0: 900, 1: None})     # 1 is behind, read to 150
    assert (out, clock) == (["a0", "b0"], 150)
    al.offer(1, [(250, "b1"), (400, "b2")])
    out, clock = al.release(1000, {0: 900, 1: 950})      # 1 caught up
    assert (out, clock) == (["a1", "b1", "a2", "b2"], 900)


def test_a_partition_behind_with_nothing_read_yet_holds_everything():
    al = TimeAligner()
    al.offer(0, [(100, "a0")])
    assert al.release(1000, {0: 900, 1: None}) == ([], 0)
    assert len(al) == 1


def test_the_clock_never_goes_back_and_everything_flushes_on_request():
    al = TimeAligner()
    al.offer(0, [(500, "a")])
    assert al.release(1000, {0: 800}) == (["a"], 800)
    al.offer(1, [(100, "late")])                          # older than the clock: now
    assert al.release(1000, {0: 800, 1: None}) == (["late"], 800)
    al.offer(1, [(5000, "future")])
    assert al.release(1000, {0: 900, 1: 900}, everything=True) == (["future"], 5000)


def test_too_much_held_is_released_rather_than_grown_without_bound():
    al = TimeAligner(max_held=3)
    al.offer(0, [(t, t) for t in range(100, 105)])
    out, _ = al.release(1000, {0: None, 1: None})
    assert out == [100, 101, 102, 103, 104] and al.stats["overflows"] == 1


def test_a_backlog_fetched_partition_by_partition_is_judged_as_if_read_live():
    """Two llm_agg_1m partitions: one holds the service that jumps at minute 20, the
    other a steady one. Fetched one whole backlog after the other, straight into the
    detector, the jump's minutes were judged before their partials were read; through
    the aligner the detector sees what it would have seen live."""
    rng = random.Random(7)
    jump = noisy(20, 1.0) + noisy(20, 3.5, seed=2)
    steady = [rng.uniform(0.9, 1.1) for _ in range(40)]
    # Written a second apart per minute; source partition 0 and 1 both feed each key.
    logs = {0: [], 1: []}
    for m in range(40):
        for src in (0, 1):
            logs[0].append((m * 1000, partial(m, steady[m] / 2, service="steady",
                                              part=src)))
            logs[1].append((m * 1000 + 10, partial(m, jump[m] / 2, service="jumpy",
                                                   part=src)))

    def run(aligned: bool) -> set[str]:
        det, al, alerts = WindowDetector(), TimeAligner(), []
        for p in (0, 1):                        # the whole backlog of 0, then of 1
            if aligned:
                al.offer(p, logs[p])
                polled = {0: 60_000, 1: 60_000 if p == 1 else None}
                out, clock = al.release(60_000, polled)
                alerts += det.add(out, clock)
            else:
                alerts += det.add([v for _, v in logs[p]], 60_000)
        alerts += det.tick(10 ** 9)
        return {a["dedup_key"] for a in alerts if a["state"] == "firing"}

    assert run(aligned=False) == set()          # the bug: the jump was never judged
    assert run(aligned=True) == {"spend_anomaly/acme/jumpy/t"}
