"""The per-column ``llm_calls`` writer writes the reference's bytes, and routes each call
to the partition Kafka's Java client would."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2

from pipeline import calls_ndjson
from pipeline import normalise as N
from schemas import calls as C

ODD_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(['a"b', "back\\slash", "new\nline",
                                                            "tab\t", "\x00", "é€😀", ""]))
MONEY = st.one_of(st.integers(-(10**18), 10**18), st.integers(-(10**30), 10**30),
                  st.sampled_from([0, 1, -1, 10**12, -(2**63), 2**63 - 1]))
TIMES = st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999)
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([0.0, -0.0, 1e-7, 2.0, 1e22, 123456789.0, 4768.366722]),
                   st.floats(1e-4, 1e16, exclude_max=True))   # latencies: no exponent


def _value(col: C.Column, draw: Any) -> Any:
    if col.nullable and draw(st.integers(0, 4)) == 0:
        return None
    t = col.type
    if t == C.MONEY:
        return Decimal(draw(MONEY)).scaleb(-C.MONEY_SCALE)
    if t == C.TIME:
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=draw(TIMES))
    if pa.types.is_integer(t):
        return draw(st.integers(-(2**63), 2**63 - 1))
    if pa.types.is_floating(t):
        return draw(FLOATS)
    if pa.types.is_boolean(t):
        return draw(st.booleans())
    return draw(ODD_TEXT)


@st.composite
def tables(draw: Any) -> pa.Table:
    n = draw(st.integers(0, 6))
    return pa.Table.from_pylist([{c.name: _value(c, draw) for c in C.COLUMNS}
                                 for _ in range(n)], schema=C.CALLS)


@given(tables())
def test_lines_are_the_reference_bytes_for_any_calls(calls) -> None:
    assert calls_ndjson.lines(calls) == N.calls_to_ndjson(calls)


@given(st.lists(st.one_of(st.none(), FLOATS, st.floats(1e-4, 1e16, exclude_max=True),
                          st.floats(-1e16, -1e-4, exclude_min=True),
                          st.floats(1e-7, 1e-4, exclude_max=True),      # just outside
                          st.floats(1e16, 1e18)), max_size=40))
@example([2.5, 1e16])                   # the first value repr writes with an exponent
@example([2.5, 9.9e-5])                 # repr: 9.9e-05 (not 0.000099, as orjson would)
def test_float_columns_either_side_of_reprs_exponent_switch_are_the_reference_text(xs) -> None:
    """Float columns on both sides of where repr switches to exponents (1e-4, 1e16),
    whole batches of either kind or mixed, are written as the reference writes them."""
    base = {c.name: None for c in C.COLUMNS}
    rows = [{**base, C.CALL_ID: str(i), C.LATENCY_MS: x, C.TTFT_MS: x}
            for i, x in enumerate(xs)]
    calls = pa.Table.from_pylist(rows, schema=C.CALLS)
    assert calls_ndjson.lines(calls) == N.calls_to_ndjson(calls)


@given(tables(), st.integers(1, 12))
def test_route_groups_the_reference_lines_by_the_java_partition(calls, n) -> None:
    want: dict[int, list[bytes]] = {}
    for row, line in zip(calls.to_pylist(), N.calls_to_ndjson(calls), strict=True):
        p = N.murmur2_partition(N.partition_key(row[C.TENANT], row[C.SESSION_ID]), n)
        want.setdefault(p, []).append(line)
    assert calls_ndjson.route(calls, n) == [(p, b"\n".join(g) + b"\n")
                                            for p, g in sorted(want.items())]


def test_murmur2_partitions_match_kafka_python_on_random_keys() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randrange(0, 40)).hex() for _ in range(3000)] + ["", "a", "ab"]
    for n in (1, 6, 7, 64):
        got = calls_ndjson.partitions_of(pa.array(keys, pa.string()), n).tolist()
        assert got == [(murmur2(k.encode()) & 0x7FFFFFFF) % n for k in keys]


def test_a_topic_without_partitions_is_refused() -> None:
    with pytest.raises(ValueError):
        calls_ndjson.partitions_of(pa.array(["a"]), 0)


def test_lines_read_back_to_the_same_table() -> None:
    row = {name: None for name in C.NAMES} | {
        C.CALL_ID: "c", C.KIND: "llm", C.TENANT: "t", C.SESSION_ID: "s", C.TRACE_ID: "0",
        C.SPAN_ID: "1", C.STATUS: "ok", C.PRICED: True, C.BATCH: False,
        C.CONVENTION: "semconv", C.COST_USD: Decimal("-0.000000000007"),
        C.START_TIME: dt.datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        C.LATENCY_MS: 1.5, C.ISSUES: 'say "hi"\n'}
    calls = pa.Table.from_pylist([row], schema=C.CALLS)
    assert N.ndjson_to_calls(calls_ndjson.lines(calls)).equals(calls)


@given(st.lists(st.one_of(st.integers(-(10**15) + 1, 10**15 - 1),
                          st.integers(0, 200), st.integers(10**14, 10**15 + 10)),
                max_size=40))
@example([0, 100, 99, 1_000_000, 244_292_000, 10**15 - 1, 10**15, -100, -1])
def test_latencies_of_whole_nanoseconds_are_the_reference_text(ns) -> None:
    """Latencies and TTFTs are integer nanoseconds / 1e6: the kernel writes those
    itself (no repr per call), as repr writes them, on either side of its limits."""
    base = {c.name: None for c in C.COLUMNS}
    rows = [{**base, C.CALL_ID: str(i), C.LATENCY_MS: n / 1e6, C.TTFT_MS: -n / 1e6}
            for i, n in enumerate(ns)]
    calls = pa.Table.from_pylist(rows, schema=C.CALLS)
    assert calls_ndjson.lines(calls) == N.calls_to_ndjson(calls)


def test_floats_the_kernel_writes_are_exactly_those_of_whole_microseconds() -> None:
    """The fast path's test: N / 1e6 is taken, its neighbours and 1e-4's are not."""
    import numpy as np

    x = np.array([244.292, np.nextafter(244.292, 1e9), 0.0, -0.0, 1e-4, 9.9e-5, 1e9,
                  999999999.999999, float("nan"), float("inf"), 0.1 + 0.2])
    micros, exact = calls_ndjson.whole_micros(x)
    assert exact.tolist() == [True, False, True, False, True, False, False, True,
                              False, False, False]
    assert micros[0] == 244_292_000 and micros[7] == 999_999_999_999_999
