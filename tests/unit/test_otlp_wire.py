"""The numba OTLP decoder (``pipeline.otlp_wire``) returns exactly the reference decoder's
span batch for any valid request, however its bytes are laid out (unknown fields of
every wire type, fields reordered, scalars repeated, messages split), and fails exactly
when the reference fails. Common requests must take the native path, not the fallback:
a decoder that always fell back would otherwise pass every equality test."""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from pipeline import otlp, otlp_wire
from pipeline.traffic.offline import RequestCollector
from schemas import spans as S

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- comparing outcomes


def _norm(x: Any) -> Any:
    """Python values with NaN comparable (NaN == NaN) and -0.0 distinct from 0.0."""
    if isinstance(x, float):
        return ("nan",) if math.isnan(x) else ("f", struct.pack("<d", x))
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return x


def assert_same(got: pa.Table, want: pa.Table) -> None:
    got.validate(full=True)
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows
    if not got.equals(want):  # NaN never equals itself in Arrow: compare values
        assert _norm(got.to_pylist()) == _norm(want.to_pylist())


def outcome(fn: Any, body: bytes) -> Any:
    try:
        return fn(body)
    except otlp.DecodeError:
        return "DecodeError"


def reference(body: bytes) -> pa.Table:
    return otlp.request_to_batch(otlp.parse_request(body))


def check(body: bytes, *, native: bool | None = None) -> None:
    """decode_batch(body) is the reference's outcome; ``native``: also which path ran."""
    before = otlp_wire.STATS.native
    got = outcome(otlp_wire.decode_batch, body)
    want = outcome(otlp_wire.reference_batch, body)
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
    else:
        assert_same(got, want)
    if native is not None:
        assert (otlp_wire.STATS.native > before) == native, otlp_wire.STATS.reasons


# ---------------------------------------------------------------- random valid requests

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_big = st.sampled_from(["", "x" * 100_000, "é€😀" * 30_000, "\x00\n\"\\"])
_strings = st.one_of(_text, _text, _text, _big)
_leaf = st.one_of(
    _strings.map(lambda v: ("string_value", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ("int_value", v)),
    st.floats().map(lambda v: ("double_value", v)),   # NaN and infinities included
    st.booleans().map(lambda v: ("bool_value", v)),
    st.binary(max_size=12).map(lambda v: ("bytes_value", v)),
    st.just(("empty", None)),
)
_values = st.recursive(
    _leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda v: ("array_value", v)),
        st.lists(st.tuples(_text, kids), max_size=4).map(lambda v: ("kvlist_value", v)),
    ),
    max_leaves=10,
)


def _set_value(av: AnyValue, value: tuple[str, Any]) -> None:
    kind, v = value
    if kind == "empty":
        return
    if kind == "array_value":
        av.array_value.SetInParent()
        for item in v:
            _set_value(av.array_value.values.add(), item)
    elif kind == "kvlist_value":
        av.kvlist_value.SetInParent()
        for key, item in v:
            kv = av.kvlist_value.values.add()
            kv.key = key
            _set_value(kv.value, item)
    else:
        setattr(av, kind, v)


_attrs = st.lists(st.tuples(_text, _values), max_size=5)


def _add_attrs(target: Any, attrs: list) -> None:
    for key, value in attrs:
        kv = target.add()
        kv.key = key
        _set_value(kv.value, value)


@st.composite
def requests(draw: Any) -> ExportTraceServiceRequest:
    """Valid export requests exercising every field of every message."""
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = req.resource_spans.add()
        if draw(st.booleans()):
            rs.resource.SetInParent()
            _add_attrs(rs.resource.attributes, draw(_attrs))
            rs.resource.dropped_attributes_count = draw(st.integers(0, 3))
        rs.schema_url = draw(_text)
        for _ in range(draw(st.integers(0, 3))):
            ss = rs.scope_spans.add()
            if draw(st.booleans()):
                ss.scope.name, ss.scope.version = draw(_strings), draw(_text)
                _add_attrs(ss.scope.attributes, draw(st.lists(st.tuples(_text, _leaf),
                                                               max_size=2)))
            ss.schema_url = draw(_text)
            for _ in range(draw(st.integers(0, 4))):
                _span(draw, ss.spans.add())
    return req


