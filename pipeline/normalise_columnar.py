"""Columnar normalise and price: the calls table of :func:`pipeline.normalise.normalise`,
computed per column of a span batch instead of per span.

Why: the reference builds a dict per span and prices every call with Decimal arithmetic
(about 9 k spans/s on one core). Here the attributes the mapping table reads are
placed once per batch (one kernel pass), then read as a value position per span for
each key; fields are coalesced with numpy in the convention table's order; strings are
derived once per distinct value (providers, finish reasons, pseudonyms); and each call's
cost is exact integer arithmetic in pico-dollars (the 12-digit scale of
``schemas.calls.MONEY``), priced once per distinct (model, provider, tenant, price
version) by the reference :func:`pipeline.pricing.quote` and checked against it.

Spans whose values this path does not model (odd value types, message content, span
events, fees, sampling, anything the reference repairs and flags) go through the
reference row function, so the result equals the reference's by construction; the
tests compare both on every corpus and on random batches.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from pipeline import call_ids, pricing, privacy
from pipeline import conventions as cv
from pipeline import normalise as ref
from pipeline.arrow_buffers import HEX_DIGITS, binary_buffers, money_from_pico, validity
from pipeline.config import Settings
from schemas import calls as C
from schemas import spans as S

log = logging.getLogger(__name__)
#: The row-by-row normaliser, bound at import (tests wrap ``ref.normalise``).
_reference = ref.normalise
_LLM, _TOOL, _AGENT, _CHAIN, _OTHER = range(5)
_KIND_NAMES = (C.KIND_LLM, C.KIND_TOOL, "agent", "chain", "other")  # cv.KIND_MARKERS
_KIND_CODE = {k: i for i, k in enumerate(_KIND_NAMES)}
#: Texts of small codes, taken per row (no Python string per row).
_KIND_TEXT = pa.array(_KIND_NAMES, pa.string())
_STATUS_TEXT = pa.array([C.STATUS_OK, C.STATUS_ERROR], pa.string())    # by the error flag
_CONVENTION_TEXT = pa.array(cv.CONVENTIONS, pa.string())
_MARKERS = {key: {v.lower(): _KIND_CODE[kind] for k, v, kind in cv.KIND_MARKERS if k == key}
            for key in cv.KIND_KEYS}
_STRINGY = np.array([S.STRING, S.ARRAY, S.KVLIST, S.BYTES], np.int8)
_VALUED = np.array([S.STRING, S.ARRAY, S.KVLIST, S.BYTES, S.INT, S.DOUBLE, S.BOOL], np.int8)
_PICO_PER_MILLION = 10**6          # USD per million tokens -> pico-dollars per token
_SAFE = 2**30                      # tokens and pico prices below this cannot overflow int64
#: The two type sets above as lookup tables over a type code's byte.
_IS_STRINGY = np.zeros(256, bool)
_IS_STRINGY[_STRINGY.astype(np.uint8)] = True
_IS_VALUED = np.zeros(256, bool)
_IS_VALUED[_VALUED.astype(np.uint8)] = True


# ------------------------------------------------------------------ gathering attributes


@njit(cache=True)
def _place(list_offs: np.ndarray, kidx: np.ndarray, ncols: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pass over a list column's values: the span of every value (``row_of``, -1
    outside the list), and the values of each wanted key (``kidx``, -1: not wanted)
    grouped by key, in value order: key j's (span, value position) pairs are
    ``seg_row``/``seg_pos[starts[j]:starts[j + 1]]``. A span naming a key twice is
    flagged in ``dup``."""
    n = len(list_offs) - 1
    row_of = np.full(len(kidx), -1, np.int64)
    starts = np.zeros(ncols + 1, np.int64)
    for r in range(n):
        for i in range(list_offs[r], list_offs[r + 1]):
            row_of[i] = r
            if kidx[i] >= 0:
                starts[kidx[i] + 1] += 1
    for j in range(ncols):
        starts[j + 1] += starts[j]
    fill = starts[:-1].copy()
    seg_row = np.empty(starts[ncols], np.int64)
    seg_pos = np.empty(starts[ncols], np.int64)
    dup = np.zeros(n, np.bool_)
    for r in range(n):
        for i in range(list_offs[r], list_offs[r + 1]):
            k = kidx[i]
            if k >= 0:
                q = fill[k]
                if q > starts[k] and seg_row[q - 1] == r:
                    dup[r] = True
                seg_row[q] = r
                seg_pos[q] = i
                fill[k] = q + 1
    return row_of, starts, seg_row, seg_pos, dup


