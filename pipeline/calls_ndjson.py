"""The ``llm_calls`` record, written per column: NDJSON lines from a calls table.

Why: the reference writer (:func:`pipeline.normalise.calls_to_ndjson`) turns every call
into a Python dict and ``json.dumps`` it, about 60 us per call. Here each column becomes
either its Arrow buffers (strings, which need no escaping in almost every call) or
numbers (token counts, booleans, microsecond times, pico-dollar money), and one numba
kernel writes every line in a single pass. The bytes are exactly the reference's (same
key order, RFC 3339 times with 6 digits and ``Z``, money as 12-decimal strings, floats
as Python's ``repr``); the tests compare them on every corpus.

:func:`route` adds what the normalise stage does next: Kafka's murmur2 partition of
``tenant|session_id`` (a numba port of the Java client's hash) and one body per
partition.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from pipeline import normalise as ref
from pipeline.arrow_buffers import binary_buffers, money_to_pico, validity
from schemas import calls as C

# How the kernel writes each column (``kind``).
_FRAGMENT, _TIME, _MONEY, _INT, _BOOL, _FLOAT = range(6)
_PICO = 10**C.MONEY_SCALE
_MICRO = 10**6                    # latencies: whole microseconds of a millisecond value
_YEAR_1000_US = -30610224000 * 10**6      # 1000-01-01T00:00:00Z


@njit(cache=True)
def _digits(v: int) -> int:
    n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


@njit(cache=True)
def _put_uint(out: np.ndarray, p: int, v: int, width: int) -> int:
    """Write ``v`` in decimal, left-padded with zeros to ``width``; the new position."""
    n = max(_digits(v), width)
    for i in range(n - 1, -1, -1):
        out[p + i] = 48 + v % 10
        v //= 10
    return p + n


@njit(cache=True)
def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of days since 1970-01-01 (H. Hinnant's civil_from_days)."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


@njit(cache=True)
def _value_len(kind: int, quote: bool, v: int, start: int, end: int) -> int:
    if kind == _FRAGMENT:
        return end - start + (2 if quote else 0)
    if kind == _TIME:
        return 29                               # "YYYY-MM-DDTHH:MM:SS.ffffffZ"
    if kind == _MONEY:
        return _point_len(v, _PICO) + 12 + 2
    if kind == _INT:
        return (1 + _digits(-v)) if v < 0 else _digits(v)
    if kind == _FLOAT:
        if end > start:                         # not a whole microsecond: repr's text
            return end - start
        return _point_len(v, _MICRO) + _frac_len((-v if v < 0 else v) % _MICRO)
    return 4 if v else 5


@njit(cache=True)
def _point_len(v: int, unit: int) -> int:
    """Length of what :func:`_put_point` writes."""
    return (1 if v < 0 else 0) + _digits((-v if v < 0 else v) // unit) + 1


@njit(cache=True)
def _put_point(out: np.ndarray, p: int, v: int, unit: int) -> tuple[int, int]:
    """Write ``v / unit``'s sign, whole part and ``.`` (money in pico-dollars, latencies
    in microseconds); (the new position, the fraction left to write)."""
    if v < 0:
        out[p] = 45
        p += 1
        v = -v
    p = _put_uint(out, p, v // unit, 1)
    out[p] = 46
    return p + 1, v % unit


@njit(cache=True)
def _frac_len(frac: int) -> int:
    """Digits of a millionths fraction once its trailing zeros go (``.0``: one)."""
    if frac == 0:
        return 1
    n = 6
    while frac % 10 == 0:
        frac //= 10
        n -= 1
    return n


@njit(cache=True)
def _put_value(out: np.ndarray, p: int, kind: int, quote: bool, v: int, data: np.ndarray,
               start: int, end: int) -> int:
    if kind == _FRAGMENT:
        if quote:
            out[p] = 34
            p += 1
        out[p:p + end - start] = data[start:end]      # a slice copy: a memcpy, not a loop
        p += end - start
        if quote:
            out[p] = 34
            p += 1
        return p
    if kind == _TIME:
        days, us = v // 86_400_000_000, v % 86_400_000_000
        y, m, d = _civil(days)
        secs = us // 1_000_000
        out[p] = 34
        p = _put_uint(out, p + 1, y, 4)
        out[p] = 45
        p = _put_uint(out, p + 1, m, 2)
        out[p] = 45
        p = _put_uint(out, p + 1, d, 2)
        out[p] = 84
        p = _put_uint(out, p + 1, secs // 3600, 2)
        out[p] = 58
        p = _put_uint(out, p + 1, secs // 60 % 60, 2)
        out[p] = 58
        p = _put_uint(out, p + 1, secs % 60, 2)
        out[p] = 46
        p = _put_uint(out, p + 1, us % 1_000_000, 6)
        out[p] = 90
        out[p + 1] = 34
        return p + 2
    if kind == _MONEY:
        out[p] = 34
        p, frac = _put_point(out, p + 1, v, _PICO)
        p = _put_uint(out, p, frac, 12)
        out[p] = 34
        return p + 1
    if kind == _INT:
        if v < 0:
            out[p] = 45
            return _put_uint(out, p + 1, -v, 1)
        return _put_uint(out, p, v, 1)
    if kind == _FLOAT:
        if end > start:
            out[p:p + end - start] = data[start:end]
            return p + end - start
        p, frac = _put_point(out, p, v, _MICRO)
        n = _frac_len(frac)
        if frac == 0:
            out[p] = 48
        else:
            for _ in range(6 - n):
                frac //= 10
            _put_uint(out, p, frac, n)
        return p + n
    word = (116, 114, 117, 101) if v else (102, 97, 108, 115)
    for i in range(4):
        out[p + i] = word[i]
    if not v:
        out[p + 4] = 101
        return p + 5
    return p + 4


@njit(cache=True)
def _write_lines(kinds: np.ndarray, quotes: np.ndarray, valid: np.ndarray, nums: np.ndarray,
                 data: np.ndarray, offs: np.ndarray, keys: np.ndarray, key_offs: np.ndarray,
                 newline: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every line: ``keys[c]`` then column c's value (or ``null``) for each column, then
    ``}`` (and ``\n`` if ``newline``). Two passes: lengths, then bytes."""
    ncols, n = valid.shape
    lengths = np.zeros(n + 1, np.int64)
    for r in range(n):
        total = 2 if newline else 1
        for c in range(ncols):
            total += key_offs[c + 1] - key_offs[c]
            if valid[c, r]:
                total += _value_len(kinds[c], quotes[c], nums[c, r], offs[c, r],
                                    offs[c, r + 1])
            else:
                total += 4
        lengths[r + 1] = total
    line_offs = np.cumsum(lengths)
    out = np.empty(line_offs[n], np.uint8)
    for r in range(n):
        p = line_offs[r]
        for c in range(ncols):
            a, b = key_offs[c], key_offs[c + 1]
            out[p:p + b - a] = keys[a:b]
            p += b - a
            if valid[c, r]:
                p = _put_value(out, p, kinds[c], quotes[c], nums[c, r], data, offs[c, r],
                               offs[c, r + 1])
            else:
                out[p], out[p + 1], out[p + 2], out[p + 3] = 110, 117, 108, 108
                p += 4
        out[p] = 125
        if newline:
            out[p + 1] = 10
    return out, line_offs


