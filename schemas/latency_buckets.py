"""The latency bucket layout: one fixed logarithmic layout for every sketch in llmspend.

DDSketch-style: bucket ``i`` holds values ``x`` (milliseconds) with
``GAMMA**(i-1) < x <= GAMMA**i`` where ``GAMMA = (1 + ALPHA) / (1 - ALPHA)``; its
representative value ``2 * GAMMA**i / (GAMMA + 1)`` is within ``ALPHA`` (1%) relative
error of every value in the bucket. Bucket 0 holds everything up to 1 ms (reported as 1 ms)
and bucket ``MAX_BUCKET`` (about 1 h) also everything above it (clamped).

Because the layout is fixed, sketches from partitions, minutes and workers merge by
adding counts per bucket, and a quantile over any slice is exact with respect to the
sketch. Sketches are stored as a list of ``{bucket, count}`` structs so DuckDB can
re-aggregate them (the macros in ``schemas/sql/macros.sql`` use these constants).

Quantile definition (identical in numba, SQL and tests): the **lower nearest rank**, the
value at 0-based rank ``floor(q * (n - 1))`` of the sorted values, reported as the
representative value of the bucket that holds that rank.
"""

from __future__ import annotations

import math

import pyarrow as pa

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
MIN_MS = 1.0
MAX_MS = 3_600_000.0
MAX_BUCKET = math.ceil(math.log(MAX_MS) / LOG_GAMMA)  # 755
N_BUCKETS = MAX_BUCKET + 1

#: Arrow type of a stored sketch: sparse (bucket, count) pairs, buckets ascending.
SKETCH = pa.list_(pa.struct([pa.field("bucket", pa.int16(), nullable=False),
                             pa.field("count", pa.int64(), nullable=False)]))


def bucket_of(ms: float) -> int:
    """Bucket index of one value (the reference for the numba kernel and SQL)."""
    if not ms > MIN_MS:  # also NaN -> bucket 0
        return 0
    return min(MAX_BUCKET, math.ceil(math.log(ms) / LOG_GAMMA))


def representative(bucket: int) -> float:
    """The value a bucket reports: within ALPHA of everything in it (clamped at the ends)."""
    if bucket <= 0:
        return MIN_MS
    return 2 * GAMMA ** min(bucket, MAX_BUCKET) / (GAMMA + 1)

