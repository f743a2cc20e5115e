"""OTLP trace decoding: bytes (protobuf or OTLP/JSON) -> request -> columnar span batch.

This is the reference decoder: the receivers use :func:`parse_request`,
:func:`sanitise_request` and :func:`split_request`; the stream stages read ``otlp_spans``
records through :func:`decode_record`, the one decoding function downstream. Anything
that cannot be decoded raises :class:`DecodeError` with a message fit for a DLQ header or
an HTTP 400 body.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf import json_format
from google.protobuf.message import DecodeError as _PbDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from pipeline import privacy
from schemas import spans as S
from schemas.topics import TENANT_HEADER

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class DecodeError(ValueError):
    """The bytes are not an OTLP ExportTraceServiceRequest; the message says why."""


# ---------------------------------------------------------------- parsing


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping expects base64 bytes."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _ID_FIELDS and isinstance(v, str):
                try:
                    raw = bytes.fromhex(v)
                except ValueError:
                    raise DecodeError(f"{k} {v[:40]!r} is not hex") from None
                out[k] = base64.b64encode(raw).decode()
            else:
                out[k] = _hex_ids_to_base64(v)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(x) for x in node]
    return node


def parse_request(body: bytes, encoding: str = PROTOBUF) -> ExportTraceServiceRequest:
    """Parse an export request in ``application/x-protobuf`` or ``application/json``."""
    req = ExportTraceServiceRequest()
    if encoding == JSON:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise DecodeError("OTLP/JSON body must be an object with resourceSpans")
        try:
            json_format.ParseDict(_hex_ids_to_base64(doc), req, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError) as exc:
            raise DecodeError(f"invalid OTLP/JSON: {str(exc)[:300]}") from None
        return req
    if encoding != PROTOBUF:
        raise DecodeError(f"unsupported encoding {encoding!r}")
    try:
        req.ParseFromString(body)
    except (_PbDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"invalid OTLP protobuf: {exc or 'truncated or corrupt message'}"
                          ) from None
    return req


def sniff_encoding(value: bytes, content_type: str | None = None) -> str:
    """Protobuf or JSON for a record from ``otlp_spans`` (collector otlp_proto/otlp_json).

    A protobuf ExportTraceServiceRequest never starts with ``{`` (0x7b would be field 15
    as a group), so the first non-blank byte decides when no content type is given. But
    a blank first byte can be protobuf's too (0x0a is field 1's tag: a first
    ResourceSpans of 123 bytes starts 0x0a 0x7b, a blank then ``{``):
    :func:`decode_record` tries protobuf when such a body is not JSON.
    """
    if content_type:
        ct = content_type.split(";")[0].strip().lower()
        if ct in (JSON, PROTOBUF):
            return ct
    return JSON if value.lstrip()[:1] == b"{" else PROTOBUF


def to_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON of a request: hex ids, camelCase, as the spec and the collector write it."""
    doc = json_format.MessageToDict(req, preserving_proto_field_name=False)

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (base64.b64decode(v).hex() if k in _ID_FIELDS and isinstance(v, str)
                        else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(x) for x in node]
        return node

    return json.dumps(fix(doc), separators=(",", ":")).encode()


# ---------------------------------------------------------------- validation and privacy


@dataclass
class SanitiseReport:
    """What :func:`sanitise_request` did: for partial_success and metrics."""

    spans: int = 0
    rejected: int = 0
    reasons: dict[str, int] | None = None
    content_removed: int = 0

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons = self.reasons or {}
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def message(self) -> str:
        if not self.reasons:
            return ""
        return "; ".join(f"{n} span(s): {r}" for r, n in sorted(self.reasons.items()))


def any_value(v: AnyValue) -> Any:
    """A Python value for an OTLP AnyValue (arrays and maps as Python lists/dicts)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


_ZERO_TRACE_ID, _ZERO_SPAN_ID = bytes(16), bytes(8)


def _span_problem(span: Any) -> str | None:
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
        return "trace_id must be 16 bytes, not all zero"
    if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
        return "span_id must be 8 bytes, not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    if span.start_time_unix_nano == 0:
        return "start_time_unix_nano is missing"
    return None


_CONTENT_KEY: dict[str, bool] = {}


def _is_content_key(key: str) -> bool:
    """``privacy.is_content_key``, remembered per key (a span has ~15 attributes, and
    their keys repeat from span to span)."""
    hit = _CONTENT_KEY.get(key)
    if hit is None:
        if len(_CONTENT_KEY) > 100_000:       # keys come from clients: bounded memory
            _CONTENT_KEY.clear()
        hit = _CONTENT_KEY[key] = privacy.is_content_key(key)
    return hit


def _scrub_attributes(attrs: Any, key: bytes) -> int:
    """Hash then drop content attributes in place; returns how many were dropped."""
    keys = [kv.key for kv in attrs]           # each protobuf field read once: they cost
    known = list(map(_CONTENT_KEY.get, keys))
    idx = [i for i, (k, c) in enumerate(zip(keys, known, strict=True))
           if c or (c is None and _is_content_key(k))]
    if not idx:
        return 0
    content = {keys[i]: any_value(attrs[i].value) for i in idx}
    content.update({k: attrs[i].value.string_value for i, k in enumerate(keys)
                    if k in privacy.KIND_KEYS})
    present = set(keys)
    hashes = {k: v for k, v in privacy.content_hashes(key, _stringify(content)).items()
              if k not in present}
    for i in reversed(idx):  # in place: copying protobuf messages costs more
        del attrs[i]
    for k, v in hashes.items():
        kv = attrs.add()
        kv.key = k
        kv.value.string_value = v
    return len(idx)


def _stringify(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Content values as the strings the conventions define (JSON for structured ones)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)
            for k, v in attrs.items()}


def sanitise_request(req: ExportTraceServiceRequest, *, hash_key: bytes,
                     keep_content: bool = False) -> SanitiseReport:
    """Drop invalid spans and (unless ``keep_content``) message content, in place.

    Content attributes become ``llmspend.*_hash`` attributes; content-carrying span events
    are hashed into the span then removed. Valid spans are never dropped.
    """
    report = SanitiseReport()
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            kept = []
            for span in ss.spans:
                report.spans += 1
                problem = _span_problem(span)
                if problem:
                    report.reject(problem)
                    continue
                if not keep_content:
                    report.content_removed += _scrub_span(span, hash_key)
                kept.append(span)
            if len(kept) != len(ss.spans):
                del ss.spans[:]
                ss.spans.extend(kept)
    return report


def _scrub_span(span: Any, key: bytes) -> int:
    if not span.events:                       # most spans: attributes only
        return _scrub_attributes(span.attributes, key)
    removed = 0
    events = list(span.events)
    content_events = [e for e in events
                      if privacy.is_content_event(e.name, (kv.key for kv in e.attributes))]
    if content_events:
        # Older conventions carry messages as events: hash them as if they were attributes.
        merged: dict[str, Any] = {}
        i = 0
        for e in content_events:
            ev = {kv.key: any_value(kv.value) for kv in e.attributes}
            if e.name in ("gen_ai.content.prompt",) and "gen_ai.prompt" in ev:
                merged["gen_ai.prompt"] = ev["gen_ai.prompt"]
            elif e.name.endswith(".message"):
                role = e.name.removeprefix("gen_ai.").removesuffix(".message")
                body = ev.get("content", ev.get("gen_ai.event.content", ""))
                merged[f"gen_ai.prompt.{i}.role"] = role
                merged[f"gen_ai.prompt.{i}.content"] = body
                i += 1
        span_keys = {kv.key for kv in span.attributes}
        if merged and not (span_keys & set(privacy.HASH_ATTRIBUTES)):
            for k, v in privacy.content_hashes(key, _stringify(merged)).items():
                span.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
        keep = [e for e in events if e not in content_events]
        del span.events[:]
        span.events.extend(keep)
        removed += len(content_events)
    removed += _scrub_attributes(span.attributes, key)
    for e in span.events:
        removed += _drop_content(e.attributes)
    return removed


def _drop_content(attrs: Any) -> int:
    keep = [kv for kv in attrs if not privacy.is_content_key(kv.key)]
    n = len(attrs) - len(keep)
    if n:
        del attrs[:]
        attrs.extend(keep)
    return n


# ---------------------------------------------------------------- splitting


def split_request(req: ExportTraceServiceRequest, max_bytes: int) -> list[bytes]:
    """Serialise ``req`` as one or more requests, each at most ``max_bytes``.

    Splits by resource, then scope, then span ranges, so a request larger than the
    topic's message limit is never dropped. A single span larger than the limit raises
    DecodeError (it can never be stored).
    """
    whole = req.SerializeToString()
    if len(whole) <= max_bytes:
        return [whole]
    out: list[bytes] = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            _split_spans(rs, ss, list(ss.spans), max_bytes, out)
    return out


def _one(rs: Any, ss: Any, spans: list[Any]) -> ExportTraceServiceRequest:
    r = ExportTraceServiceRequest()
    nrs = r.resource_spans.add()
    nrs.resource.CopyFrom(rs.resource)
    nrs.schema_url = rs.schema_url
    nss = nrs.scope_spans.add()
    nss.scope.CopyFrom(ss.scope)
    nss.schema_url = ss.schema_url
    nss.spans.extend(spans)
    return r


def _split_spans(rs: Any, ss: Any, spans: list[Any], max_bytes: int, out: list[bytes]) -> None:
    data = _one(rs, ss, spans).SerializeToString()
    if len(data) <= max_bytes:
        out.append(data)
        return
    if len(spans) == 1:
        raise DecodeError(f"one span serialises to {len(data)} bytes, above the "
                          f"{max_bytes}-byte record limit")
    mid = len(spans) // 2
    _split_spans(rs, ss, spans[:mid], max_bytes, out)
    _split_spans(rs, ss, spans[mid:], max_bytes, out)


# ---------------------------------------------------------------- columnar batch


def _attr_rows(kvs: Iterable[KeyValue]) -> list[dict[str, Any]]:
    rows = []
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        row: dict[str, Any] = {"key": kv.key, "type": S.EMPTY, "str": None, "int": None,
                               "dbl": None, "bool": None}
        if which == "string_value":
            row.update(type=S.STRING, str=v.string_value)
        elif which == "int_value":
            row.update(type=S.INT, int=v.int_value)
        elif which == "double_value":
            row.update(type=S.DOUBLE, dbl=v.double_value)
        elif which == "bool_value":
            row.update(type=S.BOOL, bool=v.bool_value)
        elif which == "bytes_value":
            row.update(type=S.BYTES, str=v.bytes_value.hex())
        elif which == "array_value":
            row.update(type=S.ARRAY, str=json.dumps(any_value(v), ensure_ascii=False))
        elif which == "kvlist_value":
            row.update(type=S.KVLIST, str=json.dumps(any_value(v), ensure_ascii=False))
        rows.append(row)
    return rows


def request_to_batch(req: ExportTraceServiceRequest, tenant: str = "default") -> pa.Table:
    """The columnar span batch (``schemas.spans.SPAN_BATCH``) of a parsed request."""
    cols: dict[str, list[Any]] = {f.name: [] for f in S.SPAN_BATCH}
    for rs in req.resource_spans:
        res = _attr_rows(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                cols["tenant"].append(tenant)
                cols["trace_id"].append(span.trace_id)
                cols["span_id"].append(span.span_id)
                cols["parent_span_id"].append(span.parent_span_id)
                cols["trace_state"].append(span.trace_state)
                cols["name"].append(span.name)
                cols["kind"].append(span.kind)
                cols["start_time_unix_nano"].append(span.start_time_unix_nano)
                cols["end_time_unix_nano"].append(span.end_time_unix_nano)
                cols["status_code"].append(span.status.code)
                cols["status_message"].append(span.status.message)
                cols["attributes"].append(_attr_rows(span.attributes))
                cols["events"].append([{"name": e.name, "time_unix_nano": e.time_unix_nano,
                                        "attributes": _attr_rows(e.attributes)}
                                       for e in span.events])
                cols["resource_attributes"].append(res)
                cols["scope_name"].append(ss.scope.name)
                cols["scope_version"].append(ss.scope.version)
    return pa.Table.from_pydict(cols, schema=S.SPAN_BATCH)


def decode_record(value: bytes | None, headers: Iterable[tuple[str, bytes]] | None = None,
                  ) -> pa.Table:
    """One ``otlp_spans`` record -> span batch. Raises DecodeError for bad records.

    The tenant comes from the ``llmspend-tenant`` header (``default`` without one, e.g.
    records written by an OpenTelemetry Collector); keys are never relied on.
    """
    if not value:
        raise DecodeError("empty record")
    hdrs = {k: v for k, v in (headers or [])}
    tenant = (hdrs.get(TENANT_HEADER) or b"default").decode("utf-8", "replace")
    ctype = hdrs.get("content-type")
    encoding = sniff_encoding(value, ctype.decode("latin-1") if ctype else None)
    if encoding == PROTOBUF:
        return _protobuf_batch(value, tenant)
    said_json = ctype is not None and \
        ctype.decode("latin-1").split(";")[0].strip().lower() == JSON
    if not said_json and value[:1] != b"{":     # blank first bytes: JSON's or protobuf's
        try:
            return _json_batch(value, tenant)
        except DecodeError as exc:
            try:
                return _protobuf_batch(value, tenant)
            except DecodeError:
                raise exc from None
    return _json_batch(value, tenant)


def _protobuf_batch(value: bytes, tenant: str) -> pa.Table:
    # The columnar wire decoder: the same batch (property-tested against the reference
    # below), without a Python object per span; it falls back to the reference itself.
    from pipeline import otlp_wire

    return otlp_wire.decode_batch(value, tenant)


def _json_batch(value: bytes, tenant: str) -> pa.Table:
    req = parse_request(value, JSON)
    try:
        return request_to_batch(req, tenant)
    except (pa.ArrowException, UnicodeDecodeError, binascii.Error) as exc:
        raise DecodeError(f"cannot build span batch: {exc}") from None


def response(rejected: int = 0, message: str = "") -> ExportTraceServiceResponse:
    """An ExportTraceServiceResponse, with partial_success when spans were rejected."""
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    return resp