class _Attrs:
    """One attributes column, gathered for the keys the normaliser reads.

    ``pos(key)`` is, per span, the index of that key's value in the flattened values
    (-1: absent); the value columns are numpy arrays (ints, doubles) or Arrow (strings).
    A span naming one key twice is listed in ``dup_rows`` (the reference keeps the last;
    such spans take the reference path). Positions are made per key on first use, and
    every key no span carries shares one read-only column of -1: most of the keys the
    conventions name are absent from any one batch.
    """

    def __init__(self, column: pa.ChunkedArray | pa.ListArray, wanted: Sequence[str]) -> None:
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self.n = n = len(arr)
        offsets = arr.offsets.to_numpy()
        values = arr.values
        # Keys hashed once: every later question about keys is asked of the distinct
        # ones (a few dozen), then read back per value through the codes.
        keys = pc.dictionary_encode(values.field("key"))
        self.distinct_keys = keys.dictionary
        self.key_code = keys.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        typ = values.field("type").to_numpy(zero_copy_only=False)
        self.str = values.field("str")
        self.int = values.field("int").fill_null(0).to_numpy(zero_copy_only=False)
        self.dbl = values.field("dbl").fill_null(0.0).to_numpy(zero_copy_only=False)
        m = len(values)
        str_len = np.diff(binary_buffers(self.str)[1]) if m else np.zeros(0, np.int64)
        empty = (str_len == 0) & validity(self.str)
        code = typ.astype(np.uint8)                       # a table lookup, not np.isin
        # Padded with the value of "absent" so that position -1 reads it (one gather).
        self.type_pad = np.empty(m + 1, np.int64)
        self.type_pad[:m], self.type_pad[m] = typ, -1
        self.valued_pad = np.empty(m + 1, bool)
        self.valued_pad[:m] = _IS_VALUED[code] & ~(_IS_STRINGY[code] & empty)
        self.valued_pad[m] = False
        self.int_pad = np.empty(m + 1, np.int64)
        self.int_pad[:m], self.int_pad[m] = self.int, 0
        self.bool_pad = np.empty(m + 1, bool)
        self.bool_pad[:m] = values.field("bool").fill_null(False).to_numpy(
            zero_copy_only=False)
        self.bool_pad[m] = False
        self.col = {k: j for j, k in enumerate(dict.fromkeys(wanted))}
        kidx = self._per_value(pc.index_in(self.distinct_keys, value_set=pa.array(
            list(self.col), pa.string())).fill_null(-1).to_numpy(zero_copy_only=False), -1)
        self.row_of, self._starts, self._seg_row, self._seg_pos, self.dup_rows = _place(
            offsets.astype(np.int64), kidx.astype(np.int64, copy=False), len(self.col))
        self._pos: dict[int, np.ndarray] = {}
        self._absent = np.full(n, -1, np.int64)
        self._absent.flags.writeable = False

    def _per_value(self, of_distinct: np.ndarray, missing: Any) -> np.ndarray:
        """A value per distinct key, read back per attribute value (``missing`` for a
        null key)."""
        return np.append(of_distinct, missing)[self.key_code]

    def pos(self, key: str) -> np.ndarray:
        j = self.col[key]
        p = self._pos.get(j)
        if p is None:
            a, b = self._starts[j], self._starts[j + 1]
            if a == b:
                p = self._absent
            else:            # (a span naming the key twice is in dup_rows: the reference's)
                p = np.full(self.n, -1, np.int64)
                p[self._seg_row[a:b]] = self._seg_pos[a:b]
                p.flags.writeable = False
            self._pos[j] = p
        return p

    def type_at(self, p: np.ndarray) -> np.ndarray:
        return self.type_pad[p]

    def is_valued(self, p: np.ndarray) -> np.ndarray:
        """The reference's ``first`` test: present, not None, not ''."""
        return self.valued_pad[p]

    def str_at(self, p: np.ndarray) -> pa.Array:
        if p is self._absent or not len(self.str):
            return pa.nulls(len(p), pa.string())
        return self.str.take(pa.array(p, mask=p < 0))

    def equals(self, p: np.ndarray, text: str) -> np.ndarray:
        """Per span: the value at ``p`` is the string ``text``."""
        s = pc.fill_null(pc.equal(self.str_at(p), text), False)
        return s.to_numpy(zero_copy_only=False) & (self.type_at(p) == S.STRING)

    def first(self, sources: Iterable[cv.Source]) -> np.ndarray:
        """Position of :func:`pipeline.conventions.first`'s pick per span (-1: none)."""
        out = self._absent           # (no source present: no gather, no new column)
        for src in sources:
            p = self.pos(src.key)
            if p is self._absent:
                continue
            ok = (out < 0) & self.is_valued(p)
            if src.when is not None:
                ok &= self.equals(self.pos(src.when[0]), src.when[1])
            if out is self._absent:
                out = np.full(self.n, -1, np.int64)
            out[ok] = p[ok]
        return out

    def rows_having(self, keys: Iterable[str]) -> np.ndarray:
        """Spans carrying any of ``keys`` (any type)."""
        keys = list(keys)
        out = np.zeros(self.n, bool)
        if keys:
            hit = pc.is_in(self.distinct_keys, value_set=pa.array(keys, pa.string()))
            mask = self._per_value(hit.to_numpy(zero_copy_only=False), False)
            rows = self.row_of[mask & (self.row_of >= 0)]
            out[rows] = True
        return out


_SPECIAL: dict[str, bool] = {}


def _special(key: str) -> bool:
    """Keys whose spans take the reference path: message content, per-request fees."""
    hit = _SPECIAL.get(key)
    if hit is None:
        hit = privacy.is_content_key(key) or (key.startswith("llmspend.")
                                              and key.endswith("_calls"))
        if len(_SPECIAL) > 100_000:
            _SPECIAL.clear()
        _SPECIAL[key] = hit
    return hit


def _map_distinct(arr: pa.Array, fn: Callable[[str], Any]) -> tuple[list[Any], np.ndarray]:
    """``fn`` once per distinct string: (results, per-row index into them, -1 for null)."""
    d = pc.dictionary_encode(arr)
    return ([fn(v) for v in d.dictionary.to_pylist()],
            d.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))


def _strings(arr: pa.Array, fn: Callable[[str], str | None]) -> pa.Array:
    """A string column with ``fn`` applied once per distinct value (nulls stay null)."""
    d = pc.dictionary_encode(arr)
    return pa.array([fn(v) for v in d.dictionary.to_pylist()], pa.string()).take(d.indices)