def _span(draw: Any, span: Any) -> None:
    span.trace_id = draw(st.binary(max_size=16))
    span.span_id = draw(st.binary(max_size=8))
    span.parent_span_id = draw(st.binary(max_size=8))
    span.trace_state = draw(_text)
    span.name = draw(_strings)
    span.kind = draw(st.integers(0, 5))
    span.flags = draw(st.integers(0, 2**32 - 1))
    span.start_time_unix_nano = draw(st.integers(0, 2**64 - 1))
    span.end_time_unix_nano = draw(st.integers(0, 2**64 - 1))
    span.dropped_attributes_count = draw(st.integers(0, 3))
    span.dropped_events_count = draw(st.integers(0, 3))
    span.dropped_links_count = draw(st.integers(0, 3))
    if draw(st.booleans()):
        span.status.code = draw(st.integers(0, 2))
        span.status.message = draw(_strings)
    _add_attrs(span.attributes, draw(_attrs))
    for _ in range(draw(st.integers(0, 2))):
        ev = span.events.add()
        ev.time_unix_nano = draw(st.integers(0, 2**64 - 1))
        ev.name = draw(_text)
        ev.dropped_attributes_count = draw(st.integers(0, 2))
        _add_attrs(ev.attributes, draw(_attrs))
    for _ in range(draw(st.integers(0, 2))):
        ln = span.links.add()
        ln.trace_id, ln.span_id = draw(st.binary(max_size=16)), draw(st.binary(max_size=8))
        ln.trace_state = draw(_text)
        ln.flags = draw(st.integers(0, 2**32 - 1))
        _add_attrs(ln.attributes, draw(st.lists(st.tuples(_text, _leaf), max_size=2)))


# ---------------------------------------------------------------- a generic wire codec

Entry = list  # [field number, wire type, value]; value: int, bytes or list[Entry]


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, p: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[p]
        p += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, p


def wire_parse(buf: bytes, desc: Any) -> list[Entry]:
    """Entries of a message; sub-messages (per the descriptor) parsed recursively."""
    out: list[Entry] = []
    p = 0
    while p < len(buf):
        tag, p = _read_varint(buf, p)
        fn, wt = tag >> 3, tag & 7
        if wt == 0:
            v, p = _read_varint(buf, p)
        elif wt == 1:
            v, p = buf[p:p + 8], p + 8
        elif wt == 5:
            v, p = buf[p:p + 4], p + 4
        elif wt == 2:
            n, p = _read_varint(buf, p)
            v, p = buf[p:p + n], p + n
            f = desc.fields_by_number.get(fn) if desc is not None else None
            if f is not None and f.message_type is not None:
                v = wire_parse(v, f.message_type)
        else:
            raise AssertionError(f"wire type {wt} in a serialised request")
        out.append([fn, wt, v])
    return out


def wire_write(entries: list[Entry]) -> bytes:
    out = bytearray()
    for fn, wt, v in entries:
        out += _varint(fn << 3 | wt)
        if wt == 0:
            out += _varint(v)
        elif wt in (1, 5):
            out += v
        elif wt == 2:
            data = wire_write(v) if isinstance(v, list) else v
            out += _varint(len(data)) + data
        elif wt == 3:  # a group: its entries then the end-group tag
            out += wire_write(v) + _varint(fn << 3 | 4)
    return bytes(out)


def _unknown(rnd: random.Random, depth: int = 0) -> Entry:
    """An unknown field (numbers 100-999 are unused by every OTLP message)."""
    fn = rnd.randrange(100, 1000)
    wt = rnd.choice([0, 1, 2, 3, 5] if depth < 2 else [0, 1, 2, 5])
    if wt == 0:
        return [fn, 0, rnd.getrandbits(rnd.choice([1, 7, 35, 64]))]
    if wt == 1:
        return [fn, 1, rnd.randbytes(8)]
    if wt == 5:
        return [fn, 5, rnd.randbytes(4)]
    if wt == 2:  # arbitrary bytes, even invalid UTF-8: unknown fields are not checked
        return [fn, 2, rnd.randbytes(rnd.randrange(0, 6)) + b"\xff"]
    return [fn, 3, [_unknown(rnd, depth + 1) for _ in range(rnd.randrange(0, 3))]]


