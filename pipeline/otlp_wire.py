"""Columnar OTLP protobuf decoder: ``ExportTraceServiceRequest`` bytes -> span batch.

:func:`decode_batch` returns exactly what the reference decoder returns
(``otlp.request_to_batch(otlp.parse_request(body), tenant)``) without building a Python
object per span or per attribute: numba kernels walk the protobuf wire format once and
record, per span, attribute, event and resource attribute, byte ranges into the body and
scalar values; the Arrow columns are then gathered from those ranges in bulk.

Why it is exact, not just close:

* protobuf parsing rules are followed where they change the result: fields in any
  order, last occurrence wins for scalars and strings, a singular message occurring
  twice is merged (status, scope, resource and attribute values are parsed into the same
  state; an array/kvlist value sent in several occurrences is re-parsed whole by
  protobuf), oneof members replace each other;
* everything the reference parser rejects is rejected here too, including in fields
  this decoder does not read (links, scope attributes, schema URLs, entity refs): those
  are walked by a generic validator driven by a field table built from the installed
  descriptors, which checks structure, nesting depth and UTF-8 of every string field;
* values that need Python semantics (array/kvlist attributes, rendered as JSON by
  ``json.dumps(any_value(v), ensure_ascii=False)``) are rendered by the reference code,
  for those attributes only.

Anything unusual (malformed bytes, a known field with an unexpected wire type, an enum
outside int8, deep nesting...) falls back to the reference decoder, which then either
returns the batch or raises :class:`pipeline.otlp.DecodeError`; :data:`STATS` counts
the fallbacks and their reasons.
"""

from __future__ import annotations

import binascii
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError as _PbDecodeError
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from pipeline import otlp
from pipeline.arrow_buffers import HEX_DIGITS
from schemas import spans as S

# ---------------------------------------------------------------- message and field table

# Messages the kernels parse by hand, by id (their order fixes the ids used in kernels).
_MESSAGES = (
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
    "opentelemetry.proto.trace.v1.ResourceSpans",
    "opentelemetry.proto.resource.v1.Resource",
    "opentelemetry.proto.trace.v1.ScopeSpans",
    "opentelemetry.proto.common.v1.InstrumentationScope",
    "opentelemetry.proto.trace.v1.Span",
    "opentelemetry.proto.trace.v1.Span.Event",
    "opentelemetry.proto.trace.v1.Status",
    "opentelemetry.proto.common.v1.KeyValue",
    "opentelemetry.proto.common.v1.AnyValue",
)
M_REQ, M_RS, M_RES, M_SS, M_SCOPE, M_SPAN, M_EVENT, M_STATUS, M_KV, M_AV = range(10)

# (message index, field name) -> (number, protobuf type) as the kernels read them.
_T = FieldDescriptor
EXPECTED_FIELDS: dict[tuple[int, str], tuple[int, int]] = {
    (M_REQ, "resource_spans"): (1, _T.TYPE_MESSAGE),
    (M_RS, "resource"): (1, _T.TYPE_MESSAGE),
    (M_RS, "scope_spans"): (2, _T.TYPE_MESSAGE),
    (M_RES, "attributes"): (1, _T.TYPE_MESSAGE),
    (M_SS, "scope"): (1, _T.TYPE_MESSAGE),
    (M_SS, "spans"): (2, _T.TYPE_MESSAGE),
    (M_SCOPE, "name"): (1, _T.TYPE_STRING),
    (M_SCOPE, "version"): (2, _T.TYPE_STRING),
    (M_SPAN, "trace_id"): (1, _T.TYPE_BYTES),
    (M_SPAN, "span_id"): (2, _T.TYPE_BYTES),
    (M_SPAN, "trace_state"): (3, _T.TYPE_STRING),
    (M_SPAN, "parent_span_id"): (4, _T.TYPE_BYTES),
    (M_SPAN, "name"): (5, _T.TYPE_STRING),
    (M_SPAN, "kind"): (6, _T.TYPE_ENUM),
    (M_SPAN, "start_time_unix_nano"): (7, _T.TYPE_FIXED64),
    (M_SPAN, "end_time_unix_nano"): (8, _T.TYPE_FIXED64),
    (M_SPAN, "attributes"): (9, _T.TYPE_MESSAGE),
    (M_SPAN, "events"): (11, _T.TYPE_MESSAGE),
    (M_SPAN, "status"): (15, _T.TYPE_MESSAGE),
    (M_EVENT, "time_unix_nano"): (1, _T.TYPE_FIXED64),
    (M_EVENT, "name"): (2, _T.TYPE_STRING),
    (M_EVENT, "attributes"): (3, _T.TYPE_MESSAGE),
    (M_STATUS, "message"): (2, _T.TYPE_STRING),
    (M_STATUS, "code"): (3, _T.TYPE_ENUM),
    (M_KV, "key"): (1, _T.TYPE_STRING),
    (M_KV, "value"): (2, _T.TYPE_MESSAGE),
    (M_AV, "string_value"): (1, _T.TYPE_STRING),
    (M_AV, "bool_value"): (2, _T.TYPE_BOOL),
    (M_AV, "int_value"): (3, _T.TYPE_INT64),
    (M_AV, "double_value"): (4, _T.TYPE_DOUBLE),
    (M_AV, "array_value"): (5, _T.TYPE_MESSAGE),
    (M_AV, "kvlist_value"): (6, _T.TYPE_MESSAGE),
    (M_AV, "bytes_value"): (7, _T.TYPE_BYTES),
    (M_AV, "string_value_strindex"): (8, _T.TYPE_INT32),
}

# Field kinds in the validation table: what a length-delimited occurrence must hold.
K_OTHER, K_STRING, K_MESSAGE, K_PACKED_VARINT, K_PACKED_FIXED32, K_PACKED_FIXED64 = range(6)
_VARINT_TYPES = {_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64, _T.TYPE_SINT32,
                 _T.TYPE_SINT64, _T.TYPE_BOOL, _T.TYPE_ENUM}
_FIXED32_TYPES = {_T.TYPE_FIXED32, _T.TYPE_SFIXED32, _T.TYPE_FLOAT}
_FIXED64_TYPES = {_T.TYPE_FIXED64, _T.TYPE_SFIXED64, _T.TYPE_DOUBLE}


