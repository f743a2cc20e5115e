"""Mergeable distinct counts (how many tickets, documents... a use case worked on).

A :class:`DistinctCount` keeps the 63-bit hashes of the values it saw: every hash while
there are fewer than ``2k`` (the count is exact), then only the ``k`` smallest (a
K-minimum-values sketch: the count is (k - 1) / the k-th smallest as a fraction of the
hash space, relative standard error about 1/sqrt(k)). Two counts merge by uniting their
hashes, so per-minute, per-partition partials add up to a day without double counting a
unit seen in several minutes or partitions, and the state stays bounded (at most ``2k``
integers) however many units a day brings.

The hash is part of the data format: the ``unit_hashes`` column of ``llm_agg_1m`` holds
:func:`unit_hash` values, which analysts can count with ``count(DISTINCT h)``.
"""

from __future__ import annotations

import base64
import hashlib
from array import array
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

#: Hashes are 63-bit, so they fit a signed int64 (Arrow, Parquet, DuckDB BIGINT).
SPACE = 1 << 63
K = 4096


@lru_cache(maxsize=1 << 16)      # a unit's calls come close together
def unit_hash(unit_type: str | None, unit_id: str) -> int:
    """The 63-bit hash of a business unit, e.g. ``("ticket", "TCK-123")``."""
    raw = f"{unit_type or ''}/{unit_id}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") >> 1


class DistinctCount:
    """Distinct hashes, exact below ``2k`` of them, a k-minimum-values sketch above."""

    __slots__ = ("_count", "cut", "hashes", "k", "saturated")

    def __init__(self, k: int = K) -> None:
        self.k = k
        self.hashes: set[int] = set()
        self.saturated = False
        self.cut = SPACE          # once saturated only hashes below it can matter
        self._count: int | None = 0

    def add(self, h: int) -> None:
        if h >= self.cut or h in self.hashes:
            return
        self.hashes.add(h)
        self._count = None
        if len(self.hashes) >= 2 * self.k:
            keep = sorted(self.hashes)[:self.k]
            self.hashes, self.cut, self.saturated = set(keep), keep[-1], True

    def merge(self, hashes: Iterable[int], saturated: bool = False) -> None:
        """Unite with another count's hashes (``saturated``: they are its k smallest)."""
        for h in hashes:
            self.add(h)
        if saturated and not self.saturated and len(self.hashes) >= self.k:
            # The other side only knows its k smallest: beyond them we know nothing.
            keep = sorted(self.hashes)[:self.k]
            self.hashes, self.cut, self.saturated = set(keep), keep[-1], True
            self._count = None

    def count(self) -> int:
        if self._count is None:
            if not self.saturated:
                self._count = len(self.hashes)
            else:
                kth = sorted(self.hashes)[self.k - 1]
                self._count = round((self.k - 1) * SPACE / (kth + 1))
        return self._count

    @property
    def exact(self) -> bool:
        return not self.saturated

    def sorted_hashes(self) -> list[int]:
        return sorted(self.hashes)

    def to_state(self) -> dict[str, Any]:
        packed = array("q", self.sorted_hashes()).tobytes()
        return {"k": self.k, "saturated": self.saturated,
                "hashes": base64.b64encode(packed).decode()}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> DistinctCount:
        c = cls(d["k"])
        hashes = array("q")
        hashes.frombytes(base64.b64decode(d["hashes"]))
        c.hashes = set(hashes)
        c.saturated = d["saturated"]
        if c.saturated:
            c.cut = max(c.hashes)
        c._count = None
        return c
