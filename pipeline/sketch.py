"""Mergeable latency sketches on the fixed layout of ``schemas.latency_buckets``.

The hot loops (bucketing a batch of latencies into per-group dense counts, quantiles) are
numba kernels; sketches are dense ``int64[N_BUCKETS]`` arrays in memory, merged by
addition, and sparse ``[{bucket, count}]`` lists on the wire and in Parquet.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from schemas.latency_buckets import LOG_GAMMA, MAX_BUCKET, MIN_MS, N_BUCKETS, representative


@numba.njit(cache=True, nogil=True)
def bucket_indices(values_ms: np.ndarray) -> np.ndarray:
    """Bucket index of every value (NaN and values <= 1 ms -> 0, >= 1 h -> MAX_BUCKET)."""
    out = np.empty(values_ms.shape[0], np.int16)
    for i in range(values_ms.shape[0]):
        x = values_ms[i]
        if not x > MIN_MS:
            out[i] = 0
        else:
            b = math.ceil(math.log(x) / LOG_GAMMA)
            out[i] = MAX_BUCKET if b > MAX_BUCKET else b
    return out


@numba.njit(cache=True, nogil=True)
def accumulate(counts: np.ndarray, groups: np.ndarray, values_ms: np.ndarray,
               valid: np.ndarray) -> None:
    """Add each valid value to its group's dense sketch: ``counts[group, bucket] += 1``."""
    for i in range(values_ms.shape[0]):
        if not valid[i]:
            continue
        x = values_ms[i]
        if not x > MIN_MS:
            b = 0
        else:
            b = math.ceil(math.log(x) / LOG_GAMMA)
            if b > MAX_BUCKET:
                b = MAX_BUCKET
        counts[groups[i], b] += 1


@numba.njit(cache=True, nogil=True)
def quantile_bucket(counts: np.ndarray, q: float) -> int:
    """Bucket holding the lower nearest rank ``floor(q * (n - 1))``; -1 if empty."""
    n = 0
    for b in range(counts.shape[0]):
        n += counts[b]
    if n == 0:
        return -1
    rank = math.floor(q * (n - 1))
    cum = 0
    for b in range(counts.shape[0]):
        cum += counts[b]
        if cum > rank:
            return b
    return counts.shape[0] - 1


def quantile(counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (ms) of a dense sketch, or None when it is empty."""
    b = quantile_bucket(np.asarray(counts, dtype=np.int64), float(q))
    return None if b < 0 else representative(b)


def dense(pairs: list[dict] | None) -> np.ndarray:
    """Dense counts from a sparse ``[{bucket, count}]`` list (None -> empty sketch)."""
    out = np.zeros(N_BUCKETS, np.int64)
    for p in pairs or ():
        out[p["bucket"]] += p["count"]
    return out


def sparse(counts: np.ndarray) -> list[dict[str, int]]:
    """The non-empty buckets of a dense sketch, ascending."""
    nz = np.flatnonzero(counts)
    return [{"bucket": int(b), "count": int(counts[b])} for b in nz]


def exact_lower_nearest_rank(values: np.ndarray, q: float) -> float:
    """Reference quantile of raw values (what a sketch approximates within 1%)."""
    s = np.sort(np.asarray(values, dtype=np.float64))
    return float(s[math.floor(q * (len(s) - 1))])
