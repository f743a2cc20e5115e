"""CPU per stage step inside the worker (pipeline/stepclock.py): CPU of the step's own
thread, not wall time; exported and read back from ``/metrics``."""

from __future__ import annotations

import threading
import time

from pipeline import otlp, stepclock
from pipeline.config import load_settings
from pipeline.stepclock import StepClock, ThreadClock
from pipeline.stream.aggregate_stage import AggregateStage
from pipeline.stream.handoff import Handoff
from pipeline.stream.normalise_stage import NormaliseStage
from tests.unit.test_handoff import T0, _requests


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_step_counts_its_threads_cpu_not_waiting_nor_other_threads():
    clock = StepClock("stage")
    busy = threading.Thread(target=_spin, args=(0.3,))
    with clock.step("wait"):
        busy.start()
        time.sleep(0.2)                       # waiting while another thread burns CPU
        busy.join()
    with clock.step("work"):
        _spin(0.05)
    with clock.step("work"):
        _spin(0.05)
    assert clock.seconds["wait"] < 0.03
    assert 0.1 <= clock.seconds["work"] < 0.5
    assert clock.runs == {"wait": 1, "work": 2}


def test_a_step_that_raises_is_still_counted():
    clock = StepClock("stage")
    try:
        with clock.step("fails"):
            raise ValueError
    except ValueError:
        pass
    assert clock.runs["fails"] == 1


def test_rendered_clocks_parse_back_with_the_process_cpu():
    a, b = StepClock("normalise"), StepClock("lake")
    a.seconds.update({"decode": 1.25, "route": 0.5})
    b.seconds["write"] = 2.0
    lines = stepclock.render([a, b])
    assert f'{stepclock.METRIC}{{stage="normalise",step="decode"}} 1.250000' in lines
    steps, process = stepclock.parse("\n".join(["# other metric", "x_total 3", *lines]))
    assert steps == {("normalise", "decode"): 1.25, ("normalise", "route"): 0.5,
                     ("lake", "write"): 2.0}
    assert process is not None and process > 0


def test_the_stages_clock_their_steps(tmp_path):
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "k" * 32,
                                  "LLMSPEND_STATE_DIR": str(tmp_path)})
    norm, agg = NormaliseStage(settings, 6, Handoff()), AggregateStage(settings)
    offsets = [0] * 6
    for i, (tenant, req) in enumerate(_requests(300)):
        res = norm.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, i)
        for partition, body in res.outputs:
            agg.process(partition, offsets[partition], T0 // 10**6 + i, body, None)
            offsets[partition] += 1
    assert set(norm.clock.runs) == {"decode", "normalise", "route", "handoff"}
    assert norm.clock.runs["decode"] == i + 1
    assert set(agg.clock.runs) == {"parse", "fold"}
    assert agg.clock.runs["fold"] == sum(offsets)
    assert all(s > 0 for s in norm.clock.seconds.values())


def test_threads_are_clocked_by_name_and_an_ended_one_keeps_its_reading():
    clock = ThreadClock()
    done = threading.Event()

    def work() -> None:
        _spin(0.1)
        done.wait(30)

    pool = [threading.Thread(target=work, name=f"llmspend-pool_{i}") for i in range(2)]
    for t in pool:
        t.start()
    deadline = time.monotonic() + 30          # both spin 0.1 s of their own CPU
    while clock.seconds().get("llmspend-pool", 0.0) < 0.2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    during = clock.seconds()
    assert "MainThread" in during and not any(n.startswith("llmspend-pool_") for n in during)
    done.set()
    for t in pool:
        t.join()
    after = clock.seconds()
    assert after["llmspend-pool"] >= during["llmspend-pool"]   # counters never go down
    lines = stepclock.render([])
    assert stepclock.parse_threads("\n".join(lines))["MainThread"] > 0