def _descriptors() -> list:
    """Every message type reachable from the request, hand-parsed ones first."""
    by_name = {}
    todo = [ExportTraceServiceRequest.DESCRIPTOR]
    while todo:
        d = todo.pop(0)
        if d.full_name in by_name:
            continue
        by_name[d.full_name] = d
        todo += [f.message_type for f in d.fields if f.message_type is not None]
    missing = [m for m in _MESSAGES if m not in by_name]
    if missing:
        raise LookupError(f"messages not in the installed OTLP protos: {missing}")
    return [by_name[m] for m in _MESSAGES] + [d for n, d in by_name.items()
                                             if n not in _MESSAGES]


def field_table() -> tuple[np.ndarray, np.ndarray]:
    """(kind, child message id) per (message id, field number), from the descriptors.

    The validator uses it to reject exactly what the protobuf parser rejects in fields
    the kernels skip (bad UTF-8 in a link's trace_state, a malformed scope attribute...).
    """
    descs = _descriptors()
    ids = {d.full_name: i for i, d in enumerate(descs)}
    top = max(f.number for d in descs for f in d.fields)
    kinds = np.zeros((len(descs), top + 1), np.int8)
    child = np.full((len(descs), top + 1), -1, np.int32)
    for i, d in enumerate(descs):
        for f in d.fields:
            if f.type == _T.TYPE_GROUP:
                raise LookupError(f"group field {f.full_name} is not supported")
            if f.type == _T.TYPE_STRING:
                kinds[i, f.number] = K_STRING
            elif f.type == _T.TYPE_MESSAGE:
                kinds[i, f.number] = K_MESSAGE
                child[i, f.number] = ids[f.message_type.full_name]
            elif f.is_repeated and f.type in _VARINT_TYPES:
                kinds[i, f.number] = K_PACKED_VARINT
            elif f.is_repeated and f.type in _FIXED32_TYPES:
                kinds[i, f.number] = K_PACKED_FIXED32
            elif f.is_repeated and f.type in _FIXED64_TYPES:
                kinds[i, f.number] = K_PACKED_FIXED64
    return kinds, child


def field_mismatches() -> list[str]:
    """Differences between the field numbers the kernels use and the descriptors."""
    descs = _descriptors()
    out = []
    for (m, name), (number, typ) in EXPECTED_FIELDS.items():
        f = descs[m].fields_by_name.get(name)
        if f is None:
            out.append(f"{descs[m].full_name}.{name} missing")
        elif (f.number, f.type) != (number, typ):
            out.append(f"{descs[m].full_name}.{name} is {f.number}/{f.type}, "
                       f"kernel expects {number}/{typ}")
    av = descs[M_AV]
    oneof = [f.number for f in av.oneofs_by_name["value"].fields] if "value" in \
        av.oneofs_by_name else []
    if sorted(oneof) != list(range(1, 9)):
        out.append(f"AnyValue.value oneof holds fields {oneof}, kernel expects 1..8")
    return out


try:
    _KINDS, _CHILD = field_table()
    _MISMATCHES = field_mismatches()
except LookupError as _exc:  # a future proto layout: stay correct through the fallback
    _KINDS, _CHILD = np.zeros((1, 1), np.int8), np.full((1, 1), -1, np.int32)
    _MISMATCHES = [str(_exc)]
NATIVE = not _MISMATCHES
"""False when the installed OTLP protos differ from what the kernels read: every request
then takes the reference path (still correct, just slower)."""

# ---------------------------------------------------------------- statistics


@dataclass
class WireStats:
    """How requests were decoded: for benchmarks and metrics."""

    native: int = 0
    fallback: int = 0
    json_values: int = 0
    reasons: Counter = field(default_factory=Counter)

    def reset(self) -> None:
        self.native = self.fallback = self.json_values = 0
        self.reasons.clear()


STATS = WireStats()

# Kernel status codes (0 = decoded); the names go into STATS.reasons.
_REASONS = {
    1: "truncated or bad varint",
    2: "known field with an unexpected wire type",
    3: "invalid UTF-8",
    4: "nesting too deep",
    5: "enum outside int8",
    6: "(unused)",
    7: "bad tag or group",
    8: "bad packed field",
    9: "tables full",
}
E_TRUNC, E_WIRE, E_UTF8, E_DEPTH, E_ENUM, E_MERGE, E_TAG, E_PACKED, E_FULL = range(1, 10)
MAX_DEPTH = 48  # the protobuf parser allows 100; deeper than this goes to the reference

# ---------------------------------------------------------------- kernels: primitives


@njit(cache=True)
def _varint(buf: np.ndarray, p: int, end: int) -> tuple[int, int]:
    """(value as int64, position after it); position -1 when truncated or too long.

    int64 arithmetic on purpose: numba's uint64 shifts are several times slower.
    """
    if p < end and buf[p] < 0x80:
        return np.int64(buf[p]), p + 1
    result = 0
    shift = 0
    while p < end and shift < 64:
        b = np.int64(buf[p])
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if shift == 63 and b > 1:
                return 0, -1
            return result, p
        shift += 7
    return 0, -1


@njit(cache=True)
def _fixed64(buf: np.ndarray, p: int) -> int:
    """Little-endian 8 bytes as int64 bits (times are viewed as uint64, doubles as float64)."""
    v = 0
    for k in range(8):
        v |= np.int64(buf[p + k]) << (8 * k)
    return v


