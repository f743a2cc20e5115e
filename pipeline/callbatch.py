"""A columnar view of ``llm_calls`` records for the stream stages that read them.

The aggregate stage (and the detectors after it) need a couple of dozen of the calls
columns, as Python lists for the keys and numpy arrays for everything summed. Building a
full Arrow table per record (``normalise.ndjson_to_calls``) costs ~40 us per call;
:func:`from_ndjson` goes straight from the NDJSON body to these columns with orjson in
~8 us, and :func:`from_table` gives the same view of an Arrow calls table (tests,
in-process use). Money becomes int64 pico-dollars (the calls schema's 12 decimal
places, exact); null token counts become 0 and null latencies NaN.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.arrow_buffers import money_to_pico, validity
from schemas import calls as C

#: Key-like columns kept as Python lists (``model`` already resolved, see below).
KEY_LISTS = (C.CALL_ID, C.KIND, C.TENANT, C.SERVICE, C.PROVIDER, C.MODEL, C.TEAM,
             C.USE_CASE, C.USER_ID, C.UNIT_TYPE, C.UNIT_ID, C.SESSION_ID, C.STATUS,
             C.ERROR_TYPE)
#: Token columns, in the order of :attr:`CallBatch.tokens`.
TOKEN_COLUMNS = (C.INPUT_TOKENS, C.OUTPUT_TOKENS, C.CACHED_INPUT_TOKENS,
                 C.CACHE_WRITE_TOKENS, C.REASONING_TOKENS)
_PICO = 10 ** C.MONEY_SCALE
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class CallBatch:
    """The calls of one ``llm_calls`` record, column by column.

    ``lists`` holds :data:`KEY_LISTS`; ``model`` there is the catalog model that priced
    the call, else the response model, else the requested one (unpriced traffic stays
    visible under the model it named)."""

    lists: dict[str, list]
    start_ms: np.ndarray  # int64
    latency_ms: np.ndarray  # float64, NaN when unknown
    ttft_ms: np.ndarray  # float64, NaN when unknown
    tokens: np.ndarray  # int64 (n, len(TOKEN_COLUMNS))
    cost_pico: np.ndarray  # int64 (n, 2): cost_usd, list_cost_usd; 0 when null
    priced: np.ndarray  # bool

    @property
    def n(self) -> int:
        return len(self.start_ms)

    def slice(self, start: int, stop: int) -> CallBatch:
        """Calls ``start:stop`` (numpy views, list copies): one batch's columns built
        once, then cut per ``llm_calls`` body (building costs per call *and* per batch)."""
        return CallBatch({k: v[start:stop] for k, v in self.lists.items()},
                         self.start_ms[start:stop], self.latency_ms[start:stop],
                         self.ttft_ms[start:stop], self.tokens[start:stop],
                         self.cost_pico[start:stop], self.priced[start:stop])

    @classmethod
    def empty(cls) -> CallBatch:
        return cls({k: [] for k in KEY_LISTS}, np.zeros(0, np.int64), np.zeros(0),
                   np.zeros(0), np.zeros((0, len(TOKEN_COLUMNS)), np.int64),
                   np.zeros((0, 2), np.int64), np.zeros(0, np.bool_))


def pico(text: str | None) -> int:
    """A decimal string of USD as exact int64 pico-dollars (more than 12 places: error)."""
    if text is None:
        return 0
    if len(text) > 13 and text[-13] == ".":  # what calls_to_ndjson writes: 12 places
        return int(text[:-13] + text[-12:])
    d = Decimal(text) * _PICO
    if d != d.to_integral_value():
        raise ValueError(f"money {text!r} has more than {C.MONEY_SCALE} decimal places")
    return int(d)


def _start_ms(texts: tuple[str, ...]) -> np.ndarray:
    """RFC 3339 UTC times to epoch ms (floored), in numpy's C parser when they end in 'Z'
    (what calls_to_ndjson writes), else one by one."""
    try:
        if all(t[-1] == "Z" for t in texts):
            us = np.array([t[:-1] for t in texts], "datetime64[us]")
            return us.astype(np.int64) // 1000
    except (ValueError, TypeError, IndexError):
        pass
    out = []
    for t in texts:
        d = dt.datetime.fromisoformat(t)
        if d.utcoffset() != dt.timedelta(0):
            raise ValueError(f"timestamp {t!r} is not UTC")
        out.append((d - _EPOCH) // dt.timedelta(microseconds=1) // 1000)
    return np.array(out, np.int64)


def _floats(values: tuple) -> np.ndarray:
    """Numbers or null to float64 (null -> NaN), in numpy's C conversion."""
    return np.array(values, np.float64)


