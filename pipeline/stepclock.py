"""CPU seconds per step of each stream stage, measured inside the running worker.

Benchmarks time a stage alone; what a step costs among the other stages, the Kafka
clients and the event loop is another figure, and the one that decides throughput.
Each stage keeps a :class:`StepClock`; the worker's ``/metrics`` exports them as
``llmspend_stage_cpu_seconds_total{stage, step}`` next to the process's own CPU, so an
operator (or ``bench/bench_e2e.py``) reads where the worker's CPU goes without a
profiler. ``time.thread_time`` counts the CPU of the thread that runs the step only:
another thread holding the GIL meanwhile does not inflate it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

METRIC = "llmspend_stage_cpu_seconds_total"
PROCESS_METRIC = "llmspend_process_cpu_seconds_total"


class StepClock:
    """CPU seconds and runs per named step of one stage (one thread per clock)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.seconds: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.thread_time()
        try:
            yield
        finally:
            self.seconds[name] += time.thread_time() - t
            self.runs[name] += 1


def render(clocks: Iterable[StepClock]) -> list[str]:
    """Prometheus lines of the clocks, and the process's CPU to compare them with."""
    out = [f"# TYPE {METRIC} counter"]
    for c in clocks:
        for name in sorted(c.seconds):
            out.append(f'{METRIC}{{stage="{c.stage}",step="{name}"}} {c.seconds[name]:.6f}')
    out += [f"# TYPE {PROCESS_METRIC} counter",
            f"{PROCESS_METRIC} {time.process_time():.6f}"]
    return out


def parse(text: str) -> tuple[dict[tuple[str, str], float], float | None]:
    """(seconds by (stage, step), process seconds) from a ``/metrics`` page."""
    steps: dict[tuple[str, str], float] = {}
    process = None
    for line in text.splitlines():
        if line.startswith(METRIC + "{"):
            labels, _, value = line[len(METRIC) + 1:].rpartition("} ")
            kv = dict(p.split("=", 1) for p in labels.split(","))
            steps[(kv["stage"].strip('"'), kv["step"].strip('"'))] = float(value)
        elif line.startswith(PROCESS_METRIC + " "):
            process = float(line.split()[1])
    return steps, process