def _hex(arr: pa.Array, empty_is_null: bool = False) -> pa.Array:
    """Lowercase hex of every value of a binary column, without a Python loop."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    data, offsets = binary_buffers(arr)
    out = np.empty(2 * len(data), np.uint8)
    out[0::2], out[1::2] = HEX_DIGITS[data >> 4], HEX_DIGITS[data & 15]
    new_off = (offsets * 2).astype(np.int32)
    text = pa.Array.from_buffers(pa.string(), len(arr),
                                 [None, pa.py_buffer(new_off), pa.py_buffer(out)])
    if empty_is_null:
        text = pc.if_else(pc.equal(pc.binary_length(arr), 0), pa.scalar(None, pa.string()),
                          text)
    return text


def _one_of(values: np.ndarray, allowed: Iterable[int]) -> np.ndarray:
    """``np.isin`` for a handful of small ints, without its per-call overhead."""
    out = np.zeros(values.shape, bool)
    for a in allowed:
        out |= values == a
    return out


def _lengths_are(arr: pa.Array, allowed: tuple[int, ...]) -> bool:
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    return bool(np.isin(lengths, allowed).all())


# ------------------------------------------------------------------ exact money


def pico(price: Decimal) -> int | None:
    """A per-million-token price in pico-dollars per token, or None if not whole."""
    p = price.scaleb(6)
    return int(p) if p == p.to_integral_value() else None


def scale_half_even(raw: np.ndarray, factor: Decimal) -> np.ndarray | None:
    """``raw * factor`` rounded half-even to integers (exact), or None if that could
    overflow int64 (the caller then takes the reference path)."""
    if factor == 1:
        return raw
    sign, _, exp = factor.as_tuple()
    if sign or not len(raw) or int(raw.min()) < 0:
        return None if sign else raw
    exp = int(exp)
    num = int(factor.scaleb(-exp)) if exp < 0 else int(factor)
    if int(raw.max()) * num >= 2**62 or (exp < 0 and -exp > 18):
        return None
    x = raw * num
    if exp >= 0:
        return x
    d = 10 ** -exp
    q, r = np.divmod(x, d)
    return q + ((2 * r > d) | ((2 * r == d) & (q % 2 == 1)))


def _prices(p: pricing.Prices) -> tuple[int, ...] | None:
    """(input, cache_read, cache_write, output, reasoning) in pico per token."""
    out = tuple(pico(x) for x in (p.input, p.cache_read, p.cache_write, p.output,
                                  p.reasoning))
    return None if any(x is None or not 0 <= x < _SAFE for x in out) else out  # type: ignore


# ------------------------------------------------------------------ the batch


def _attr_keys(ctx: ref._Context) -> tuple[list[str], list[str]]:
    """(span keys, resource keys) the normaliser reads."""
    span = [s.key for srcs in cv.FIELDS.values() for s in srcs]
    span += [s.when[0] for srcs in cv.FIELDS.values() for s in srcs if s.when]
    span += list(cv.KIND_KEYS) + [k for _, keys, _, _ in cv.CONVENTION_MARKERS for k in keys]
    span += [cv.BATCH_ATTRIBUTE, *cv.SAMPLING_ATTRIBUTES, *privacy.HASH_ATTRIBUTES,
             "gen_ai.system"]
    attribution = [k for keys in ctx.attribution.values() for k in keys]
    res = ["service.name", *(r[0] for _, _, _, r in cv.CONVENTION_MARKERS if r),
           *attribution]
    return list(dict.fromkeys(span + attribution)), list(dict.fromkeys(res))


class _Batch:
    """Per-span arrays of one batch, and the mask of spans for the reference path."""

    def __init__(self, spans: pa.Table, ctx: ref._Context) -> None:
        self.spans, self.ctx, self.n = spans, ctx, spans.num_rows
        span_keys, res_keys = _attr_keys(ctx)
        self.A = _Attrs(spans.column("attributes"), span_keys)
        self.R = _Attrs(spans.column("resource_attributes"), res_keys)
        self.slow = self.A.dup_rows | self.R.dup_rows
        self.col = {c: spans.column(c).combine_chunks() for c in
                    ("tenant", "trace_id", "span_id", "parent_span_id", "trace_state",
                     "name", "status_message", "scope_name")}

    def mark(self, rows: np.ndarray) -> None:
        self.slow |= rows

    def string_field(self, name: str, allowed: tuple[int, ...] = (S.STRING,)) -> pa.Array:
        """``_str(first(attrs, name))`` for spans whose pick is a plain string."""
        p = self.A.first(cv.FIELDS[name])
        self.mark((p >= 0) & ~_one_of(self.A.type_at(p), allowed))
        return self.A.str_at(p)

    def token_field(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(count, present) for spans whose pick is a non-negative integer."""
        p = self.A.first(cv.FIELDS[name])
        count = self.A.int_pad[p]
        self.mark((p >= 0) & ((self.A.type_at(p) != S.INT) | (count < 0)))
        return np.where(p >= 0, count, 0), p >= 0

    def lookup(self, keys: Sequence[str]) -> pa.Array:
        """``_lookup(keys, attrs, res)``: first valued key on the span, then resource."""
        out = pa.nulls(self.n, pa.string())
        found = np.zeros(self.n, bool)
        for attrs in (self.A, self.R):
            present = [pk for pk in map(attrs.pos, keys) if pk is not attrs._absent]
            if not present:
                continue
            p = np.full(self.n, -1, np.int64)
            for pk in present:
                ok = (p < 0) & ~found & attrs.is_valued(pk)
                p[ok] = pk[ok]
            self.mark((p >= 0) & (attrs.type_at(p) != S.STRING))
            out = pc.coalesce(out, attrs.str_at(p))
            found |= p >= 0
        return out

    def scalar_field(self, name: str, check: Callable[[Decimal], bool],
                     convert: Callable[[Decimal], Any], arrow_type: pa.DataType) -> pa.Array:
        """A numeric field through the reference's ``_number``, once per distinct value
        (doubles told apart by their bits: -0.0 is not 0.0)."""
        p = self.A.first(cv.FIELDS[name])
        t = self.A.type_at(p)
        self.mark((p >= 0) & ~_one_of(t, (S.INT, S.DOUBLE)))
        results: list[Any] = []
        index = np.full(self.n, -1, np.int64)
        for typ, values, as_py in ((S.INT, self.A.int, int), (S.DOUBLE, self.A.dbl, float)):
            rows = np.nonzero((p >= 0) & (t == typ))[0]
            if not len(rows):
                continue
            raw = values[p[rows]]
            bits = raw.view(np.int64) if typ == S.DOUBLE else raw.astype(np.int64)
            _, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
            code = np.empty(len(first), np.int64)
            for j, k in enumerate(first.tolist()):
                d = ref._number(as_py(raw[k]))
                try:
                    if d is None or not check(d):
                        raise InvalidOperation
                    results.append(convert(d))
                    code[j] = len(results) - 1
                except InvalidOperation:
                    code[j] = -1
            codes = code[inverse.reshape(-1)]
            index[rows] = codes
            self.slow[rows[codes < 0]] = True
        return pa.array(results, arrow_type).take(pa.array(index, mask=index < 0))


def _kinds(b: _Batch) -> np.ndarray:
    """Kind code per span from the markers; spans that need more go the reference way."""
    A = b.A
    kind = np.full(b.n, _OTHER, np.int64)
    decided = np.zeros(b.n, bool)
    for key in cv.KIND_KEYS:
        p = A.pos(key)
        t = A.type_at(p)
        here = ~decided & (p >= 0) & (t != S.EMPTY)
        b.mark(here & (t != S.STRING))
        codes, idx = _map_distinct(pc.utf8_lower(A.str_at(np.where(here, p, -1))),
                                   lambda v, key=key: _MARKERS[key].get(v, _OTHER))
        kind[here & (idx >= 0)] = np.array(codes, np.int64)[idx[here & (idx >= 0)]]
        decided |= here
    maybe_inferred = (kind == _OTHER) & (
        (A.first(cv.FIELDS["request_model"]) >= 0) | (A.first(cv.FIELDS["response_model"]) >= 0))
    b.mark(maybe_inferred)
    return kind


def _conventions(b: _Batch) -> np.ndarray:
    """:func:`pipeline.conventions.convention` per span, as an index into CONVENTIONS."""
    out = np.full(b.n, cv.CONVENTIONS.index(cv.SEMCONV), np.int64)
    done = np.zeros(b.n, bool)
    scope = b.col["scope_name"]
    for name, keys, prefixes, res in cv.CONVENTION_MARKERS:
        hit = np.zeros(b.n, bool)
        for k in keys:
            hit |= b.A.pos(k) >= 0
        for prefix in prefixes:
            hit |= pc.starts_with(scope, prefix).to_numpy(zero_copy_only=False)
        if res is not None:
            hit |= b.R.equals(b.R.pos(res[0]), res[1])
        out[hit & ~done] = cv.CONVENTIONS.index(name)
        done |= hit
    return out


