"""Python's cyclic garbage collector in a long-running worker: tuned, and clocked.

Why tune it: a worker keeps about 200,000 GC-tracked objects alive (Faust and the Kafka
clients, numba's and Arrow's module state, the aggregate's open windows). With CPython's
default thresholds (700, 10, 10) the per-record tuples, dicts and window states of the
stages trigger hundreds of young collections a second, and every time the long-lived
objects grew by a quarter a full collection walks all of them: about 0.1 s each on the
bench machine, several in a 100,000-call drain, each one a pause of the event loop. The
stages build no reference cycles on their hot paths (reference counting frees their
objects), so those collections find almost nothing to free.

:func:`tune` moves everything alive once the worker is built (modules, the app, warmed
kernels: never garbage) to the permanent generation, which full collections skip, and
raises the young threshold so young collections run far less often. Cycles are still
collected, only later. ``stream.gc_young_threshold = 0`` keeps CPython's defaults.

:class:`GcClock` counts collections and the CPU time they took per generation (from
``gc.callbacks``) for ``/metrics``, so a pause shows up as what it is rather than inside
whichever stage step happened to allocate when it struck.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

#: CPython's young threshold is 700 allocations; 50,000 keeps a collection's work small
#: (the young generation is all it walks) while running it about 70 times less often.
DEFAULT_YOUNG_THRESHOLD = 50_000


def tune(young_threshold: int) -> bool:
    """Freeze what exists now and set the young threshold; False (and nothing changed)
    when ``young_threshold`` is 0."""
    if young_threshold <= 0:
        return False
    gc.collect()          # what is garbage now is not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    return True


class GcClock:
    """Collections and their thread CPU seconds per generation, since :meth:`start`.

    A collection runs in the thread that triggered it, holding the GIL, between the
    "start" and "stop" callbacks, so the thread's CPU time between them is its cost."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
            return
        g = info["generation"]
        self.collections[g] += 1
        self.seconds[g] += time.thread_time() - self._t0
        self.collected[g] += info["collected"]

    def start(self) -> GcClock:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def metrics(self) -> Iterator[str]:
        """Prometheus text lines, each family once."""
        families = (("llmspend_gc_collections_total", self.collections),
                    ("llmspend_gc_seconds_total", self.seconds),
                    ("llmspend_gc_objects_collected_total", self.collected))
        for name, values in families:
            yield f"# TYPE {name} counter"
            for g, v in enumerate(values):
                yield f'{name}{{generation="{g}"}} {v}'
        yield "# TYPE llmspend_gc_frozen_objects gauge"
        yield f"llmspend_gc_frozen_objects {gc.get_freeze_count()}"


def parse(text: str) -> dict[str, list[float]]:
    """The ``llmspend_gc_*_total`` samples of a /metrics text, per generation, by family
    (``collections``, ``seconds``, ``objects_collected``); for the benchmarks."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition('{generation="')
        if sep and name.startswith("llmspend_gc_") and name.endswith("_total"):
            gen, _, value = rest.partition('"} ')
            family = out.setdefault(name[len("llmspend_gc_"):-len("_total")], [0.0] * 3)
            family[int(gen)] = float(value)
    return out