def _counts(columns: list[tuple]) -> np.ndarray:
    """Integer columns (null -> 0) as int64 (n, k): through float64 in C when every value
    is exactly representable there (token counts always are), else exactly in Python."""
    f = np.array(columns, np.float64).T
    if np.nanmax(np.abs(f), initial=0.0) < 2**53:
        return np.nan_to_num(f, nan=0.0).astype(np.int64)
    return np.array([[v or 0 for v in col] for col in columns], np.int64).T.copy()


#: Every column from_ndjson reads, fetched per row in one C call (itemgetter).
_READ = (*KEY_LISTS, C.RESPONSE_MODEL, C.REQUEST_MODEL, *TOKEN_COLUMNS, C.COST_USD,
         C.LIST_COST_USD, C.START_TIME, C.LATENCY_MS, C.TTFT_MS, C.PRICED)
_AT = {name: i for i, name in enumerate(_READ)}
_GET = operator.itemgetter(*_READ)


def _resolve_models(model: list, response: Sequence, request: Sequence) -> None:
    """Unpriced calls (no catalog model) under the response model, else the requested
    one (an empty response model counts as none), in place."""
    for i, m in enumerate(model):
        if m is None:
            model[i] = response[i] or request[i]


def from_ndjson(body: bytes) -> CallBatch:
    """Parse one ``llm_calls`` record body (newline-delimited call objects).

    Raises ValueError on anything that is not a list of call objects with the calls
    columns this view needs."""
    body = body.strip()
    if not body:
        return CallBatch.empty()
    if b"\n\n" in body or b"\r" in body:  # blank lines or CRLF: normalise first
        body = b"\n".join(line.strip() for line in body.splitlines() if line.strip())
    try:
        rows = orjson.loads(b"[" + body.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"llm_calls record is not NDJSON: {exc}") from None
    try:
        cols = list(zip(*map(_GET, rows), strict=True))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"llm_calls record lacks calls columns: {exc!r}") from None
    try:
        lists = {k: list(cols[_AT[k]]) for k in KEY_LISTS}
        if None in lists[C.MODEL]:
            _resolve_models(lists[C.MODEL], cols[_AT[C.RESPONSE_MODEL]],
                            cols[_AT[C.REQUEST_MODEL]])
        n = len(rows)
        tokens = _counts([cols[_AT[c]] for c in TOKEN_COLUMNS])
        cost = np.empty((n, 2), np.int64)
        cost[:, 0] = list(map(pico, cols[_AT[C.COST_USD]]))
        cost[:, 1] = list(map(pico, cols[_AT[C.LIST_COST_USD]]))
        return CallBatch(lists, _start_ms(cols[_AT[C.START_TIME]]),
                         _floats(cols[_AT[C.LATENCY_MS]]), _floats(cols[_AT[C.TTFT_MS]]),
                         tokens, cost, np.array(cols[_AT[C.PRICED]], np.bool_))
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"llm_calls record has a malformed column: {exc!r}") from None


def _money_pico(col: pa.ChunkedArray) -> np.ndarray:
    """decimal128(38, 12) -> int64 pico-dollars, 0 for null (exact: a value beyond the
    int64 range raises, as :func:`pico` does in from_ndjson's np.array)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    low, fits = money_to_pico(arr)
    if not fits.all():
        return np.array([0 if v is None else int(v.scaleb(C.MONEY_SCALE))
                         for v in arr.to_pylist()], np.int64)
    return np.where(validity(arr), low, 0)


def from_table(calls: pa.Table) -> CallBatch:
    """The same view of an Arrow table on ``schemas.calls.CALLS``."""
    if calls.num_rows == 0:
        return CallBatch.empty()
    lists: dict[str, Any] = {k: calls.column(k).to_pylist() for k in KEY_LISTS}
    if None in lists[C.MODEL]:
        _resolve_models(lists[C.MODEL], calls.column(C.RESPONSE_MODEL).to_pylist(),
                        calls.column(C.REQUEST_MODEL).to_pylist())
    start = pc.cast(calls.column(C.START_TIME), pa.int64()).to_numpy(
        zero_copy_only=False) // 1000
    tokens = np.stack([pc.fill_null(calls.column(c), 0).to_numpy(zero_copy_only=False)
                       .astype(np.int64) for c in TOKEN_COLUMNS], axis=1)
    cost = np.stack([_money_pico(calls.column(C.COST_USD)),
                     _money_pico(calls.column(C.LIST_COST_USD))], axis=1)

    def floats(name: str) -> np.ndarray:
        return pc.fill_null(pc.cast(calls.column(name), pa.float64()), np.nan).to_numpy(
            zero_copy_only=False).astype(np.float64)

    return CallBatch(lists, start.astype(np.int64), floats(C.LATENCY_MS), floats(C.TTFT_MS),
                     tokens, cost, pc.fill_null(calls.column(C.PRICED), False).to_numpy(
                         zero_copy_only=False).astype(np.bool_))
