"""The span batch: what every OTLP decoder produces and the normaliser consumes.

One row per span, columnar (Arrow). Attribute values keep their OTLP type in a small
tagged struct so that no information is lost between the wire and the normaliser:
``type`` says which of ``str``/``int``/``dbl``/``bool`` holds the value; arrays and
key-value lists are stored as compact JSON in ``str`` (type ``ARRAY``/``KVLIST``) and
bytes as lowercase hex (type ``BYTES``).

Ids are raw bytes (16 for trace ids, 8 for span ids; ``parent_span_id`` empty for a
root span), as on the OTLP protobuf wire.
"""

from __future__ import annotations

import pyarrow as pa

# Attribute value type tags (the ``type`` field of ATTRIBUTE).
STRING, BOOL, INT, DOUBLE, ARRAY, KVLIST, BYTES, EMPTY = 1, 2, 3, 4, 5, 6, 7, 0

ATTRIBUTE = pa.struct([
    pa.field("key", pa.string(), nullable=False),
    pa.field("type", pa.int8(), nullable=False),
    pa.field("str", pa.string()),
    pa.field("int", pa.int64()),
    pa.field("dbl", pa.float64()),
    pa.field("bool", pa.bool_()),
])
ATTRIBUTES = pa.list_(ATTRIBUTE)

EVENT = pa.struct([
    pa.field("name", pa.string()),
    pa.field("time_unix_nano", pa.uint64()),
    pa.field("attributes", ATTRIBUTES),
])

# OTLP SpanKind and Status.code values.
SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

SPAN_BATCH = pa.schema([
    pa.field("tenant", pa.string(), nullable=False),
    pa.field("trace_id", pa.binary(), nullable=False),
    pa.field("span_id", pa.binary(), nullable=False),
    pa.field("parent_span_id", pa.binary(), nullable=False),
    pa.field("trace_state", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("kind", pa.int8(), nullable=False),
    pa.field("start_time_unix_nano", pa.uint64(), nullable=False),
    pa.field("end_time_unix_nano", pa.uint64(), nullable=False),
    pa.field("status_code", pa.int8(), nullable=False),
    pa.field("status_message", pa.string(), nullable=False),
    pa.field("attributes", ATTRIBUTES, nullable=False),
    pa.field("events", pa.list_(EVENT), nullable=False),
    pa.field("resource_attributes", ATTRIBUTES, nullable=False),
    pa.field("scope_name", pa.string(), nullable=False),
    pa.field("scope_version", pa.string(), nullable=False),
])
