"""Numpy views of Arrow buffers: slices honoured, money exact both ways."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa

from pipeline.arrow_buffers import binary_buffers, money_from_pico, money_to_pico, validity
from schemas import calls as C


def test_pico_dollars_become_the_exact_decimal_column_and_back() -> None:
    values = np.array([0, 1, 10**12, 123_456_789_012_345, -7], np.int64)
    arr = money_from_pico(values, np.array([True, True, True, False, True]))
    assert arr.to_pylist() == [Decimal("0E-12"), Decimal("1E-12"), Decimal("1.000000000000"),
                               None, Decimal("-7E-12")]
    pico, fits = money_to_pico(arr.slice(1))
    assert pico[[0, 1, 3]].tolist() == [1, 10**12, -7] and fits.all()


def test_money_beyond_int64_is_said_not_to_fit() -> None:
    arr = pa.array([Decimal(2**70).scaleb(-12), Decimal("1.5")], C.MONEY)
    pico, fits = money_to_pico(arr)
    assert fits.tolist() == [False, True] and pico[1] == 1_500_000_000_000


def test_binary_buffers_and_validity_honour_slices() -> None:
    arr = pa.array(["ab", None, "cde", "", "f"]).slice(1, 3)
    data, offs = binary_buffers(arr)
    assert bytes(data) == b"cde" and offs.tolist() == [0, 0, 3, 3]
    assert validity(arr).tolist() == [False, True, True]
    assert validity(pa.array(["x"])).tolist() == [True]