def _parents(b: _Batch, records: Sequence[int] | None = None) -> np.ndarray | None:
    """Row of each span's parent within the batch, or within its record when the batch
    is several ``records`` (-1: none); None when span ids are not the usual 16/8 bytes
    or repeat (the reference handles such batches)."""
    trace, span, parent = b.col["trace_id"], b.col["span_id"], b.col["parent_span_id"]
    if not (_lengths_are(trace, (16,)) and _lengths_are(span, (8,))
            and _lengths_are(parent, (0, 8))):
        return None
    tenant = b.col["tenant"].cast(pa.binary())
    if records is not None:             # the record's number joins the key
        number = np.repeat(np.arange(len(records), dtype=">u4"), records)
        scope = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4), b.n, [None, pa.py_buffer(number.tobytes())]).cast(pa.binary())
        tenant = pc.binary_join_element_wise(tenant, scope, b"")
    key = pc.binary_join_element_wise(trace, span, tenant, b"")
    # Unique keys: each key's first occurrence is itself (a set lookup, where
    # count_distinct's hash aggregation costs five times as much).
    first = pc.index_in(key, value_set=key).to_numpy(zero_copy_only=False)
    if not np.array_equal(first, np.arange(b.n)):
        return None
    pkey = pc.binary_join_element_wise(trace, parent, tenant, b"")
    idx = pc.index_in(pkey, value_set=key).fill_null(-1).to_numpy(zero_copy_only=False)
    has_parent = pc.binary_length(parent).to_numpy(zero_copy_only=False) > 0
    return np.where(has_parent, idx, -1).astype(np.int64)


def _ancestor_agents(parent: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Row of the nearest agent span above each span (-1: none), cycle-safe."""
    found = np.full(len(parent), -1, np.int64)
    cur = parent.copy()
    for _ in range(ref._MAX_ANCESTORS):
        live = cur >= 0
        if not live.any():
            break
        agent = np.zeros(len(cur), bool)
        agent[live] = kind[cur[live]] == _AGENT
        found[agent] = cur[agent]
        nxt = np.full(len(cur), -1, np.int64)
        step = live & ~agent
        nxt[step] = parent[cur[step]]
        cur = nxt
    return found


def _subset_dicts(spans: pa.Table, rows: np.ndarray) -> dict[str, Any]:
    """The reference's per-span structures for a few rows (the slow path's input)."""
    sub = spans.take(pa.array(rows, pa.int64()))
    cols = {c: sub.column(c).to_pylist() for c in ref.ROW_COLUMNS}
    attrs, structured = ref._attr_maps(sub.column("attributes"))
    res, _ = ref._attr_maps(sub.column("resource_attributes"))
    return {"cols": cols, "attrs": attrs, "structured": structured, "res": res,
            "events": sub.column("events").to_pylist()}


def normalise(spans: pa.Table, settings: Settings, catalog: pricing.Catalog,
              hash_key: bytes, *, now: dt.datetime | None = None,
              records: Sequence[int] | None = None) -> ref.NormaliseResult:
    """Same contract and result as :func:`pipeline.normalise.normalise`, per column.

    ``records``: ``spans`` is several records' batches concatenated, of these lengths.
    Each record is then normalised as if alone (ancestor agents and duplicate spans are
    looked for within its own spans only), so the result is the concatenation of the
    per-record results, and batching records changes nothing but speed: a batch costs
    several milliseconds whatever its size (pyarrow and numpy calls), a span a few us."""
    ctx = ref._context(settings, catalog, hash_key, now)
    if spans.num_rows == 0:
        return _reference(spans, settings, catalog, hash_key, now=now)
    if records is not None and sum(records) != spans.num_rows:
        raise ValueError(f"records {list(records)} do not add up to {spans.num_rows} spans")
    if records is not None and len(records) < 2:
        records = None
    b = _Batch(spans, ctx)
    parent = _parents(b, records)
    if parent is None:
        if records is not None:           # unusual ids: each record on its own
            return _each_record(spans, records, settings, catalog, hash_key, now)
        return _reference(spans, settings, catalog, hash_key, now=now)
    A, n = b.A, b.n

    # Spans the reference handles whole: content, fees, events, sampling, opted-in tenants.
    b.mark(A.rows_having(k for k in A.distinct_keys.to_pylist() if k is not None and _special(k)))
    b.mark(pc.list_value_length(spans.column("events")).to_numpy(zero_copy_only=False) > 0)
    b.mark(pc.not_equal(b.col["trace_state"], "").to_numpy(zero_copy_only=False))
    b.mark(A.rows_having(cv.SAMPLING_ATTRIBUTES))
    if ctx.keep_content:
        b.mark(pc.is_in(b.col["tenant"], value_set=pa.array(sorted(ctx.keep_content), pa.string()))
               .to_numpy(zero_copy_only=False))

    kind = _kinds(b)
    inferred = np.zeros(n, bool)
    early = np.nonzero(b.slow)[0]
    if len(early):                         # their kinds by the reference (inference...)
        d = _subset_dicts(spans, early)
        for r, i in enumerate(early):
            k, inf = ref._kind(d["attrs"][r])
            kind[i], inferred[i] = _KIND_CODE[k], inf
    is_call = (kind == _LLM) | (kind == _TOOL)
    is_llm = kind == _LLM

    f = _fields(b, kind, is_llm)
    priced = _price(b, f, is_llm, is_call)

    agent_row = _ancestor_agents(parent, kind)
    fast = np.nonzero(is_call & ~b.slow)[0]
    slow = np.nonzero(is_call & b.slow)[0]
    agents = _agent_names(b, f, np.unique(agent_row[np.concatenate([fast, slow])]))
    calls = _fast_table(b, f, priced, fast, agent_row, agents)
    if len(slow):                          # the reference path's calls, then batch order
        calls = pa.concat_tables([calls, _slow_table(spans, ctx, slow, kind, inferred,
                                                     agent_row, agents)])
        order = np.concatenate([fast, slow])
        calls = calls.take(pa.array(np.argsort(order, kind="stable")))
    # else ``fast`` (from np.nonzero) is in batch order already: no copy of every column
    return ref.NormaliseResult(calls, _stats(n, kind, calls))


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel before the first real batch, as
    the stage does for the decoder's: a worker's first batch would otherwise wait."""
    _place(np.zeros(2, np.int64), np.full(1, -1, np.int64), 1)


def _each_record(spans: pa.Table, records: Sequence[int], settings: Settings,
                 catalog: pricing.Catalog, hash_key: bytes, now: dt.datetime | None
                 ) -> ref.NormaliseResult:
    """Several records normalised one by one, results concatenated."""
    tables, stats, lo = [], Counter(), 0
    for n in records:
        one = normalise(spans.slice(lo, n), settings, catalog, hash_key, now=now)
        tables.append(one.calls)
        stats.update(one.stats)
        lo += n
    return ref.NormaliseResult(pa.concat_tables(tables), stats)