@njit(cache=True)
def _murmur2_partitions(data: np.ndarray, offs: np.ndarray, n: int) -> np.ndarray:
    """Kafka's default partition (Java client's murmur2, positive, modulo ``n``) of
    every key; the same arithmetic as ``kafka.partitioner.default.murmur2``."""
    mask, m = np.uint64(0xFFFFFFFF), np.uint64(0x5BD1E995)
    out = np.empty(len(offs) - 1, np.int64)
    for j in range(len(offs) - 1):
        a, length = offs[j], offs[j + 1] - offs[j]
        h = (np.uint64(0x9747B28C) ^ np.uint64(length)) & mask
        for i in range(length // 4):
            q = a + 4 * i
            k = (np.uint64(data[q]) | (np.uint64(data[q + 1]) << np.uint64(8))
                 | (np.uint64(data[q + 2]) << np.uint64(16))
                 | (np.uint64(data[q + 3]) << np.uint64(24)))
            k = (k * m) & mask
            k ^= k >> np.uint64(24)
            k = (k * m) & mask
            h = ((h * m) & mask) ^ k
        tail, extra = a + (length & ~3), length % 4
        if extra >= 3:
            h ^= np.uint64(data[tail + 2]) << np.uint64(16)
        if extra >= 2:
            h ^= np.uint64(data[tail + 1]) << np.uint64(8)
        if extra >= 1:
            h ^= np.uint64(data[tail])
            h = (h * m) & mask
        h ^= h >> np.uint64(13)
        h = (h * m) & mask
        h ^= h >> np.uint64(15)
        out[j] = np.int64(h & np.uint64(0x7FFFFFFF)) % n
    return out


@njit(cache=True)
def _plain(data: np.ndarray) -> bool:
    """No byte JSON must escape (control characters, '"', '\\'): one pass, where
    numpy's three comparisons take five."""
    for b in data:                  # noqa: SIM110 (numba compiles no generator)
        if b < 32 or b == 34 or b == 92:
            return False
    return True


def partitions_of(keys: pa.Array, n: int) -> np.ndarray:
    """Kafka's default partition of every key of a string or binary array."""
    if n < 1:
        raise ValueError("a topic has at least one partition")
    data, offs = binary_buffers(keys)
    return _murmur2_partitions(data, offs, n)


def _column(arr: pa.Array) -> tuple[int, bool, np.ndarray | None, Any]:
    """(kind, quote, numbers, fragments) of one column for the kernel."""
    t = arr.type
    if pa.types.is_string(t):
        data, _ = binary_buffers(arr)
        if _plain(data):
            return _FRAGMENT, True, None, arr
        texts = [None if v is None else json.dumps(v, ensure_ascii=False)
                 for v in arr.to_pylist()]
        return _FRAGMENT, False, None, pa.array(texts, pa.string())
    if pa.types.is_integer(t):
        ints = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(ints) and ints.min() == np.iinfo(np.int64).min:   # no positive twin
            return _FRAGMENT, False, None, pc.cast(arr, pa.string())
        return _INT, False, ints, None
    if pa.types.is_boolean(t):
        return _BOOL, False, arr.fill_null(False).to_numpy(zero_copy_only=False), None
    if pa.types.is_timestamp(t):
        us = pc.cast(arr, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        if len(us) and us.min() < _YEAR_1000_US:   # strftime does not pad such years
            texts = [None if v is None else json.dumps(C.rfc3339(v))
                     for v in pc.cast(arr, pa.int64()).to_pylist()]
            return _FRAGMENT, False, None, pa.array(texts, pa.string())
        return _TIME, False, us, None
    if pa.types.is_decimal(t):
        pico, fits = money_to_pico(arr)
        if fits.all():
            return _MONEY, False, pico, None
        texts = [None if v is None else json.dumps(format(v, "f")) for v in arr.to_pylist()]
        return _FRAGMENT, False, None, pa.array(texts, pa.string())
    if pa.types.is_floating(t):           # Python's repr (shortest round trip), as json
        x = arr.fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        micros, exact = whole_micros(x)
        rest = np.flatnonzero(~exact & validity(arr))
        texts: list[str | None] = [None] * len(arr)
        for i, v in zip(rest.tolist(), x[rest].tolist(), strict=True):
            texts[i] = repr(v) if math.isfinite(v) else json.dumps(v)
        return _FLOAT, False, micros, pa.array(texts, pa.string())
    raise TypeError(f"no NDJSON writer for a {t} column")


def whole_micros(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, exact) per float: exact where ``x`` is the double nearest N / 10**6 for an
    integer N with 100 <= abs(N) < 10**15 (or x is 0.0): latencies in ms from integer
    nanoseconds always are. Then ``repr(x)`` is N / 10**6 written out in fixed point
    with its trailing zeros dropped, which the kernel writes: that decimal maps to x,
    and having at most 15 significant digits, no other decimal of 15 or fewer digits
    maps to the same double, so it is also the shortest (repr's choice); repr writes
    fixed point from 1e-4 to 1e16."""
    with np.errstate(invalid="ignore", over="ignore"):
        n = np.rint(x * 1e6)
        fits = np.isfinite(n) & (np.abs(n) < 1e15)
        micros = np.where(fits, n, 0.0).astype(np.int64)
        exact = fits & (micros / 1e6 == x) & (
            (np.abs(micros) >= 100) | ((micros == 0) & ~np.signbit(x)))
    return micros, exact


def _encode(calls: pa.Table, newline: bool) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, line offsets) of every call's line."""
    n, ncols = calls.num_rows, len(C.NAMES)
    kinds = np.zeros(ncols, np.int64)
    quotes = np.zeros(ncols, np.bool_)
    valid = np.zeros((ncols, n), np.bool_)
    nums = np.zeros((ncols, n), np.int64)
    offs = np.zeros((ncols, n + 1), np.int64)
    datas, base = [], 0
    for c, name in enumerate(C.NAMES):
        arr = calls.column(name).combine_chunks()
        valid[c] = validity(arr)
        kinds[c], quotes[c], numbers, frags = _column(arr)
        if numbers is not None:
            nums[c] = numbers
        if frags is not None:
            data, o = binary_buffers(frags)
            offs[c] = o + base
            datas.append(data)
            base += len(data)
    data = np.concatenate(datas) if datas else np.zeros(0, np.uint8)
    keys = "".join(("{" if c == 0 else ",") + json.dumps(name) + ":"
                   for c, name in enumerate(C.NAMES)).encode()
    key_offs = np.cumsum([0] + [len((("{" if c == 0 else ",") + json.dumps(name) + ":")
                                    .encode()) for c, name in enumerate(C.NAMES)])
    return _write_lines(kinds, quotes, valid, nums, data, offs,
                        np.frombuffer(keys, np.uint8), key_offs.astype(np.int64), newline)


def lines(calls: pa.Table) -> list[bytes]:
    """The ``llm_calls`` line of every call, byte for byte what
    :func:`pipeline.normalise.calls_to_ndjson` writes."""
    out, offs = _encode(calls, False)
    body = out.tobytes()
    return [body[a:b] for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]


def route(calls: pa.Table, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, NDJSON body) per target partition of ``llm_calls``: Kafka's murmur2
    partition of ``tenant|session_id``, each partition's lines in table order."""
    return [(p, body) for p, body, _ in route_calls(calls, partitions)]


def route_calls(calls: pa.Table, partitions: int) -> list[tuple[int, bytes, pa.Table]]:
    """:func:`route`, with each body's calls as a table too (rows in line order)."""
    if calls.num_rows == 0:
        return []
    keys = pc.binary_join_element_wise(calls.column(C.TENANT).combine_chunks(),
                                       calls.column(C.SESSION_ID).combine_chunks(), "|")
    part = partitions_of(keys, partitions)
    order = np.argsort(part, kind="stable")
    ordered = calls.take(pa.array(order))
    out, offs = _encode(ordered, True)
    starts = np.searchsorted(part[order], np.arange(partitions + 1)).tolist()
    offs = offs.tolist()
    return [(p, out[offs[starts[p]]:offs[starts[p + 1]]].tobytes(),   # one copy of each
             ordered.slice(starts[p], starts[p + 1] - starts[p]))
            for p in range(partitions) if starts[p + 1] > starts[p]]


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel before the first real batch."""
    route(ref.ndjson_to_calls([_WARM_UP]), 1)


_WARM_UP = json.dumps({name: None for name in C.NAMES} | {
    C.CALL_ID: "0", C.KIND: "llm", C.TENANT: "t", C.SESSION_ID: "s", C.TRACE_ID: "0",
    C.SPAN_ID: "0", C.STATUS: "ok", C.START_TIME: "2025-01-01T00:00:00.000000Z",
    C.INPUT_TOKENS: 1, C.COST_USD: "0.100000000000", C.PRICED: True, C.BATCH: False,
    C.LATENCY_MS: 1.5, C.CONVENTION: "semconv"})
