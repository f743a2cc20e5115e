"""Columns handed from the normalise stage to the aggregate stage of the same worker.

The aggregate stage reads ``llm_calls`` from Kafka like any consumer, and parsing those
NDJSON bodies is a fifth of a worker's CPU. When both stages run in one process, the
normalise stage already holds each body's calls as Arrow columns: it leaves their
:class:`~pipeline.callbatch.CallBatch` here, keyed by the body bytes, and the aggregate
stage takes it when the same bytes come back from Kafka. Kafka stays the only path of
the data (order, offsets, replays): this only skips re-parsing bytes whose columns are
known, and a body not found (another worker's, evicted, after a restart) is parsed as
usual. ``tests/unit/test_handoff.py`` pins that both ways give the same columns.
"""

from __future__ import annotations

from collections import OrderedDict

from pipeline.callbatch import CallBatch


class Handoff:
    """Body -> columns, oldest evicted first beyond ``max_bytes`` of bodies."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[bytes, CallBatch] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evicted = 0

    def put(self, body: bytes, batch: CallBatch) -> None:
        if body in self._held or len(body) > self.max_bytes:
            return
        self._held[body] = batch
        self.bytes += len(body)
        while self.bytes > self.max_bytes:
            old, _ = self._held.popitem(last=False)
            self.bytes -= len(old)
            self.evicted += 1

    def take(self, body: bytes) -> CallBatch | None:
        """The columns of ``body`` if held (each is taken once), else None."""
        batch = self._held.pop(body, None)
        if batch is None:
            self.misses += 1
            return None
        self.bytes -= len(body)
        self.hits += 1
        return batch

    def __len__(self) -> int:
        return len(self._held)