def _agent_names(b: _Batch, f: dict[str, Any], rows: np.ndarray
                 ) -> dict[int, tuple[str | None, str | None]]:
    """(name, id) each agent span lends its descendants, by the reference's rule
    (:func:`pipeline.normalise._agent_of`): from the fields already gathered when both
    picks are plain strings or absent, else from the reference's own dicts."""
    rows = rows[rows >= 0]
    if not len(rows):
        return {}
    A = b.A
    plain = ~A.dup_rows[rows]
    for field in ("agent_name", "agent_id"):
        p = A.first(cv.FIELDS[field])[rows]
        plain &= (p < 0) | (A.type_at(p) == S.STRING)
    out: dict[int, tuple[str | None, str | None]] = {}
    idx = pa.array(rows, pa.int64())
    names = f["agent_name"].take(idx).to_pylist()
    ids = f["agent_id"].take(idx).to_pylist()
    span_names = b.col["name"].take(idx).to_pylist()
    for r, i in enumerate(rows.tolist()):
        if plain[r]:
            out[i] = (names[r] or span_names[r].removeprefix("invoke_agent").strip() or None,
                      ids[r])
    rest = rows[~plain]
    if len(rest):
        d = _subset_dicts(b.spans, rest)
        out.update({int(i): ref._agent_of(d["attrs"][r], d["cols"]["name"][r])
                    for r, i in enumerate(rest)})
    return out


def _fields(b: _Batch, kind: np.ndarray, is_llm: np.ndarray) -> dict[str, Any]:
    """Every non-price column as arrays over all spans; marks spans needing the reference."""
    A, R, ctx = b.A, b.R, b.ctx
    f: dict[str, Any] = {"kind": kind}
    f["conv"] = _conventions(b)
    raw_provider = b.string_field("provider")
    canon, kidx = _map_distinct(raw_provider, cv.canonical_provider)  # (name, known)
    f["provider"] = pa.array([c for c, _ in canon], pa.string()).take(
        pa.array(kidx, mask=kidx < 0))
    known = np.array([k for _, k in canon] + [False])       # index -1: no provider
    f["unknown_provider"] = is_llm & ~known[kidx]
    tok = {}
    for name in ("input", "output", "cache_read", "cache_write", "reasoning", "total"):
        tok[name], tok[name + "_present"] = b.token_field(name + "_tokens")
    inp, out, cr, cw, rs = (tok[k] for k in ("input", "output", "cache_read", "cache_write",
                                             "reasoning"))
    cached = cr + cw
    system = pc.utf8_lower(A.str_at(np.where(A.type_at(A.pos("gen_ai.system")) == S.STRING,
                                             A.pos("gen_ai.system"), -1)))
    excl = ((f["conv"] == cv.CONVENTIONS.index(cv.OPENLIT))
            & pc.fill_null(pc.equal(f["provider"], "anthropic"), False)
            .to_numpy(zero_copy_only=False)) | \
        pc.fill_null(pc.equal(system, "strands-agents"), False).to_numpy(zero_copy_only=False)
    by_total = tok["output_present"] & tok["total_present"] & (tok["total"] == inp + out + cached)
    added = tok["input_present"] & (cached > 0) & (excl | by_total)
    tok["input"] = inp = np.where(added, inp + cached, inp)
    f["pre_flags"] = [(f["unknown_provider"], "unknown_provider"),
                      (added, "input_excluded_cache")]
    b.mark(cached > inp)                                                # cached_above_input
    b.mark(rs > out)                                                    # reasoning_above_output
    f["tok"] = tok

    start = b.spans.column("start_time_unix_nano").to_numpy().astype(np.uint64)
    end = b.spans.column("end_time_unix_nano").to_numpy().astype(np.uint64)
    b.mark((start >= 2**62) | (end >= 2**62))
    start, end = start.astype(np.int64), end.astype(np.int64)
    b.mark((start == 0) | (start > ctx.now_ns + ref.CLOCK_SKEW_NS) | (end == 0)
           | (end < start) | (end - start > ref.ABSURD_LATENCY_NS))
    f["start"], f["end"] = start, end

    for name in ("operation", "request_model", "response_model", "session_id",
                 "agent_name", "agent_id", "tool_name", "tool_call_id", "error_type",
                 "server_address"):
        f[name] = b.string_field(name)
    f["finish_reasons"] = _strings(b.string_field("finish_reasons", (S.STRING, S.ARRAY)),
                                   ref._list_text)
    f["ttft"] = b.scalar_field("ttft_s", lambda d: d >= 0, lambda d: float(d * 1000),
                               pa.float64())
    f["app_cost"] = b.scalar_field("app_reported_cost", lambda d: abs(d) < Decimal(10) ** 20,
                                   pricing.to_money, C.MONEY)
    bp = A.pos(cv.BATCH_ATTRIBUTE)
    bt = A.type_at(bp)
    b.mark((bp >= 0) & ~_one_of(bt, (S.BOOL, S.EMPTY)))
    f["batch"] = (bt == S.BOOL) & A.bool_pad[bp]
    for key in privacy.HASH_ATTRIBUTES:
        p = A.pos(key)
        b.mark((p >= 0) & ~_one_of(A.type_at(p), (S.STRING, S.EMPTY)))
        f[key] = pc.if_else(pc.equal(A.str_at(p), ""), pa.scalar(None, pa.string()),
                            A.str_at(p))
    sp = R.pos("service.name")
    b.mark((sp >= 0) & ~_one_of(R.type_at(sp), (S.STRING, S.EMPTY)))
    f["service"] = R.str_at(sp)
    for name in ("team", "use_case", "unit_type", "unit_id", "prompt_version", "environment"):
        f[name] = b.lookup(ctx.attribution[name])
    user = pc.coalesce(b.lookup(ctx.attribution["user"]), b.string_field("user_id"))
    if ctx.settings.privacy.pseudonymise_users:
        user = _strings(user, lambda v: privacy.keyed_hash(ctx.key, v))
    f["user"] = user
    status = b.spans.column("status_code").to_numpy()
    own_error = f["error_type"]
    is_error = (status == S.STATUS_ERROR) | pc.is_valid(own_error).to_numpy(zero_copy_only=False)
    msg = pc.if_else(pc.equal(b.col["status_message"], ""), pa.scalar(None, pa.string()),
                     b.col["status_message"])
    f["error"] = is_error
    f["error_type"] = pc.if_else(pa.array(is_error), pc.coalesce(own_error, msg),
                                 pa.scalar(None, pa.string()))
    f["has_model"] = pc.is_valid(f["request_model"]).to_numpy(zero_copy_only=False) | \
        pc.is_valid(f["response_model"]).to_numpy(zero_copy_only=False)
    return f


