"""Latency sketches: bucket layout, quantile error bounds, merge by addition, SQL parity."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import sketch
from pipeline.analytics import macros_sql
from schemas import latency_buckets as L


def test_layout_covers_1ms_to_1h_with_1_percent_relative_error():
    assert L.ALPHA <= 0.01
    assert L.bucket_of(1.0) == 0 and L.bucket_of(3_600_000.0) == L.MAX_BUCKET
    for b in range(1, L.MAX_BUCKET):
        lo, hi = L.GAMMA ** (b - 1), L.GAMMA ** b
        rep = L.representative(b)
        assert abs(rep - lo) / lo <= L.ALPHA + 1e-12
        assert abs(rep - hi) / hi <= L.ALPHA + 1e-12


@settings(max_examples=300)
@given(st.floats(min_value=1.0001, max_value=3_599_999, allow_nan=False))
def test_every_value_is_within_alpha_of_its_bucket_value(x):
    b = int(sketch.bucket_indices(np.array([x]))[0])
    assert b == L.bucket_of(x)
    assert abs(L.representative(b) - x) / x <= L.ALPHA + 1e-9


def test_out_of_range_values_are_clamped():
    b = sketch.bucket_indices(np.array([0.0, -5.0, np.nan, 0.5, 1e9]))
    assert b.tolist() == [0, 0, 0, 0, L.MAX_BUCKET]


@pytest.mark.parametrize("dist", ["lognormal", "bimodal", "constant", "tiny"])
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_quantiles_within_1_percent_of_exact_lower_nearest_rank(dist, q):
    rng = np.random.default_rng(7)
    values = {
        "lognormal": rng.lognormal(mean=6.5, sigma=0.8, size=50_000),
        "bimodal": np.concatenate([rng.normal(300, 30, 40_000).clip(2),
                                   rng.normal(9_000, 900, 10_000).clip(2)]),
        "constant": np.full(1000, 1234.5),
        "tiny": rng.lognormal(6, 1, 3),
    }[dist]
    counts = np.zeros((1, L.N_BUCKETS), np.int64)
    sketch.accumulate(counts, np.zeros(len(values), np.int64), values,
                      np.ones(len(values), np.bool_))
    exact = sketch.exact_lower_nearest_rank(values, q)
    got = sketch.quantile(counts[0], q)
    assert abs(got - exact) / exact <= L.ALPHA + 1e-9


def test_merge_is_addition_and_associative():
    rng = np.random.default_rng(1)
    parts = [rng.lognormal(7, 1, 1000) for _ in range(3)]
    dense = []
    for p in parts:
        c = np.zeros((1, L.N_BUCKETS), np.int64)
        sketch.accumulate(c, np.zeros(len(p), np.int64), p, np.ones(len(p), np.bool_))
        dense.append(c[0])
    whole = np.zeros((1, L.N_BUCKETS), np.int64)
    allv = np.concatenate(parts)
    sketch.accumulate(whole, np.zeros(len(allv), np.int64), allv,
                      np.ones(len(allv), np.bool_))
    assert ((dense[0] + dense[1]) + dense[2] == dense[0] + (dense[1] + dense[2])).all()
    assert (dense[0] + dense[1] + dense[2] == whole[0]).all()
    assert (sketch.dense(sketch.sparse(whole[0])) == whole[0]).all()


def test_groups_and_invalid_values():
    counts = np.zeros((2, L.N_BUCKETS), np.int64)
    sketch.accumulate(counts, np.array([0, 1, 1, 0]), np.array([10.0, 20.0, 30.0, np.nan]),
                      np.array([True, True, True, False]))
    assert counts[0].sum() == 1 and counts[1].sum() == 2
    assert sketch.quantile(np.zeros(L.N_BUCKETS, np.int64), 0.5) is None


def test_duckdb_macro_gives_the_same_quantiles_as_numba():
    rng = np.random.default_rng(3)
    values = rng.lognormal(6.8, 0.9, 20_000)
    counts = np.zeros((1, L.N_BUCKETS), np.int64)
    sketch.accumulate(counts, np.zeros(len(values), np.int64), values,
                      np.ones(len(values), np.bool_))
    con = duckdb.connect()
    con.execute(macros_sql())
    pairs = sketch.sparse(counts[0])
    half = len(pairs) // 2
    # Two rows (two partials) re-aggregated in SQL, as analysts would.
    con.execute("CREATE TABLE partials(latency_buckets STRUCT(bucket SMALLINT, count BIGINT)[])")
    con.execute("INSERT INTO partials VALUES (?), (?)", [pairs[:half], pairs[half:]])
    for q in (0.5, 0.95, 0.99):
        (sql,) = con.execute(
            "SELECT llmspend_sketch_quantile(flatten(list(latency_buckets)), ?) FROM partials",
            [q]).fetchone()
        assert math.isclose(sql, sketch.quantile(counts[0], q), rel_tol=1e-12)
    assert con.execute("SELECT llmspend_p95([]), llmspend_p95(NULL)").fetchone() == (None, None)
    # The SQL bucket of each raw value is the numba bucket, so quantiles of raw
    # latencies in SQL equal the sketch's.
    con.execute("CREATE TABLE raw(ms DOUBLE)")
    con.executemany("INSERT INTO raw VALUES (?)", [[float(v)] for v in values[:2000]])
    sql_buckets = [b for (b,) in con.execute(
        "SELECT llmspend_latency_bucket(ms) FROM raw").fetchall()]
    assert sql_buckets == sketch.bucket_indices(values[:2000]).tolist()
