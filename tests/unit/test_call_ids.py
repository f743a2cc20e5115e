"""The call-id kernel is :func:`pipeline.normalise.call_id` (BLAKE2b-128) on every row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.call_ids import call_ids
from pipeline.normalise import call_id

# Tenants up to 300 UTF-8 bytes: one, two and three 128-byte blocks, and the edges
# (a 100-byte tenant fills the first block exactly: 4 + 100 + 24 bytes).
_tenants = st.one_of(st.text(max_size=120),
                     st.integers(0, 300).map(lambda k: "t" * k))
_row = st.tuples(_tenants, st.binary(min_size=16, max_size=16),
                 st.binary(min_size=8, max_size=8))


@given(st.lists(_row, max_size=40))
def test_every_row_hashes_like_the_reference(rows) -> None:
    tenants = [t for t, _, _ in rows]
    trace = np.frombuffer(b"".join(tr for _, tr, _ in rows), np.uint8).reshape(-1, 16)
    span = np.frombuffer(b"".join(sp for _, _, sp in rows), np.uint8).reshape(-1, 8)
    got = call_ids(pa.array(tenants, pa.string()), trace, span).to_pylist()
    assert got == [call_id(t, tr, sp) for t, tr, sp in rows]


@pytest.mark.parametrize("size", [99, 100, 101, 228, 229, 1000])
def test_tenants_at_block_edges_hash_like_the_reference(size) -> None:
    trace, span = bytes(range(16)), bytes(range(100, 108))
    got = call_ids(pa.array(["é" * (size // 2) + "x" * (size % 2)]),
                   np.frombuffer(trace, np.uint8).reshape(1, 16),
                   np.frombuffer(span, np.uint8).reshape(1, 8))
    assert got.to_pylist() == [call_id("é" * (size // 2) + "x" * (size % 2), trace, span)]


def test_a_sliced_tenant_column_hashes_its_own_rows() -> None:
    tenants = pa.array(["a", "bb", "ccc", "dddd"]).slice(1, 2)
    trace = np.arange(32, dtype=np.uint8).reshape(2, 16)
    span = np.arange(16, dtype=np.uint8).reshape(2, 8)
    assert call_ids(tenants, trace, span).to_pylist() == [
        call_id("bb", bytes(trace[0]), bytes(span[0])),
        call_id("ccc", bytes(trace[1]), bytes(span[1]))]


def test_a_row_without_a_tenant_is_refused() -> None:
    with pytest.raises(ValueError, match="tenant"):
        call_ids(pa.array([None], pa.string()), np.zeros((1, 16), np.uint8),
                 np.zeros((1, 8), np.uint8))