def mutate(entries: list[Entry], desc: Any, rnd: random.Random, *, split: bool) -> None:
    """Re-lay a message's fields in ways protobuf parses to the same message (in place):
    unknown fields, shuffled order, earlier copies of scalars (the last wins), singular
    sub-messages split in two occurrences (they merge) when ``split``."""
    for e in entries:
        if isinstance(e[2], list):
            mutate(e[2], desc.fields_by_number[e[0]].message_type, rnd, split=split)
    for _ in range(rnd.randrange(0, 3)):
        entries.insert(rnd.randrange(len(entries) + 1), _unknown(rnd))
    if rnd.random() < 0.5:
        _shuffle_keeping_repeated_order(entries, desc, rnd)
    for i in reversed(range(len(entries))):
        fn, wt, v = entries[i]
        f = desc.fields_by_number.get(fn)
        if f is None or f.is_repeated:
            continue
        if wt == 2 and split and isinstance(v, list) and len(v) >= 2:
            cut = rnd.randrange(1, len(v))  # a real split: both parts hold fields
            entries[i:i + 1] = [[fn, 2, v[:cut]], [fn, 2, v[cut:]]]
        elif rnd.random() < 0.5:
            continue
        elif wt == 0:
            entries.insert(i, [fn, 0, rnd.getrandbits(64)])
        elif wt in (1, 5):
            entries.insert(i, [fn, wt, rnd.randbytes(len(v))])
        elif wt == 2 and not isinstance(v, list):
            entries.insert(i, [fn, 2, b"shadowed"])


def _shuffle_keeping_repeated_order(entries: list[Entry], desc: Any,
                                    rnd: random.Random) -> None:
    """Shuffle fields, but keep each repeated field's elements in their order (their
    order is the data: reordering them is a different request, not a different layout)."""
    by_field: dict[int, list[Entry]] = {}
    for e in entries:
        by_field.setdefault(e[0], []).append(e)
    slots = [e[0] for e in entries]
    rnd.shuffle(slots)
    entries[:] = [by_field[fn].pop(0) for fn in slots]


REQ = ExportTraceServiceRequest.DESCRIPTOR

# ---------------------------------------------------------------- tests


def test_field_numbers_match_the_installed_descriptors():
    assert otlp_wire.field_mismatches() == []
    assert otlp_wire.NATIVE
    desc = otlp_wire._descriptors()
    for (m, name), (number, _) in otlp_wire.EXPECTED_FIELDS.items():
        assert desc[m].fields_by_name[name].number == number


def test_a_wrong_field_number_is_reported():
    key = (otlp_wire.M_SPAN, "name")
    saved = otlp_wire.EXPECTED_FIELDS[key]
    otlp_wire.EXPECTED_FIELDS[key] = (6, saved[1])
    try:
        assert any("Span.name" in m for m in otlp_wire.field_mismatches())
    finally:
        otlp_wire.EXPECTED_FIELDS[key] = saved


@SETTINGS
@given(requests())
def test_valid_requests_decode_natively_to_the_reference_batch(req):
    body = req.SerializeToString()
    got = otlp_wire.decode_batch(body, "acme")
    want = otlp.request_to_batch(otlp.parse_request(body), "acme")
    assert_same(got, want)
    check(body, native=True)


@SETTINGS
@given(requests(), st.integers(0, 2**32))
def test_relaid_bytes_decode_natively_to_the_same_batch(req, seed):
    entries = wire_parse(req.SerializeToString(), REQ)
    mutate(entries, REQ, random.Random(seed), split=False)
    body = wire_write(entries)
    assert ExportTraceServiceRequest.FromString(body) is not None
    check(body, native=True)


@SETTINGS
@given(requests(), st.integers(0, 2**32))
def test_split_messages_merge_like_protobuf(req, seed):
    entries = wire_parse(req.SerializeToString(), REQ)
    mutate(entries, REQ, random.Random(seed), split=True)
    check(wire_write(entries), native=True)


