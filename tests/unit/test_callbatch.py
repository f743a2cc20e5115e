"""The columnar view of llm_calls records: NDJSON and Arrow give the same columns, money
is exact pico-dollars, and bad records raise ValueError (the stage counts, never dies)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import callbatch
from pipeline.normalise import calls_to_ndjson
from schemas import calls as C
from tests.unit.test_aggregate import T0, call, table


def _rows():
    rows = [call(i, T0 + i * 1234 + 7, cost=f"0.{i:012d}", latency=100.5 * i, cached=i)
            for i in range(1, 40)]
    rows[3][C.LATENCY_MS] = None
    rows[4][C.INPUT_TOKENS] = None
    rows[5] = call(5, T0, priced=False, model="mystery")
    # Unpriced, resolved model: the response model, else (also when empty) the request's.
    rows[8] = call(8, T0, priced=False, model="asked")
    rows[8][C.RESPONSE_MODEL] = "answered"
    rows[9] = call(9, T0, priced=False, model="asked")
    rows[9][C.RESPONSE_MODEL] = ""
    rows[10][C.COST_USD] = None                       # priced list cost, no cost
    rows[6][C.TTFT_MS] = 12.5
    rows[7][C.START_TIME] = (T0 + 999) * 1000 + 999  # sub-millisecond: floors to ms
    return rows


def test_ndjson_and_arrow_give_the_same_columns():
    t = table(_rows())
    a = callbatch.from_table(t)
    b = callbatch.from_ndjson(b"\n".join(calls_to_ndjson(t)) + b"\n")
    assert a.lists == b.lists
    for name in ("start_ms", "tokens", "cost_pico", "priced"):
        assert (getattr(a, name) == getattr(b, name)).all(), name
    for name in ("latency_ms", "ttft_ms"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.lists[C.MODEL][5] == "mystery"  # unpriced: the requested model
    assert a.lists[C.MODEL][8:10] == ["answered", "asked"]
    assert a.cost_pico[10, 0] == 0 and a.cost_pico[10, 1] > 0
    assert a.start_ms[7] == T0 + 999 and a.cost_pico[2, 0] == 3  # rows[2] is call 3


def test_money_is_exact_pico_dollars():
    assert callbatch.pico("0.000000018750") == 18_750
    assert callbatch.pico("12.5") == 12_500_000_000_000
    assert callbatch.pico("-0.000000000001") == -1
    assert callbatch.pico(None) == 0
    with pytest.raises(ValueError, match="decimal places"):
        callbatch.pico("0.0000000000001")


@pytest.mark.parametrize("body", [b"{not json", b'{"call_id": "x"}', b"[1, 2]", b'"s"'])
def test_bad_records_raise_value_error(body):
    with pytest.raises(ValueError):
        callbatch.from_ndjson(body)


def test_empty_bodies_are_empty_batches():
    assert callbatch.from_ndjson(b"").n == 0 and callbatch.from_ndjson(b"\n\n").n == 0


def test_a_null_cost_is_zero_whatever_its_buffer_holds():
    import pyarrow as pa

    words = np.array([5, 0, 7, 0], np.int64)          # two values: 5 and 7 pico-dollars
    valid = pa.array([True, False]).buffers()[1]        # ... the second one null
    arr = pa.Array.from_buffers(C.MONEY, 2, [valid, pa.py_buffer(words)])
    assert callbatch._money_pico(pa.chunked_array([arr])).tolist() == [5, 0]