def _price(b: _Batch, f: dict[str, Any], is_llm: np.ndarray, is_call: np.ndarray
           ) -> dict[str, Any]:
    """Costs in pico-dollars, model, price version, priced and issues per call span.

    Calls are grouped by (response model, request model, provider, tenant, batch) and
    price version; the reference :func:`pipeline.pricing.quote` prices one call of each
    group (model, version id, issues) and must agree with the integer cost of that call,
    or the group takes the reference path.
    """
    n, ctx = b.n, b.ctx
    out = {"list": np.zeros(n, np.int64), "cost": np.zeros(n, np.int64),
           "valid": np.zeros(n, bool), "priced": np.zeros(n, bool),
           "quote_id": np.full(n, -1, np.int64), "quotes": [],
           "issue_id": np.zeros(n, np.int64), "issue_sets": [()]}
    tool = is_call & ~is_llm
    out["valid"][tool] = out["priced"][tool] = True
    tok = f["tok"]
    unpriceable = is_llm & ~b.slow & ~(f["has_model"]
                                      & (tok["input_present"] | tok["output_present"]))
    if unpriceable.any():
        _early_exits(b, f, unpriceable, out)
    rows = np.nonzero(is_llm & ~b.slow & ~unpriceable)[0]
    if not len(rows):
        return out
    groups = _groups(rows, [f["response_model"], f["request_model"], f["provider"],
                            b.col["tenant"]], f["batch"][rows])
    cache = _quotes(ctx)
    plans: list[_Plan] = []
    plan_of = np.full(n, -1, np.int64)
    fresh_rows: list[tuple[int, pricing.Quote]] = []
    for key, idx in groups:
        if key not in cache.groups:
            q0 = _quote_one(ctx, f, key, int(idx[0]))
            cache.groups[key] = (ctx.catalog.entry(q0.provider, q0.model) if q0.model
                                 else None, q0)
        entry, q0 = cache.groups[key]
        term = ctx.overrides.get(key[3])
        if entry is not None and (entry.unit != pricing.UNIT_TOKEN or (
                term is not None and any(m.lower() in term.models
                                         for m in (entry.model, *entry.aliases)))):
            b.slow[idx] = True
            continue
        if entry is None:
            _set_quote(out, idx, q0)
            continue
        starts = np.array([v.start_ns for v in entry.versions], np.int64)
        vidx = np.searchsorted(starts, f["start"][idx], side="right") - 1
        for vi in np.unique(vidx).tolist():
            sel = idx[vidx == vi]
            q = cache.versions.get((key, vi))
            if q is None:
                q = cache.versions[(key, vi)] = _quote_one(ctx, f, key, int(sel[0]))
                fresh_rows.append((int(sel[0]), q))
            _set_quote(out, sel, q)
            if not q.priced:
                continue
            plan = _plan(entry, entry.versions[vi], key[4], term)
            if plan is None:
                b.slow[sel] = True
                continue
            plan_of[sel] = len(plans)
            plans.append(plan)
    if plans:
        _integer_costs(out, plans, plan_of, tok, b)
    for i, q in fresh_rows:                  # the reference agrees, or that group is slow
        if out["valid"][i] and (
                Decimal(int(out["list"][i])).scaleb(-C.MONEY_SCALE) != q.list_cost
                or Decimal(int(out["cost"][i])).scaleb(-C.MONEY_SCALE) != q.cost):
            log.warning("integer pricing disagrees with the reference for %s at %s "
                        "(%s, %s pico): priced by the reference", q.model, q.price_version,
                        out["list"][i], out["cost"][i])
            b.slow[plan_of == plan_of[i]] = True
    return out


def _early_exits(b: _Batch, f: dict[str, Any], mask: np.ndarray, out: dict[str, Any]) -> None:
    """LLM calls the reference leaves unpriced before quoting (``normalise._price``): no
    model (``missing_model``), or no input or output count (``no_usage``) unless the model
    is priced by GPU time (those take the reference path). Errors and timeouts often end
    this way, so they are common, not odd. Their cost stays null and unpriced."""
    no_model = mask & ~f["has_model"]
    _set_issues(out, np.nonzero(no_model)[0], ("missing_model",))
    no_usage = np.nonzero(mask & f["has_model"])[0]
    if not len(no_usage):
        return
    ctx = b.ctx
    name = pc.coalesce(f["response_model"], f["request_model"])
    for (model, provider, _), idx in _groups(no_usage, [name, f["provider"]],
                                             np.zeros(len(no_usage), bool)):
        entry, _ = ctx.catalog.resolve(model, provider, ctx.settings.pricing.aliases)
        if entry is not None and entry.unit == pricing.UNIT_GPU_SECOND:
            b.slow[idx] = True
        else:
            _set_issues(out, idx, ("no_usage",))


def _groups(rows: np.ndarray, columns: list[pa.Array], flag: np.ndarray
            ) -> list[tuple[tuple, np.ndarray]]:
    """``rows`` grouped by their values in ``columns`` (strings, nulls included) and
    ``flag``: (key tuple, its rows ascending) per group, in order of first appearance,
    with one Python step per group, not per row."""
    idx = pa.array(rows, pa.int64())
    code = flag.astype(np.int64)
    labels: list[tuple[list[Any], np.ndarray]] = []
    for col in columns:
        d = pc.dictionary_encode(col.take(idx))
        ids = d.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        labels.append(([*d.dictionary.to_pylist(), None], ids))   # id -1: null
        # re-densified after every column, so that the code cannot overflow
        _, code = np.unique(code * (len(d.dictionary) + 1) + ids + 1, return_inverse=True)
        code = code.reshape(-1)
    order = np.argsort(code, kind="stable")
    out = []
    for members in np.split(order, np.flatnonzero(np.diff(code[order])) + 1):
        i = int(members[0])
        key = (*(names[ids[i]] for names, ids in labels), bool(flag[i]))
        out.append((i, key, rows[members]))
    out.sort(key=lambda g: g[0])
    return [(key, members) for _, key, members in out]


@dataclass(frozen=True)
class _Plan:
    """How the calls of one (group, price version) are priced in integers: pico-dollar
    rates per token part (base, then tiers lowest threshold first) and the exact factors
    of list cost (batch multiplier) and tenant cost (and discount)."""

    base: tuple[int, ...]
    tiers: tuple[tuple[int, tuple[int, ...]], ...]
    list_factor: Decimal
    cost_factor: Decimal


def _plan(entry: pricing.ModelEntry, v: pricing.PriceVersion, batch: bool,
          term: pricing.TenantOverride | None) -> _Plan | None:
    """The integer plan of a version, or None when a price is finer than a pico-dollar
    per token (the reference prices those)."""
    assert v.base is not None
    base = _prices(v.base)
    tiers = tuple((t.above_input_tokens, _prices(t)) for t in reversed(v.tiers))
    if base is None or any(tp is None for _, tp in tiers):
        return None
    factor = entry.batch_multiplier if batch and entry.batch_multiplier is not None \
        else Decimal(1)
    cost_factor = factor if term is None or term.discount is None else \
        factor * (1 - term.discount)
    return _Plan(base, tiers, factor, cost_factor)  # type: ignore[arg-type]


