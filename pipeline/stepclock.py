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

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

METRIC = "llmspend_stage_cpu_seconds_total"
PROCESS_METRIC = "llmspend_process_cpu_seconds_total"
THREAD_METRIC = "llmspend_thread_cpu_seconds_total"


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


class ThreadClock:
    """CPU seconds per thread name of this process (pool threads' numbers dropped, so
    ``asyncio_0`` and ``asyncio_1`` add up as ``asyncio``). A thread that ended keeps
    its last reading, so the totals only grow, as Prometheus counters must."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, float]] = {}   # native id -> (name, seconds)
        self._ended: Counter[str] = Counter()
        self._lock = threading.Lock()

    def seconds(self) -> dict[str, float]:
        now: dict[int, tuple[str, float]] = {}
        for t in threading.enumerate():
            try:
                secs = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (AttributeError, OSError, TypeError, OverflowError):
                continue        # not a POSIX thread clock here, or the thread just ended
            now[t.native_id or t.ident] = (re.sub(r"[-_]\d+$", "", t.name), secs)
        with self._lock:
            for tid, (name, secs) in self._last.items():
                if tid not in now:
                    self._ended[name] += secs
            self._last = now
            out = Counter(self._ended)
        for name, secs in now.values():
            out[name] += secs
        return dict(out)


THREADS = ThreadClock()


def render(clocks: Iterable[StepClock]) -> list[str]:
    """Prometheus lines of the clocks, and the process's and each thread's CPU to
    compare them with."""
    out = [f"# TYPE {METRIC} counter"]
    for c in clocks:
        for name in sorted(c.seconds):
            out.append(f'{METRIC}{{stage="{c.stage}",step="{name}"}} {c.seconds[name]:.6f}')
    out += [f"# TYPE {PROCESS_METRIC} counter",
            f"{PROCESS_METRIC} {time.process_time():.6f}",
            f"# TYPE {THREAD_METRIC} counter"]
    out += [f'{THREAD_METRIC}{{thread="{name}"}} {secs:.6f}'
            for name, secs in sorted(THREADS.seconds().items())]
    return out


def _series(text: str, metric: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of ``metric`` on a ``/metrics`` page."""
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, _, value = line[len(metric) + 1:].rpartition("} ")
            yield ({k: v.strip('"') for k, v in (p.split("=", 1) for p in labels.split(","))},
                   float(value))
        elif line.startswith(metric + " "):
            yield {}, float(line.split()[1])


def parse(text: str) -> tuple[dict[tuple[str, str], float], float | None]:
    """(seconds by (stage, step), process seconds) from a ``/metrics`` page."""
    steps = {(kv["stage"], kv["step"]): v for kv, v in _series(text, METRIC)}
    process = [v for _kv, v in _series(text, PROCESS_METRIC)]
    return steps, process[-1] if process else None


def parse_threads(text: str) -> dict[str, float]:
    """CPU seconds by thread name from a ``/metrics`` page."""
    return {kv["thread"]: v for kv, v in _series(text, THREAD_METRIC)}
