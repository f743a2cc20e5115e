"""What the normalise stage already knows about a body, handed to the stages of the same
worker that read that body back from ``llm_calls``.

The aggregate stage and the lake sink read ``llm_calls`` from Kafka like any consumer,
and parsing those NDJSON bodies again costs each of them about as much as decoding the
spans cost the normaliser (a tenth of a worker's CPU each; ``bench/bench_e2e.py`` prints
the stage clocks). When they run in the normaliser's process, it leaves each body's
calls here, keyed by the body (its length and edges, compared whole when taken): a
:class:`~pipeline.callbatch.CallBatch` for the aggregate stage, the Arrow table for the
lake. Each stage takes them when the same bytes come back from Kafka. Kafka stays the
only path of the data (order, offsets, replays): this only skips re-parsing bytes whose
rows are known, and a body not found (another worker's, evicted, after a restart) is
parsed as usual. ``tests/unit/test_handoff.py`` pins that both ways give the same
columns and the same lake rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")
#: Bytes of each end of a body in its key (:func:`_key`).
_EDGE = 96


class Handoff(Generic[T]):
    """Body -> what it holds, oldest evicted first beyond ``max_bytes`` of bodies.

    Thread-safe: the lake sink takes from its own thread what the event loop puts.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[tuple, tuple[bytes, T]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evicted = 0

    def put(self, body: bytes, value: T) -> None:
        key = _key(body)
        with self._lock:
            if key in self._held or len(body) > self.max_bytes:
                return      # the same body, or one sharing its key: parsed when it comes
            self._held[key] = (body, value)
            self.bytes += len(body)
            while self.bytes > self.max_bytes:
                _, (old, _) = self._held.popitem(last=False)
                self.bytes -= len(old)
                self.evicted += 1

    def take(self, body: bytes) -> T | None:
        """What ``body`` holds if held (each is taken once), else None."""
        key = _key(body)
        with self._lock:
            held = self._held.get(key)
            if held is None or held[0] != body:   # a whole-body comparison: exact
                self.misses += 1
                return None
            del self._held[key]
            self.bytes -= len(body)
            self.hits += 1
            return held[1]

    def __len__(self) -> int:
        return len(self._held)

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """(hits, misses, evicted, bytes held, bodies held), read together."""
        with self._lock:
            return self.hits, self.misses, self.evicted, self.bytes, len(self._held)


def _key(body: bytes) -> tuple[int, bytes, bytes]:
    """A body's key: its length, first and last bytes (in NDJSON, its first and last call
    ids). Keying by the body itself hashes all of it, hundreds of KB, at every put and
    take; :meth:`Handoff.take` compares the whole body instead (a memcmp, far cheaper than
    hashing), so bodies sharing a key cost a parse, never a wrong value."""
    return len(body), body[:_EDGE], body[-_EDGE:]


def metrics(handoffs: dict[str, Handoff | None]) -> list[str]:
    """Prometheus lines of a worker's handoffs, by the stage that takes from each (None:
    not running). A miss is a body that stage parsed again; an eviction, a body put but
    not held until taken (the normaliser ran more than ``max_bytes`` of bodies ahead)."""
    snaps = {to: h.snapshot() for to, h in handoffs.items() if h is not None}
    if not snaps:
        return []
    return ["# TYPE llmspend_handoff_bodies_total counter",
            *(f'llmspend_handoff_bodies_total{{to="{to}",outcome="{k}"}} {v}'
              for to, snap in snaps.items()
              for k, v in zip(("hit", "miss", "evicted"), snap[:3], strict=True)),
            "# TYPE llmspend_handoff_held_bytes gauge",
            *(f'llmspend_handoff_held_bytes{{to="{to}"}} {snap[3]}'
              for to, snap in snaps.items()),
            "# TYPE llmspend_handoff_held_bodies gauge",
            *(f'llmspend_handoff_held_bodies{{to="{to}"}} {snap[4]}'
              for to, snap in snaps.items())]