def _integer_costs(out: dict[str, Any], plans: list[_Plan], plan_of: np.ndarray,
                   tok: dict[str, np.ndarray], b: _Batch) -> None:
    """List and tenant cost of every planned call at once, exactly (int64 pico-dollars);
    calls whose counts or costs could overflow take the reference path."""
    rows = np.nonzero(plan_of >= 0)[0]
    parts = np.stack([tok["input"][rows] - tok["cache_read"][rows] - tok["cache_write"][rows],
                      tok["cache_read"][rows], tok["cache_write"][rows],
                      tok["output"][rows] - tok["reasoning"][rows], tok["reasoning"][rows]],
                     axis=1)
    big = (parts >= _SAFE).any(axis=1) | (tok["input"][rows] >= _SAFE)
    pid = plan_of[rows]
    rates = np.array([p.base for p in plans], np.int64)[pid]
    for j, p in enumerate(plans):
        for above, tp in p.tiers:             # lowest threshold first: the highest wins
            hit = (pid == j) & (tok["input"][rows] > above)
            rates[hit] = tp
    raw = (np.where(big[:, None], 0, parts) * rates).sum(axis=1)
    list_pico, cost_pico = raw.copy(), raw.copy()
    ok = ~big
    factors = {(p.list_factor, p.cost_factor) for p in plans} - {(Decimal(1), Decimal(1))}
    for lf, cf in factors:
        sel = np.isin(pid, [j for j, p in enumerate(plans)
                            if (p.list_factor, p.cost_factor) == (lf, cf)])
        for target, factor in ((list_pico, lf), (cost_pico, cf)):
            scaled = scale_half_even(raw[sel], factor)
            if scaled is None:
                ok &= ~sel
            else:
                target[sel] = scaled
    b.slow[rows[~ok]] = True
    good = rows[ok]
    out["list"][good], out["cost"][good] = list_pico[ok], cost_pico[ok]
    out["valid"][good] = True


class _QuoteCache:
    """Reference quotes per group and price version, kept across batches for one
    (catalog, pricing settings) pair: what they say does not depend on token counts."""

    def __init__(self, owner: tuple[Any, Any]) -> None:
        self.owner = owner
        self.groups: dict[tuple, tuple[pricing.ModelEntry | None, pricing.Quote]] = {}
        self.versions: dict[tuple, pricing.Quote] = {}


_QUOTE_CACHE: list[_QuoteCache] = []


def _quotes(ctx: ref._Context) -> _QuoteCache:
    """The cache of this catalog and these pricing settings: a new one when they change,
    or when it holds 50,000 entries (model names come from spans: unbounded)."""
    owner = (ctx.catalog, ctx.settings.pricing)
    if not _QUOTE_CACHE or _QUOTE_CACHE[0].owner[0] is not owner[0] or \
            _QUOTE_CACHE[0].owner[1] is not owner[1] or \
            len(_QUOTE_CACHE[0].versions) + len(_QUOTE_CACHE[0].groups) > 50_000:
        _QUOTE_CACHE[:] = [_QuoteCache(owner)]
    return _QUOTE_CACHE[0]


def _quote_one(ctx: ref._Context, f: dict[str, Any], key: tuple, i: int) -> pricing.Quote:
    """The reference price of call ``i`` of a group (its model, version id and issues)."""
    resp, req, provider, tenant, batch = key
    tok = f["tok"]
    u = pricing.Usage(int(tok["input"][i]), int(tok["output"][i]), int(tok["cache_read"][i]),
                      int(tok["cache_write"][i]), int(tok["reasoning"][i]),
                      int(f["end"][i] - f["start"][i]), batch)
    return pricing.quote(ctx.catalog, (resp, req), provider, u, int(f["start"][i]),
                         tenant=tenant, overrides=ctx.overrides,
                         aliases=ctx.settings.pricing.aliases)


def _set_issues(out: dict[str, Any], sel: np.ndarray, issues: tuple[str, ...]) -> None:
    out["issue_id"][sel] = len(out["issue_sets"])
    out["issue_sets"].append(issues)


def _set_quote(out: dict[str, Any], sel: np.ndarray, q: pricing.Quote) -> None:
    _set_issues(out, sel, q.issues)
    out["quote_id"][sel] = len(out["quotes"])       # (model, price version) of the rows
    out["quotes"].append((q.model, q.price_version if q.priced else None))
    out["priced"][sel] = q.priced


def _call_ids(tenant: pa.Array, trace: pa.Array, span: pa.Array) -> pa.Array:
    """:func:`pipeline.normalise.call_id` of every row, hashed in one kernel over the
    id bytes sliced from the columns' buffers."""
    return call_ids.call_ids(tenant, _fixed(trace, 16), _fixed(span, 8))


def _fixed(arr: pa.Array, width: int) -> np.ndarray:
    """The bytes of a binary column whose values all have ``width`` bytes, (n, width)."""
    return binary_buffers(arr)[0].reshape(len(arr), width)


