"""Python's cyclic garbage collector in a long-running worker: frozen, and clocked.

Why freeze: a worker keeps about 200,000 GC-tracked objects alive from its start (Faust
and the Kafka clients, numba's and Arrow's module state, the app itself). Those are
never garbage, yet every full collection walks all of them: about 0.1 s each on the
bench machine, a pause of the event loop. :func:`freeze` moves everything alive once the
worker is built to the permanent generation, which collections skip; cycles made later
are still collected. In ``bench/bench_e2e.py`` (100,000 calls) the collector's CPU went
from 0.17 s (about 310 young, 28 middle and 1 full collection) to 0.07 s (no full one).
Raising the young threshold as well (50,000) cut no more CPU and ran no faster, so
CPython's thresholds stay. ``stream.gc_freeze = false`` leaves the collector alone.

:class:`GcClock` counts collections and the CPU time they took per generation (from
``gc.callbacks``) for ``/metrics``, so a pause shows up as what it is rather than inside
whichever stage step happened to allocate when it struck.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

#: Objects the last :func:`freeze` moved out of collections (``/metrics`` reports it).
#: Kept here because counting them again walks the whole permanent generation, a linked
#: list of ~200,000 objects spread over the heap: 3 ms in a small process, about 0.1 s
#: in a worker that has been running (py-spy saw 0.2 s of a 100k-call drain there).
frozen_at_start = 0


def freeze(enabled: bool = True) -> int:
    """Collect, then freeze everything alive into the permanent generation; the number
    of objects frozen (0 when not ``enabled``: nothing changed)."""
    global frozen_at_start
    if not enabled:
        return 0
    gc.collect()          # what is garbage now is not frozen with the rest
    gc.freeze()
    frozen_at_start = gc.get_freeze_count()
    return frozen_at_start


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
        yield f"llmspend_gc_frozen_objects {frozen_at_start}"


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
