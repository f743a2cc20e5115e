"""Read several Kafka partitions as one stream, in timestamp order.

The window detectors read every ``llm_agg_1m`` partition and judge a minute once its
partials look complete. Taken as fetched, one partition's whole backlog can arrive
before another's (a worker catching up after a pause, a restart, a backfill): the
detector then holds forty minutes of some keys and none of the others, and judges
minutes on a fraction of their data. :class:`TimeAligner` holds records back until
every partition has been read past their timestamp and hands them over in timestamp
order, the order a detector keeping up in real time would have seen. Kafka Streams
does the same for the partitions of one task (``max.task.idle.ms``).

Pure: the shell tells it, per partition, whether it is read to its high watermark.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


class TimeAligner:
    """Merge records of several partitions by timestamp, never past what every
    partition has been read to.

    A partition read to its high watermark (caught up) holds nothing back beyond the
    time it was last polled; a partition behind holds everything back beyond its last
    record read. At most ``max_held`` records wait: past that (one partition stuck
    far behind) everything is released and ``stats["overflows"]`` counts it, so memory
    stays bounded and the detectors only lose ordering, never records.
    """

    def __init__(self, max_held: int = 200_000) -> None:
        self.max_held = max_held
        self._heap: list[tuple[int, int, Any]] = []     # (timestamp, arrival, value)
        self._arrivals = 0
        #: partition -> timestamp of the newest record read from it
        self.read_to: dict[int, int] = {}
        #: The time through which everything has been released (never goes back).
        self.clock_ms = 0
        self.stats: Counter = Counter()

    def __len__(self) -> int:
        return len(self._heap)

    def offer(self, partition: int, records: Iterable[tuple[int, Any]]) -> None:
        """Take (timestamp ms, value) records read from one partition, in log order."""
        newest = self.read_to.get(partition)
        for ts, value in records:
            heapq.heappush(self._heap, (ts, self._arrivals, value))
            self._arrivals += 1
            newest = ts if newest is None else max(newest, ts)
        if newest is not None:
            self.read_to[partition] = newest

    def bound(self, now_ms: int, polled: Mapping[int, int | None]) -> int:
        """The time every partition is read through. ``polled`` maps each partition to
        the time it was last polled while caught up, or None while it is behind."""
        bound = now_ms
        for partition, at in polled.items():
            if at is None:
                bound = min(bound, self.read_to.get(partition, self.clock_ms))
            else:
                bound = min(bound, at)
        return bound

    def release(self, now_ms: int, polled: Mapping[int, int | None],
                everything: bool = False) -> tuple[list[Any], int]:
        """The records now safe to hand over, oldest first, and the aligned clock
        (``everything``: all of them, e.g. while re-reading a baseline nobody judges)."""
        through = self.bound(now_ms, polled)
        if len(self._heap) > self.max_held:
            self.stats["overflows"] += 1
            everything = True
        if everything and self._heap:
            through = max(through, max(ts for ts, _, _ in self._heap))
        self.clock_ms = max(self.clock_ms, through)
        out = []
        while self._heap and self._heap[0][0] <= self.clock_ms:
            out.append(heapq.heappop(self._heap)[2])
        self.stats["released"] += len(out)
        return out, self.clock_ms