def test_split_singular_messages_merge_natively():
    """status, scope, resource and an attribute value each sent as two occurrences."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _add_attrs(rs.resource.attributes, [("r1", ("int_value", 1)), ("r2", ("bool_value", True))])
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "lib", "1.0"
    span = ss.spans.add()
    span.status.code, span.status.message = 2, "boom"
    _add_attrs(span.attributes, [("k", ("string_value", "v"))])
    entries = wire_parse(req.SerializeToString(), REQ)
    rs_e = entries[0][2]
    resource, scope_spans = rs_e[0], rs_e[1]
    scope, span_e = scope_spans[2][0], scope_spans[2][1]
    split = [[[fn, wt, v[:1]], [fn, wt, v[1:]]] for fn, wt, v in (resource, scope)]
    rs_e[0:1] = split[0]
    scope_spans[2][0:1] = split[1]
    status = next(e for e in span_e[2] if e[0] == 15)
    kv = next(e for e in span_e[2] if e[0] == 9)
    status[2].sort(key=lambda e: -e[0])                 # code first, then message
    i = span_e[2].index(status)
    span_e[2][i:i + 1] = [[15, 2, status[2][:1]], [15, 2, status[2][1:]]]
    value = next(e for e in kv[2] if e[0] == 2)
    kv[2].append([2, 2, [[3, 0, 7]]])                   # a second value: int 7 wins
    body = wire_write(entries)
    check(body, native=True)
    row = otlp_wire.decode_batch(body).to_pylist()[0]
    assert (row["status_code"], row["status_message"]) == (2, "boom")
    assert (row["scope_name"], row["scope_version"]) == ("lib", "1.0")
    assert [a["key"] for a in row["resource_attributes"]] == ["r1", "r2"]
    assert row["attributes"][0]["int"] == 7 and value


def _string_paths(entries: list[Entry], desc: Any, path: tuple = ()) -> list[tuple]:
    """Paths (indices) of every string field occurrence, unread ones included."""
    out = []
    for i, (fn, _wt, v) in enumerate(entries):
        f = desc.fields_by_number.get(fn)
        if f is None:
            continue
        if isinstance(v, list):
            out += _string_paths(v, f.message_type, (*path, i))
        elif f.type == f.TYPE_STRING:
            out.append((*path, i))
    return out


@SETTINGS
@given(requests(), st.integers(0, 2**32), st.sampled_from([b"\xff", b"\xc0\x80",
                                                           b"\xed\xa0\x80", b"a\xe2\x82"]))
def test_invalid_utf8_anywhere_fails_like_the_reference(req, seed, bad):
    entries = wire_parse(req.SerializeToString(), REQ)
    paths = _string_paths(entries, REQ)
    if paths:
        path = random.Random(seed).choice(paths)
        node = entries
        for i in path[:-1]:
            node = node[i][2]
        node[path[-1]][2] = bad
    body = wire_write(entries)
    check(body)
    if paths:
        assert outcome(otlp_wire.decode_batch, body) == "DecodeError"


@SETTINGS
@given(requests(), st.integers(0, 2**32))
def test_truncated_and_corrupted_bytes_fail_like_the_reference(req, seed):
    body = req.SerializeToString()
    rnd = random.Random(seed)
    if body:
        check(body[:rnd.randrange(len(body))])
        flipped = bytearray(body)
        for _ in range(rnd.randrange(1, 4)):
            flipped[rnd.randrange(len(body))] = rnd.randrange(256)
        check(bytes(flipped))
    check(rnd.randbytes(rnd.randrange(0, 64)))


@pytest.mark.parametrize("body", [
    b"\x0a",                               # length missing
    b"\x0a\x05\x12",                       # length past the end
    b"\x0b\x0c",                           # unterminated group
    b"\x0c",                               # end group without a start
    b"\x00\x00",                           # field number 0
    b"\x0e\x00",                           # wire type 6
    b"\x08" + b"\xff" * 10 + b"\x01",      # varint longer than 10 bytes
    b"\x0a\x02\x08\x01",                   # resource_spans.resource as a varint
    b"\x0a\x04\x12\x02\x12\x00" * 2,       # fine: two empty scope_spans with empty spans
])
def test_malformed_edge_cases(body):
    check(body)


def _deep_array(depth: int) -> bytes:
    req = ExportTraceServiceRequest()
    kv = req.resource_spans.add().scope_spans.add().spans.add().attributes.add()
    kv.key = "deep"
    av = kv.value
    for _ in range(depth):
        av = av.array_value.values.add()
    av.int_value = 1
    return req.SerializeToString()


@pytest.mark.parametrize("depth", [1, 30, 60, 120])
def test_deeply_nested_values(depth):
    check(_deep_array(depth))


def test_out_of_range_enums_fail_like_the_reference():
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.kind = 300           # an open enum: any int32 parses; int8 cannot hold it
    check(req.SerializeToString())
    span.kind = -3
    span.status.code = -100
    check(req.SerializeToString(), native=True)


def test_tenant_and_empty_requests():
    check(b"", native=True)
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add().name = "x"
    got = otlp_wire.decode_batch(req.SerializeToString(), "tenant-é")
    assert got.column("tenant").to_pylist() == ["tenant-é"]
    assert got.column("kind").type == pa.int8()


def test_fallbacks_are_counted():
    otlp_wire.STATS.reset()
    check(b"\x0a\x05\x12", native=False)
    assert otlp_wire.STATS.fallback == 1 and otlp_wire.STATS.reasons


def _generated(**kw: Any) -> list[bytes]:
    from pipeline.traffic import emit as emit_mod
    from pipeline.traffic.plan import Options, plan

    opts = Options(start_time_ns=1_764_000_000 * 10**9, **kw)
    sinks = {t: RequestCollector() for t in opts.tenants}
    emit_mod.emit(plan(opts), sinks, max_rate=True, max_batch=128)
    return [r for s in sinks.values() for r in s.requests]


@pytest.mark.parametrize("conv", ["semconv", "openllmetry", "openinference"])
def test_generated_traffic_decodes_natively(conv):
    bodies = _generated(seed=11, calls=150, mix=((conv, 1.0),),
                        scenarios=("runaway-loop", "retry-storm", "unknown-model"))
    assert bodies
    for body in bodies:
        check(body, native=True)
        assert_same(otlp_wire.decode_batch(body, "t1"),
                    otlp.request_to_batch(otlp.parse_request(body), "t1"))


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/data beside the checkout")
def test_shared_azure_trace_rows_as_genai_spans():
    """The shared corpus holds token counts, not OTLP: build a span per row from it."""
    from pipeline.traffic import azure_trace

    rows = azure_trace.load(("code", "conv"), data_dir=SHARED)
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i, row in enumerate(rows[:3000]):
        span = ss.spans.add()
        span.trace_id, span.span_id = i.to_bytes(16, "big"), (i + 1).to_bytes(8, "big")
        span.name = f"chat {row.kind}"
        span.start_time_unix_nano = 1_700_000_000 * 10**9 + row.offset_ns
        span.end_time_unix_nano = span.start_time_unix_nano + 10**6 * row.output_tokens
        _add_attrs(span.attributes, [
            ("gen_ai.usage.input_tokens", ("int_value", row.input_tokens)),
            ("gen_ai.usage.output_tokens", ("int_value", row.output_tokens)),
            ("gen_ai.response.finish_reasons", ("array_value", [("string_value", "stop")])),
        ])
    check(req.SerializeToString(), native=True)


def test_json_values_render_like_the_reference():
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    _add_attrs(span.attributes, [
        ("a", ("array_value", [("double_value", float("nan")), ("double_value", -0.0),
                               ("bytes_value", b"\x00\xff"), ("empty", None)])),
        ("k", ("kvlist_value", [("dup", ("int_value", 1)), ("dup", ("string_value", "é"))])),
    ])
    got = otlp_wire.decode_batch(req.SerializeToString())
    strs = [a["str"] for a in got.column("attributes").to_pylist()[0]]
    assert strs == ['[NaN, -0.0, "00ff", null]', '{"dup": "é"}']
    assert [a["type"] for a in got.column("attributes").to_pylist()[0]] == [S.ARRAY, S.KVLIST]


def test_an_array_value_sent_twice_merges():
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    _add_attrs(span.attributes, [("reasons", ("array_value", [("string_value", "a")]))])
    entries = wire_parse(req.SerializeToString(), REQ)
    kv = entries[0][2][0][2][0][2][0]                 # rs > scope_spans > span > attribute
    assert kv[0] == 9
    kv[2].append([2, 2, [[5, 2, [[1, 2, [[1, 2, b"b"]]]]]]])  # value: array_value ["b"]
    body = wire_write(entries)
    check(body, native=True)
    assert otlp_wire.decode_batch(body).column("attributes").to_pylist()[0][0]["str"] == \
        '["a", "b"]'


def test_decode_record_takes_the_native_path_for_protobuf_and_warm_up_compiles_it():
    from tests.sample_spans import sample_request

    assert otlp_wire.warm_up() >= 0
    body = sample_request(4)
    native = otlp_wire.STATS.native
    got = otlp.decode_record(body, [(otlp.TENANT_HEADER, b"acme")])
    assert otlp_wire.STATS.native == native + 1
    assert got.equals(otlp_wire.reference_batch(body, "acme"))
    json_body = otlp.to_json(otlp.parse_request(body))     # OTLP/JSON keeps its own path
    assert otlp.decode_record(json_body).num_rows == 4
    assert otlp_wire.STATS.native == native + 1


@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                                 max_size=8), max_size=4), min_size=1, max_size=5))
@settings(max_examples=150, deadline=None)
def test_arrays_of_strings_render_in_the_kernel_like_json_dumps(arrays):
    """``finish_reasons`` and the like: escapes, control characters, non-ASCII, empty
    strings and empty arrays, without a Python call per value."""
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    _add_attrs(span.attributes, [(f"a{i}", ("array_value", [("string_value", v) for v in a]))
                                 for i, a in enumerate(arrays)])
    body = req.SerializeToString()
    rendered = otlp_wire.STATS.json_values
    check(body, native=True)
    assert otlp_wire.STATS.json_values == rendered      # none by the reference
    got = otlp_wire.decode_batch(body).column("attributes").to_pylist()[0]
    assert [a["str"] for a in got] == [json.dumps(a, ensure_ascii=False) for a in arrays]