def _fast_table(b: _Batch, f: dict[str, Any], p: dict[str, Any], rows: np.ndarray,
                agent_row: np.ndarray, agents: dict[int, tuple[str | None, str | None]]
                ) -> pa.Table:
    """The calls table of the spans the columnar path priced, in batch order."""
    idx = pa.array(rows, pa.int64())
    take = lambda a: a.take(idx)  # noqa: E731
    tenant = take(b.col["tenant"])
    trace, span = take(b.col["trace_id"]), take(b.col["span_id"])
    trace_hex = _hex(trace)
    call_ids = _call_ids(tenant, trace, span)
    tok = f["tok"]
    anc = agent_row[rows]
    names = [None, *(agents[j][0] for j in agents)]
    ids = [None, *(agents[j][1] for j in agents)]
    slot = np.zeros(b.n + 1, np.int64)          # slot[-1]: no agent above
    slot[list(agents)] = np.arange(1, len(agents) + 1)
    which = pa.array(slot[anc], pa.int64())
    anc_name = pa.array(names, pa.string()).take(which)
    anc_id = pa.array(ids, pa.string()).take(which)
    def ints(name: str) -> pa.Array:
        return pa.array(tok[name][rows], pa.int64(), mask=~tok[name + "_present"][rows])

    start, end = f["start"][rows], f["end"][rows]
    unit = np.int64(1000)
    quote = p["quote_id"][rows]
    quote = pa.array(quote, mask=quote < 0)
    cols = {
        C.CALL_ID: call_ids,
        C.KIND: _KIND_TEXT.take(f["kind"][rows]),
        C.TENANT: tenant,
        C.SERVICE: take(f["service"]),
        C.ENVIRONMENT: take(f["environment"]),
        C.TRACE_ID: trace_hex,
        C.SPAN_ID: _hex(span),
        C.PARENT_SPAN_ID: _hex(take(b.col["parent_span_id"]), empty_is_null=True),
        C.SESSION_ID: pc.coalesce(take(f["session_id"]), trace_hex),
        C.AGENT: pc.coalesce(take(f["agent_name"]), anc_name),
        C.AGENT_ID: pc.coalesce(take(f["agent_id"]), anc_id),
        C.OPERATION: take(f["operation"]),
        C.PROVIDER: take(f["provider"]),
        C.REQUEST_MODEL: take(f["request_model"]),
        C.RESPONSE_MODEL: take(f["response_model"]),
        C.MODEL: pa.array([m for m, _ in p["quotes"]], pa.string()).take(quote),
        C.INPUT_TOKENS: ints("input"),
        C.OUTPUT_TOKENS: ints("output"),
        C.CACHED_INPUT_TOKENS: ints("cache_read"),
        C.CACHE_WRITE_TOKENS: ints("cache_write"),
        C.REASONING_TOKENS: ints("reasoning"),
        C.START_TIME: pa.array(start // unit, pa.int64()).cast(C.TIME),
        C.END_TIME: pa.array(end // unit, pa.int64()).cast(C.TIME),
        C.LATENCY_MS: pa.array((end - start) / 1e6, pa.float64()),
        C.TTFT_MS: take(f["ttft"]),
        C.STATUS: _STATUS_TEXT.take(f["error"][rows].view(np.int8)),
        C.ERROR_TYPE: take(f["error_type"]),
        C.FINISH_REASON: take(f["finish_reasons"]),
        C.TOOL_NAME: take(f["tool_name"]),
        C.TOOL_CALL_ID: take(f["tool_call_id"]),
        C.TOOL_ARGS_HASH: take(f[privacy.TOOL_ARGS_HASH]),
        C.PROMPT_HASH: take(f[privacy.PROMPT_HASH]),
        C.LAST_MESSAGE_HASH: take(f[privacy.LAST_MESSAGE_HASH]),
        C.TEAM: take(f["team"]),
        C.USER_ID: take(f["user"]),
        C.USE_CASE: take(f["use_case"]),
        C.UNIT_TYPE: take(f["unit_type"]),
        C.UNIT_ID: take(f["unit_id"]),
        C.PROMPT_VERSION: take(f["prompt_version"]),
        C.COST_USD: money_from_pico(p["cost"][rows], p["valid"][rows]),
        C.LIST_COST_USD: money_from_pico(p["list"][rows], p["valid"][rows]),
        C.APP_REPORTED_COST_USD: take(f["app_cost"]),
        C.PRICED: pa.array(p["priced"][rows], pa.bool_()),
        C.PRICE_VERSION: pa.array([v for _, v in p["quotes"]], pa.string()).take(quote),
        C.BATCH: pa.array(f["batch"][rows], pa.bool_()),
        C.FEES: pa.nulls(len(rows), pa.string()),
        C.SAMPLING_RATIO: pa.nulls(len(rows), pa.float64()),
        C.SERVER_ADDRESS: take(f["server_address"]),
        C.CONVENTION: _CONVENTION_TEXT.take(f["conv"][rows]),
        C.ISSUES: _issues(f["pre_flags"], p["issue_id"], p["issue_sets"], rows),
        C.INPUT_MESSAGES: pa.nulls(len(rows), pa.string()),
        C.OUTPUT_MESSAGES: pa.nulls(len(rows), pa.string()),
    }
    return pa.Table.from_arrays([cols[name] for name in C.NAMES], schema=C.CALLS)


def _issues(pre: list[tuple[np.ndarray, str]], issue_id: np.ndarray,
            issue_sets: list[tuple[str, ...]], rows: np.ndarray) -> pa.Array:
    """The issues text of each row: the normaliser's own flags in the reference's order,
    then the pricing issues (each once)."""
    code = np.zeros(len(rows), np.int64)
    for bit, (mask, _) in enumerate(pre):
        code |= mask[rows].astype(np.int64) << bit
    pairs, which = np.unique(code * len(issue_sets) + issue_id[rows], return_inverse=True)
    texts = []
    for pair in pairs.tolist():                 # one text per distinct (flags, issues)
        c, q = divmod(pair, len(issue_sets))
        flags = [name for bit, (_, name) in enumerate(pre) if c >> bit & 1]
        flags += issue_sets[q]
        texts.append(",".join(dict.fromkeys(flags)) or None)
    return pa.array(texts, pa.string()).take(pa.array(which.reshape(-1), pa.int64()))


def _slow_table(spans: pa.Table, ctx: ref._Context, rows: np.ndarray, kind: np.ndarray,
                inferred: np.ndarray, agent_row: np.ndarray,
                agents: dict[int, tuple[str | None, str | None]]) -> pa.Table:
    """The reference's rows for the spans the columnar path left to it."""
    d = _subset_dicts(spans, rows)
    out = []
    for r, i in enumerate(rows):
        agent = agents.get(int(agent_row[i]), (None, None))
        row = ref._row(r, _KIND_NAMES[kind[i]], d["cols"], d["attrs"][r], d["res"][r],
                       d["structured"][r], d["events"][r] or None, agent, ctx)
        if inferred[i]:
            row[C.ISSUES] = ",".join(filter(None, ("kind_inferred", row[C.ISSUES])))
        out.append(row)
    return pa.Table.from_pylist(out, schema=C.CALLS)


def _stats(n: int, kind: np.ndarray, calls: pa.Table) -> Counter:
    """The reference's counters, from the kinds and the finished calls table."""
    stats: Counter = Counter(spans_seen=n)
    for code, name in ((_AGENT, "agent"), (_CHAIN, "chain"), (_OTHER, "other")):
        if (c := int((kind == code).sum())):
            stats[f"{name}_spans_skipped"] = c
    for code, name in ((_LLM, "llm_calls"), (_TOOL, "tool_calls")):
        if (c := int((kind == code).sum())):
            stats[name] = c
    counts = pc.value_counts(calls.column(C.ISSUES).combine_chunks()).to_pylist()
    for item in counts:
        if item["values"]:
            for flag in item["values"].split(","):
                stats[flag] += item["counts"]
    llm = pc.equal(calls.column(C.KIND), C.KIND_LLM)
    unpriced = pc.sum(pc.and_(llm, pc.invert(calls.column(C.PRICED)))).as_py() or 0
    if unpriced:
        stats["unpriced"] = unpriced
    return stats