@njit(cache=True)
def _utf8_ok(buf: np.ndarray, a: int, b: int) -> bool:
    """Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as upb checks."""
    i = a
    while i < b:
        c = buf[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2:
            return False
        if c < 0xE0:
            if i + 1 >= b or (buf[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if i + 2 >= b:
                return False
            c1 = buf[i + 1]
            if (c1 & 0xC0) != 0x80 or (buf[i + 2] & 0xC0) != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return False
            i += 3
        elif c < 0xF5:
            if i + 3 >= b:
                return False
            c1 = buf[i + 1]
            if ((c1 & 0xC0) != 0x80 or (buf[i + 2] & 0xC0) != 0x80
                    or (buf[i + 3] & 0xC0) != 0x80):
                return False
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
                return False
            i += 4
        else:
            return False
    return True


@njit(cache=True)
def _tag(buf: np.ndarray, p: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag); position < 0 is an error code."""
    tag, p = _varint(buf, p, end)
    if p < 0:
        return 0, 0, -E_TRUNC
    if tag < 8 or tag > 0xFFFFFFFF:
        return 0, 0, -E_TAG
    return tag >> 3, tag & 7, p


@njit(cache=True)
def _packed_ok(buf: np.ndarray, a: int, b: int, kind: int) -> bool:
    if kind == K_PACKED_FIXED32:
        return (b - a) % 4 == 0
    if kind == K_PACKED_FIXED64:
        return (b - a) % 8 == 0
    p = a
    while p < b:
        _, p = _varint(buf, p, b)
        if p < 0:
            return False
    return True


@njit(cache=True)
def _check(buf: np.ndarray, p: int, end: int, msg: int, group: int, depth: int,
           kinds: np.ndarray, child: np.ndarray) -> int:
    """Validate a message (``group`` 0) in [p, end) or a group ``group`` starting at p.

    Returns the position after it, or minus an error code. Iterative (explicit stack) so
    that numba needs no recursion; unknown fields are skipped, known strings UTF-8 checked.
    """
    st_end = np.empty(MAX_DEPTH + 2, np.int64)
    st_msg = np.empty(MAX_DEPTH + 2, np.int64)
    st_grp = np.empty(MAX_DEPTH + 2, np.int64)
    sp = 0
    if depth > MAX_DEPTH:
        return -E_DEPTH
    nf = kinds.shape[1]
    while True:
        if p >= end:
            if p > end or group != 0:
                return -E_TRUNC
            if sp == 0:
                return p
            sp -= 1
            end, msg, group = st_end[sp], st_msg[sp], st_grp[sp]
            depth -= 1
            continue
        fn, wt, p = _tag(buf, p, end)
        if p < 0:
            return p
        if wt == 4:
            if group != fn:
                return -E_TAG
            if sp == 0:
                return p
            sp -= 1
            end, msg, group = st_end[sp], st_msg[sp], st_grp[sp]
            depth -= 1
            continue
        kind = K_OTHER
        if msg >= 0 and fn < nf:
            kind = kinds[msg, fn]
        if wt == 0:
            _, p = _varint(buf, p, end)
            if p < 0:
                return -E_TRUNC
        elif wt == 1:
            p += 8
            if p > end:
                return -E_TRUNC
        elif wt == 5:
            p += 4
            if p > end:
                return -E_TRUNC
        elif wt == 2:
            n, p = _varint(buf, p, end)
            if p < 0 or n < 0 or n > end - p:
                return -E_TRUNC
            if kind == K_STRING:
                if not _utf8_ok(buf, p, p + n):
                    return -E_UTF8
            elif kind == K_MESSAGE:
                if depth + 1 > MAX_DEPTH:
                    return -E_DEPTH
                st_end[sp], st_msg[sp], st_grp[sp] = end, msg, group
                sp += 1
                depth += 1
                end, msg, group = p + n, child[msg, fn], 0
                continue
            elif kind >= K_PACKED_VARINT and not _packed_ok(buf, p, p + n, kind):
                return -E_PACKED
            p += n
        elif wt == 3:
            if depth + 1 > MAX_DEPTH:
                return -E_DEPTH
            st_end[sp], st_msg[sp], st_grp[sp] = end, msg, group
            sp += 1
            depth += 1
            msg, group = -1, fn
        else:
            return -E_TAG


@njit(cache=True)
def _skip(buf: np.ndarray, p: int, end: int, fn: int, wt: int, msg: int, depth: int,
          kinds: np.ndarray, child: np.ndarray) -> int:
    """Skip (and validate like the protobuf parser) one field the kernels do not read."""
    if wt == 0:
        _, p = _varint(buf, p, end)
        return p if p >= 0 else -E_TRUNC
    if wt == 1:
        return p + 8 if p + 8 <= end else -E_TRUNC
    if wt == 5:
        return p + 4 if p + 4 <= end else -E_TRUNC
    if wt == 2:
        n, p = _varint(buf, p, end)
        if p < 0 or n < 0 or n > end - p:
            return -E_TRUNC
        kind = kinds[msg, fn] if fn < kinds.shape[1] else K_OTHER
        if kind == K_STRING:
            if not _utf8_ok(buf, p, p + n):
                return -E_UTF8
        elif kind == K_MESSAGE:
            q = _check(buf, p, p + n, child[msg, fn], 0, depth + 1, kinds, child)
            if q < 0:
                return q
        elif kind >= K_PACKED_VARINT and not _packed_ok(buf, p, p + n, kind):
            return -E_PACKED
        return p + n
    if wt == 3:
        return _check(buf, p, end, -1, fn, depth + 1, kinds, child)
    return -E_TAG


@njit(cache=True)
def _len(buf: np.ndarray, p: int, end: int, wt: int) -> tuple[int, int]:
    """(start, length) of a length-delimited field; start < 0 is an error code."""
    if wt != 2:
        return -E_WIRE, 0
    n, p = _varint(buf, p, end)
    if p < 0 or n < 0 or n > end - p:
        return -E_TRUNC, 0
    return p, n


@njit(cache=True)
def _enum8(v: int) -> int:
    """An int32 enum from its varint (low 32 bits, signed); 1000 marks 'not an int8'."""
    v &= 0xFFFFFFFF
    if v >= 0x80000000:
        v -= 0x100000000
    if v < -128 or v > 127:
        return 1000
    return v


# ---------------------------------------------------------------- kernels: messages

# Attribute table rows (column-major, one column per attribute).
A_KEY_OFF, A_KEY_LEN, A_TYPE, A_VAL_OFF, A_VAL_LEN, A_VAL, A_NCOLS = range(7)
# Span table rows.
(P_RS, P_SS, P_TID_OFF, P_TID_LEN, P_SID_OFF, P_SID_LEN, P_PSID_OFF, P_PSID_LEN,
 P_TS_OFF, P_TS_LEN, P_NAME_OFF, P_NAME_LEN, P_KIND, P_START, P_END, P_CODE,
 P_MSG_OFF, P_MSG_LEN, P_ATTR0, P_ATTR1, P_EV0, P_EV1, P_NCOLS) = range(23)
# Event, resource and scope rows.
V_NAME_OFF, V_NAME_LEN, V_TIME, V_ATTR0, V_ATTR1, V_NCOLS = range(6)
R_ATTR0, R_ATTR1, R_NCOLS = range(3)
C_NAME_OFF, C_NAME_LEN, C_VER_OFF, C_VER_LEN, C_NCOLS = range(5)


@intrinsic
def _voidptr(typingctx, addr):
    """An integer address as a void pointer (for ``numba.carray``)."""
    sig = types.voidptr(types.intp)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@njit(cache=True)
def _anyvalue(buf: np.ndarray, p: int, end: int, tab: np.ndarray, row: int, depth: int,
              kinds: np.ndarray, child: np.ndarray) -> int:
    """Parse an AnyValue occurrence into ``row`` (merging: the last oneof member wins)."""
    start = p
    while p < end:
        fn, wt, p = _tag(buf, p, end)
        if p < 0:
            return -p
        if fn == 1 or fn == 7 or fn == 5 or fn == 6:
            q, n = _len(buf, p, end, wt)
            if q < 0:
                return -q
            if fn == 1:
                if not _utf8_ok(buf, q, q + n):
                    return E_UTF8
                tab[A_TYPE, row] = S.STRING
                tab[A_VAL_OFF, row] = q
                tab[A_VAL_LEN, row] = n
            elif fn == 7:
                tab[A_TYPE, row] = S.BYTES
                tab[A_VAL_OFF, row] = q
                tab[A_VAL_LEN, row] = n
            else:
                r = _check(buf, q, q + n, child[M_AV, fn], 0, depth + 1, kinds, child)
                if r < 0:
                    return -r
                # The JSON step re-parses the whole AnyValue, so only its range matters;
                # a second array/kvlist occurrence would merge: flagged by the caller.
                tab[A_TYPE, row] = S.ARRAY if fn == 5 else S.KVLIST
                tab[A_VAL_OFF, row] = start
                tab[A_VAL_LEN, row] = end - start
            p = q + n
        elif fn == 2 or fn == 3 or fn == 8:
            if wt != 0:
                return E_WIRE
            v, p = _varint(buf, p, end)
            if p < 0:
                return E_TRUNC
            if fn == 2:
                tab[A_TYPE, row] = S.BOOL
                tab[A_VAL, row] = 1 if v != 0 else 0
            elif fn == 3:
                tab[A_TYPE, row] = S.INT
                tab[A_VAL, row] = v
            else:  # string_value_strindex: a oneof member the batch shows as EMPTY
                tab[A_TYPE, row] = S.EMPTY
        elif fn == 4:
            if wt != 1:
                return E_WIRE
            if p + 8 > end:
                return E_TRUNC
            tab[A_TYPE, row] = S.DOUBLE
            tab[A_VAL, row] = _fixed64(buf, p)
            p += 8
        else:
            p = _skip(buf, p, end, fn, wt, M_AV, depth, kinds, child)
            if p < 0:
                return -p
    return 0


@njit(cache=True)
def _keyvalue(buf: np.ndarray, p: int, end: int, tab: np.ndarray, row: int, depth: int,
              kinds: np.ndarray, child: np.ndarray) -> int:
    """Parse one KeyValue into attribute ``row``; returns 0 or an error code."""
    start = p
    tab[A_KEY_OFF, row] = 0
    tab[A_KEY_LEN, row] = 0
    tab[A_TYPE, row] = S.EMPTY
    tab[A_VAL_OFF, row] = 0
    tab[A_VAL_LEN, row] = 0
    tab[A_VAL, row] = 0
    values = 0
    while p < end:
        fn, wt, p = _tag(buf, p, end)
        if p < 0:
            return -p
        if fn == 1 or fn == 2:
            q, n = _len(buf, p, end, wt)
            if q < 0:
                return -q
            if fn == 1:
                if not _utf8_ok(buf, q, q + n):
                    return E_UTF8
                tab[A_KEY_OFF, row] = q
                tab[A_KEY_LEN, row] = n
            else:
                values += 1
                err = _anyvalue(buf, q, q + n, tab, row, depth + 1, kinds, child)
                if err:
                    return err
            p = q + n
        else:
            p = _skip(buf, p, end, fn, wt, M_KV, depth, kinds, child)
            if p < 0:
                return -p
    t = tab[A_TYPE, row]
    if values > 1 and (t == S.ARRAY or t == S.KVLIST):
        # Merged occurrences: the JSON step re-parses the whole KeyValue (negative length)
        # so that protobuf merges them exactly as the reference parser did.
        tab[A_VAL_OFF, row] = start
        tab[A_VAL_LEN, row] = start - end
    return 0


@njit(cache=True)
def decode_kernel(buf0: np.ndarray, kinds0: np.ndarray, child0: np.ndarray,
                  spans0: np.ndarray, sattr0: np.ndarray, events0: np.ndarray,
                  eattr0: np.ndarray, rattr0: np.ndarray, res0: np.ndarray,
                  scopes0: np.ndarray) -> tuple[int, int, int, int, int, int, int, int]:
    """Walk a request, filling the column-major tables (spans, span attributes, events,
    event attributes, resource attributes, resources, scopes) the caller allocated.

    Returns (status, and the row count of each table). Status E_FULL: a table is full
    (its count equals its capacity); the caller retries with bigger tables.
    """
    # Borrowed views (no NRT meminfo): passing meminfo-backed arrays to the helpers costs
    # two atomic refcount operations per array per call, most of the kernel's time.
    buf = carray(_voidptr(buf0.ctypes.data), buf0.shape, np.uint8)
    kinds = carray(_voidptr(kinds0.ctypes.data), kinds0.shape, np.int8)
    child = carray(_voidptr(child0.ctypes.data), child0.shape, np.int32)
    spans = carray(_voidptr(spans0.ctypes.data), spans0.shape, np.int64)
    sattr = carray(_voidptr(sattr0.ctypes.data), sattr0.shape, np.int64)
    events = carray(_voidptr(events0.ctypes.data), events0.shape, np.int64)
    eattr = carray(_voidptr(eattr0.ctypes.data), eattr0.shape, np.int64)
    rattr = carray(_voidptr(rattr0.ctypes.data), rattr0.shape, np.int64)
    res = carray(_voidptr(res0.ctypes.data), res0.shape, np.int64)
    scopes = carray(_voidptr(scopes0.ctypes.data), scopes0.shape, np.int64)
    size = buf.shape[0]
    ns = nsa = ne = nea = nra = nrs = nss = 0
    status = 0
    p = 0
    end = size
    while p < end and status == 0:
        fn, wt, p = _tag(buf, p, end)
        if p < 0:
            status = -p
            break
        if fn != 1:
            p = _skip(buf, p, end, fn, wt, M_REQ, 0, kinds, child)
            if p < 0:
                status = -p
            continue
        rs_a, rs_n = _len(buf, p, end, wt)
        if rs_a < 0:
            status = -rs_a
            break
        p = rs_a + rs_n
        # ---- ResourceSpans
        if nrs >= res.shape[1]:
            status = E_FULL
            break
        rs = nrs
        nrs += 1
        res[R_ATTR0, rs] = nra
        q = rs_a
        rs_end = rs_a + rs_n
        while q < rs_end and status == 0:
            fn, wt, q = _tag(buf, q, rs_end)
            if q < 0:
                status = -q
                break
            if fn == 1:  # Resource (a second occurrence merges: attributes append)
                r_a, r_n = _len(buf, q, rs_end, wt)
                if r_a < 0:
                    status = -r_a
                    break
                q = r_a + r_n
                u = r_a
                while u < q and status == 0:
                    fn, wt, u = _tag(buf, u, q)
                    if u < 0:
                        status = -u
                        break
                    if fn == 1:
                        k_a, k_n = _len(buf, u, q, wt)
                        if k_a < 0:
                            status = -k_a
                            break
                        if nra >= rattr.shape[1]:
                            status = E_FULL
                            break
                        status = _keyvalue(buf, k_a, k_a + k_n, rattr, nra, 3, kinds, child)
                        nra += 1
                        u = k_a + k_n
                    else:
                        u = _skip(buf, u, q, fn, wt, M_RES, 2, kinds, child)
                        if u < 0:
                            status = -u
            elif fn == 2:  # ScopeSpans
                ss_a, ss_n = _len(buf, q, rs_end, wt)
                if ss_a < 0:
                    status = -ss_a
                    break
                q = ss_a + ss_n
                if nss >= scopes.shape[1]:
                    status = E_FULL
                    break
                ss = nss
                nss += 1
                for c in range(C_NCOLS):
                    scopes[c, ss] = 0
                u = ss_a
                while u < q and status == 0:
                    fn, wt, u = _tag(buf, u, q)
                    if u < 0:
                        status = -u
                        break
                    if fn == 1:  # InstrumentationScope (merged across occurrences)
                        c_a, c_n = _len(buf, u, q, wt)
                        if c_a < 0:
                            status = -c_a
                            break
                        u = c_a + c_n
                        w = c_a
                        while w < u and status == 0:
                            fn, wt, w = _tag(buf, w, u)
                            if w < 0:
                                status = -w
                                break
                            if fn == 1 or fn == 2:
                                x_a, x_n = _len(buf, w, u, wt)
                                if x_a < 0:
                                    status = -x_a
                                    break
                                if not _utf8_ok(buf, x_a, x_a + x_n):
                                    status = E_UTF8
                                    break
                                col = C_NAME_OFF if fn == 1 else C_VER_OFF
                                scopes[col, ss] = x_a
                                scopes[col + 1, ss] = x_n
                                w = x_a + x_n
                            else:
                                w = _skip(buf, w, u, fn, wt, M_SCOPE, 3, kinds, child)
                                if w < 0:
                                    status = -w
                    elif fn == 2:  # Span
                        sp_a, sp_n = _len(buf, u, q, wt)
                        if sp_a < 0:
                            status = -sp_a
                            break
                        u = sp_a + sp_n
                        if ns >= spans.shape[1]:
                            status = E_FULL
                            break
                        s = ns
                        ns += 1
                        for c in range(P_NCOLS):
                            spans[c, s] = 0
                        spans[P_RS, s] = rs
                        spans[P_SS, s] = ss
                        spans[P_ATTR0, s] = nsa
                        spans[P_EV0, s] = ne
                        w = sp_a
                        while w < u and status == 0:
                            fn, wt, w = _tag(buf, w, u)
                            if w < 0:
                                status = -w
                                break
                            if fn <= 5 or fn == 9 or fn == 11 or fn == 15:
                                x_a, x_n = _len(buf, w, u, wt)
                                if x_a < 0:
                                    status = -x_a
                                    break
                                w = x_a + x_n
                                if fn <= 5:
                                    if (fn == 3 or fn == 5) and not _utf8_ok(buf, x_a, w):
                                        status = E_UTF8
                                        break
                                    col = (P_TID_OFF, P_SID_OFF, P_TS_OFF, P_PSID_OFF,
                                           P_NAME_OFF)[fn - 1]
                                    spans[col, s] = x_a
                                    spans[col + 1, s] = x_n
                                elif fn == 9:
                                    if nsa >= sattr.shape[1]:
                                        status = E_FULL
                                        break
                                    status = _keyvalue(buf, x_a, w, sattr, nsa, 4, kinds, child)
                                    nsa += 1
                                elif fn == 11:  # Event
                                    if ne >= events.shape[1]:
                                        status = E_FULL
                                        break
                                    e = ne
                                    ne += 1
                                    events[V_NAME_OFF, e] = 0
                                    events[V_NAME_LEN, e] = 0
                                    events[V_TIME, e] = 0
                                    events[V_ATTR0, e] = nea
                                    y = x_a
                                    while y < w and status == 0:
                                        fn, wt, y = _tag(buf, y, w)
                                        if y < 0:
                                            status = -y
                                            break
                                        if fn == 1:
                                            if wt != 1:
                                                status = E_WIRE
                                            elif y + 8 > w:
                                                status = E_TRUNC
                                            else:
                                                events[V_TIME, e] = _fixed64(buf, y)
                                                y += 8
                                        elif fn == 2 or fn == 3:
                                            z_a, z_n = _len(buf, y, w, wt)
                                            if z_a < 0:
                                                status = -z_a
                                                break
                                            y = z_a + z_n
                                            if fn == 2:
                                                if not _utf8_ok(buf, z_a, y):
                                                    status = E_UTF8
                                                events[V_NAME_OFF, e] = z_a
                                                events[V_NAME_LEN, e] = z_n
                                            else:
                                                if nea >= eattr.shape[1]:
                                                    status = E_FULL
                                                    break
                                                status = _keyvalue(buf, z_a, y, eattr, nea, 5,
                                                                   kinds, child)
                                                nea += 1
                                        else:
                                            y = _skip(buf, y, w, fn, wt, M_EVENT, 4, kinds,
                                                      child)
                                            if y < 0:
                                                status = -y
                                    events[V_ATTR1, e] = nea
                                else:  # Status (merged across occurrences)
                                    y = x_a
                                    while y < w and status == 0:
                                        fn, wt, y = _tag(buf, y, w)
                                        if y < 0:
                                            status = -y
                                            break
                                        if fn == 2:
                                            z_a, z_n = _len(buf, y, w, wt)
                                            if z_a < 0:
                                                status = -z_a
                                                break
                                            y = z_a + z_n
                                            if not _utf8_ok(buf, z_a, y):
                                                status = E_UTF8
                                            spans[P_MSG_OFF, s] = z_a
                                            spans[P_MSG_LEN, s] = z_n
                                        elif fn == 3:
                                            if wt != 0:
                                                status = E_WIRE
                                                break
                                            v, y = _varint(buf, y, w)
                                            if y < 0:
                                                status = E_TRUNC
                                                break
                                            spans[P_CODE, s] = _enum8(v)
                                        else:
                                            y = _skip(buf, y, w, fn, wt, M_STATUS, 4, kinds,
                                                      child)
                                            if y < 0:
                                                status = -y
                            elif fn == 6:
                                if wt != 0:
                                    status = E_WIRE
                                    break
                                v, w = _varint(buf, w, u)
                                if w < 0:
                                    status = E_TRUNC
                                    break
                                spans[P_KIND, s] = _enum8(v)
                            elif fn == 7 or fn == 8:
                                if wt != 1:
                                    status = E_WIRE
                                    break
                                if w + 8 > u:
                                    status = E_TRUNC
                                    break
                                spans[P_START if fn == 7 else P_END, s] = _fixed64(buf, w)
                                w += 8
                            else:
                                w = _skip(buf, w, u, fn, wt, M_SPAN, 3, kinds, child)
                                if w < 0:
                                    status = -w
                        spans[P_ATTR1, s] = nsa
                        spans[P_EV1, s] = ne
                        if spans[P_KIND, s] == 1000 or spans[P_CODE, s] == 1000:
                            status = E_ENUM
                    else:
                        u = _skip(buf, u, q, fn, wt, M_SS, 2, kinds, child)
                        if u < 0:
                            status = -u
            else:
                q = _skip(buf, q, rs_end, fn, wt, M_RS, 1, kinds, child)
                if q < 0:
                    status = -q
        res[R_ATTR1, rs] = nra
    if status == 0 and p != end:
        status = E_TRUNC
    return status, ns, nsa, ne, nea, nra, nrs, nss


# ---------------------------------------------------------------- kernels: gathering


@njit(cache=True)
def _gather(buf: np.ndarray, off: np.ndarray, ln: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arrow (int64 offsets, data) of the byte ranges ``off``/``ln`` of ``buf``."""
    n = off.shape[0]
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    for i in range(n):
        offsets[i + 1] = offsets[i] + ln[i]
    data = np.empty(offsets[n], np.uint8)
    for i in range(n):       # slice copies: numba makes them memcpy, far quicker than a loop
        data[offsets[i]:offsets[i + 1]] = buf[off[i]:off[i] + ln[i]]
    return offsets, data


@njit(cache=True)
def _gather_values(buf: np.ndarray, side: np.ndarray, typ: np.ndarray, off: np.ndarray,
                   ln: np.ndarray, hexdigits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arrow (offsets, data) of attribute ``str`` values: strings from the body, bytes as
    lowercase hex, arrays and kvlists from ``side`` (their JSON); others empty (null)."""
    n = off.shape[0]
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    for i in range(n):
        t = typ[i]
        m = 0
        if t == S.STRING or t == S.ARRAY or t == S.KVLIST:
            m = ln[i]
        elif t == S.BYTES:
            m = 2 * ln[i]
        offsets[i + 1] = offsets[i] + m
    data = np.empty(offsets[n], np.uint8)
    for i in range(n):
        t = typ[i]
        o = offsets[i]
        a = off[i]
        if t == S.STRING:
            data[o:o + ln[i]] = buf[a:a + ln[i]]
        elif t == S.ARRAY or t == S.KVLIST:
            data[o:o + ln[i]] = side[a:a + ln[i]]
        elif t == S.BYTES:
            for k in range(ln[i]):
                b = buf[a + k]
                data[o + 2 * k] = hexdigits[b >> 4]
                data[o + 2 * k + 1] = hexdigits[b & 15]
    return offsets, data


# ---------------------------------------------------------------- Arrow assembly


class _Unsupported(Exception):
    """The native path cannot produce this batch; the reference decoder will."""


_I32_MAX = 2**31 - 1
_STRING = pa.string()


def _varlen(typ: pa.DataType, offsets: np.ndarray, data: np.ndarray,
            valid: np.ndarray | None = None) -> pa.Array:
    """A string/binary array from int64 offsets (checked to fit int32) and data."""
    if offsets[-1] > _I32_MAX:
        raise _Unsupported("column above 2 GiB")
    n = len(offsets) - 1
    mask = None
    nulls = 0
    if valid is not None:
        nulls = n - int(np.count_nonzero(valid))
        if nulls:
            mask = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(typ, n, [mask, pa.py_buffer(offsets.astype(np.int32)),
                                          pa.py_buffer(data)], null_count=nulls)


def _strings(buf: np.ndarray, off: np.ndarray, ln: np.ndarray,
             typ: pa.DataType = _STRING) -> pa.Array:
    offsets, data = _gather(buf, np.ascontiguousarray(off), np.ascontiguousarray(ln))
    return _varlen(typ, offsets, data)


def _list_offsets(start: np.ndarray, stop: np.ndarray) -> pa.Array:
    """int32 list offsets of consecutive ranges [start, stop) (checked consecutive)."""
    if len(start) and (start[0] != 0 or np.any(start[1:] != stop[:-1])):
        raise _Unsupported("non-consecutive child rows")
    offs = np.empty(len(start) + 1, np.int64)
    offs[0] = 0
    offs[1:] = stop
    if offs[-1] > _I32_MAX:
        raise _Unsupported("too many child rows")
    return pa.array(offs.astype(np.int32), pa.int32())


@njit(cache=True)
def _string_arrays_json(buf: np.ndarray, offs: np.ndarray, lens: np.ndarray,
                        out: np.ndarray, out_off: np.ndarray, out_len: np.ndarray
                        ) -> tuple[int, np.ndarray]:
    """JSON of AnyValues that are arrays of strings (``gen_ai.response.finish_reasons``:
    nearly every array GenAI spans carry), byte for byte what
    ``json.dumps(any_value(v), ensure_ascii=False)`` writes. Anything else (another
    element type, an empty element, an unknown field, a value sent in several parts)
    is left to the reference: ``ok`` False. Returns (bytes written, ok)."""
    ok = np.zeros(len(offs), np.bool_)
    pos = 0
    for r in range(len(offs)):
        a, n = offs[r], lens[r]
        end = a + n
        if n < 2 or buf[a] != 0x2A:            # field 5 (array_value), length-delimited
            continue
        length, p = _varint(buf, a + 1, end)
        if p < 0 or p + length != end:
            continue
        start, good, first = pos, True, True
        out[pos] = 0x5B                         # [
        pos += 1
        while p < end and good:
            if buf[p] != 0x0A:                  # ArrayValue.values (field 1)
                good = False
                break
            el, p = _varint(buf, p + 1, end)
            if p < 0 or p + el > end or el < 2 or buf[p] != 0x0A:  # AnyValue.string_value
                good = False
                break
            e_end = p + el
            sl, q = _varint(buf, p + 1, e_end)
            if q < 0 or q + sl != e_end or not _utf8_ok(buf, q, e_end):
                good = False
                break
            if not first:
                out[pos] = 0x2C                 # ", "
                out[pos + 1] = 0x20
                pos += 2
            first = False
            out[pos] = 0x22
            pos += 1
            for i in range(q, e_end):
                c = buf[i]
                if c == 0x22 or c == 0x5C:
                    out[pos] = 0x5C
                    out[pos + 1] = c
                    pos += 2
                elif c >= 0x20:
                    out[pos] = c
                    pos += 1
                elif c == 0x0A or c == 0x0D or c == 0x09 or c == 0x08 or c == 0x0C:
                    out[pos] = 0x5C
                    out[pos + 1] = (0x6E if c == 0x0A else 0x72 if c == 0x0D else
                                    0x74 if c == 0x09 else 0x62 if c == 0x08 else 0x66)
                    pos += 2
                else:                           # \u00XX, lowercase hex as json does
                    lo = c & 15
                    out[pos] = 0x5C
                    out[pos + 1] = 0x75
                    out[pos + 2] = 0x30
                    out[pos + 3] = 0x30
                    out[pos + 4] = 0x30 + (c >> 4)
                    out[pos + 5] = lo + (0x30 if lo < 10 else 0x57)
                    pos += 6
            out[pos] = 0x22
            pos += 1
            p = e_end
        if not good:
            pos = start
            continue
        out[pos] = 0x5D                         # ]
        pos += 1
        ok[r] = True
        out_off[r] = start
        out_len[r] = pos - start
    return pos, ok


def _render_json(body: bytes, tabs: list[np.ndarray]) -> bytes:
    """JSON of array/kvlist attribute values: arrays of strings by a kernel, the rest by
    the reference code; rewrites their (offset, length) in ``tabs`` to point into the
    returned side buffer."""
    buf = np.frombuffer(body, np.uint8)
    parts: list[bytes] = []
    pos = 0
    for tab in tabs:
        typ = tab[A_TYPE]
        rows = np.flatnonzero((typ == S.ARRAY) | (typ == S.KVLIST))
        if not len(rows):
            continue
        offs, lens = tab[A_VAL_OFF, rows], tab[A_VAL_LEN, rows]
        arrays = typ[rows] == S.ARRAY
        out = np.empty(int(np.maximum(lens, 0)[arrays].sum()) * 6 + 2 * len(rows) + 16,
                       np.uint8)
        out_off, out_len = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        used, ok = _string_arrays_json(buf, np.where(arrays, offs, 0),
                                       np.where(arrays, lens, 0), out, out_off, out_len)
        parts.append(out[:used].tobytes())
        tab[A_VAL_OFF, rows[ok]] = out_off[ok] + pos
        tab[A_VAL_LEN, rows[ok]] = out_len[ok]
        pos += used
        for r in rows[~ok].tolist():
            a, n = int(tab[A_VAL_OFF, r]), int(tab[A_VAL_LEN, r])
            if n >= 0:
                v = AnyValue.FromString(body[a:a + n])
            else:  # a value sent in several occurrences: protobuf merges them
                v = KeyValue.FromString(body[a:a - n]).value
            js = json.dumps(otlp.any_value(v), ensure_ascii=False).encode()
            parts.append(js)
            tab[A_VAL_OFF, r] = pos
            tab[A_VAL_LEN, r] = len(js)
            pos += len(js)
        STATS.json_values += int((~ok).sum())
    return b"".join(parts)


def _attributes(buf: np.ndarray, side: np.ndarray, tab: np.ndarray) -> pa.StructArray:
    """The ATTRIBUTE struct array of an attribute table (JSON already rendered)."""
    typ = tab[A_TYPE]
    val = np.ascontiguousarray(tab[A_VAL])
    offsets, data = _gather_values(buf, side, np.ascontiguousarray(typ),
                                   np.ascontiguousarray(tab[A_VAL_OFF]),
                                   np.ascontiguousarray(tab[A_VAL_LEN]), HEX_DIGITS)
    is_str = (typ == S.STRING) | (typ == S.ARRAY) | (typ == S.KVLIST) | (typ == S.BYTES)
    children = [
        _strings(buf, tab[A_KEY_OFF], tab[A_KEY_LEN]),
        pa.array(typ.astype(np.int8), pa.int8()),
        _varlen(pa.string(), offsets, data, is_str),
        pa.array(val, pa.int64(), mask=typ != S.INT),
        pa.array(val.view(np.float64), pa.float64(), mask=typ != S.DOUBLE),
        pa.array(val != 0, pa.bool_(), mask=typ != S.BOOL),
    ]
    return pa.StructArray.from_arrays(children, fields=list(S.ATTRIBUTE))


def _tenant_column(tenant: str, n: int) -> pa.Array:
    raw = tenant.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(raw)
    return _varlen(pa.string(), offsets, np.frombuffer(raw * n, np.uint8))


_NCOLS = (P_NCOLS, A_NCOLS, V_NCOLS, A_NCOLS, A_NCOLS, R_NCOLS, C_NCOLS)


def _run_kernel(buf: np.ndarray) -> tuple:
    """Run the kernel with tables sized from the body, growing any that fills up.

    Returns (status, spans, span attrs, events, event attrs, resource attrs, resources,
    scopes), each table column-major and trimmed to its rows.
    """
    size = len(buf)
    # Typical GenAI spans are ~500 bytes with ~16 attributes: first guesses that fit them.
    caps = [size // 64 + 8, size // 16 + 16, size // 256 + 8, size // 256 + 8,
            size // 256 + 16, size // 1024 + 4, size // 1024 + 4]
    while True:
        tabs = [np.empty((k, c), np.int64) for k, c in zip(_NCOLS, caps, strict=True)]
        status, *counts = decode_kernel(buf, _KINDS, _CHILD, *tabs)
        if status != E_FULL:
            return (status, *(t[:, :n] for t, n in zip(tabs, counts, strict=True)))
        caps = [c * 4 if n >= c else c for c, n in zip(caps, counts, strict=True)]


def _build(body: bytes, tenant: str) -> pa.Table:
    buf = np.frombuffer(body, np.uint8)
    status, spans, sattr, events, eattr, rattr, res, scopes = _run_kernel(buf)
    if status:
        raise _Unsupported(_REASONS.get(status, f"status {status}"))
    n = spans.shape[1]
    side_bytes = _render_json(body, [sattr, eattr, rattr])
    side = np.frombuffer(side_bytes, np.uint8) if side_bytes else np.zeros(1, np.uint8)

    # Resource attributes repeated per span: gather the rows of each span's resource.
    rs_of = spans[P_RS]
    r0, r1 = res[R_ATTR0][rs_of], res[R_ATTR1][rs_of]
    lens = r1 - r0
    roffs = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=roffs[1:])
    if roffs[-1] > _I32_MAX:
        raise _Unsupported("too many resource attribute rows")
    idx = np.repeat(r0 - roffs[:-1], lens) + np.arange(roffs[-1], dtype=np.int64)

    nsa, nea = sattr.shape[1], eattr.shape[1]
    all_attrs = _attributes(buf, side, np.concatenate([sattr, eattr, rattr[:, idx]], axis=1))
    span_attrs = all_attrs.slice(0, nsa)
    ev_attrs = all_attrs.slice(nsa, nea)
    res_attrs = all_attrs.slice(nsa + nea)

    ev_struct = pa.StructArray.from_arrays([
        _strings(buf, events[V_NAME_OFF], events[V_NAME_LEN]),
        pa.array(np.ascontiguousarray(events[V_TIME]).view(np.uint64), pa.uint64()),
        pa.ListArray.from_arrays(_list_offsets(events[V_ATTR0], events[V_ATTR1]), ev_attrs,
                                 type=S.ATTRIBUTES),
    ], fields=list(S.EVENT))

    ss_of = spans[P_SS]
    columns = [
        _tenant_column(tenant, n),
        _strings(buf, spans[P_TID_OFF], spans[P_TID_LEN], pa.binary()),
        _strings(buf, spans[P_SID_OFF], spans[P_SID_LEN], pa.binary()),
        _strings(buf, spans[P_PSID_OFF], spans[P_PSID_LEN], pa.binary()),
        _strings(buf, spans[P_TS_OFF], spans[P_TS_LEN]),
        _strings(buf, spans[P_NAME_OFF], spans[P_NAME_LEN]),
        pa.array(spans[P_KIND].astype(np.int8), pa.int8()),
        pa.array(np.ascontiguousarray(spans[P_START]).view(np.uint64), pa.uint64()),
        pa.array(np.ascontiguousarray(spans[P_END]).view(np.uint64), pa.uint64()),
        pa.array(spans[P_CODE].astype(np.int8), pa.int8()),
        _strings(buf, spans[P_MSG_OFF], spans[P_MSG_LEN]),
        pa.ListArray.from_arrays(_list_offsets(spans[P_ATTR0], spans[P_ATTR1]), span_attrs,
                                 type=S.ATTRIBUTES),
        pa.ListArray.from_arrays(_list_offsets(spans[P_EV0], spans[P_EV1]), ev_struct,
                                 type=S.SPAN_BATCH.field("events").type),
        pa.ListArray.from_arrays(pa.array(roffs.astype(np.int32), pa.int32()), res_attrs,
                                 type=S.ATTRIBUTES),
        _strings(buf, scopes[C_NAME_OFF][ss_of], scopes[C_NAME_LEN][ss_of]),
        _strings(buf, scopes[C_VER_OFF][ss_of], scopes[C_VER_LEN][ss_of]),
    ]
    return pa.Table.from_arrays(columns, schema=S.SPAN_BATCH)


def reference_batch(body: bytes, tenant: str = "default") -> pa.Table:
    """The reference decoder's batch; every failure is a DecodeError (as decode_record)."""
    req = otlp.parse_request(body)
    try:
        return otlp.request_to_batch(req, tenant)
    except (pa.ArrowException, UnicodeError, binascii.Error, OverflowError) as exc:
        raise otlp.DecodeError(f"cannot build span batch: {exc}") from None


def decode_batch(body: bytes, tenant: str = "default") -> pa.Table:
    """``request_to_batch(parse_request(body), tenant)``, columnar and without a Python
    object per span; anything the kernels do not handle goes to the reference decoder
    (counted in :data:`STATS`), which raises DecodeError for bad input."""
    if NATIVE and isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body)
        try:
            table = _build(body, tenant)
        except _Unsupported as exc:
            reason = str(exc)
        except (_PbDecodeError, UnicodeError, pa.ArrowException, ValueError,
                OverflowError, RecursionError) as exc:
            reason = f"{type(exc).__name__} in the native path"
        else:
            STATS.native += 1
            return table
    else:
        reason = "native decoder disabled" if not NATIVE else "not bytes"
    STATS.fallback += 1
    STATS.reasons[reason] += 1
    return reference_batch(body, tenant)


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel by decoding a small request
    with each kind of value, so a worker's first real batch does not wait for the
    compiler (about 30 s cold); seconds taken."""
    import time

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

    t = time.perf_counter()
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name",
                                           value=AnyValue(string_value="warm-up")))
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "chat warm-up"
    span.start_time_unix_nano, span.end_time_unix_nano = 1, 2
    span.attributes.extend([
        KeyValue(key="s", value=AnyValue(string_value="x")),
        KeyValue(key="i", value=AnyValue(int_value=1)),
        KeyValue(key="d", value=AnyValue(double_value=0.5)),
        KeyValue(key="b", value=AnyValue(bool_value=True)),
        KeyValue(key="a", value=AnyValue(array_value=ArrayValue(
            values=[AnyValue(string_value="stop")])))])
    span.events.add(name="e", time_unix_nano=1)
    decode_batch(req.SerializeToString(), "warm-up")
    return time.perf_counter() - t

