"""OTLP/HTTP receiver (``POST /v1/traces``), as the OTLP/HTTP specification describes it.

Protobuf and JSON bodies, optional gzip; the response is an ExportTraceServiceResponse
in the request's encoding (with ``partial_success`` when invalid spans were dropped); 4xx
and 5xx bodies are ``google.rpc.Status`` messages. 200 is sent only after Kafka
acknowledged the records; 503/429 carry ``Retry-After`` so stock exporters retry.
"""

from __future__ import annotations

import json
import zlib

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2

from pipeline import otlp
from pipeline.ingest.core import Ingestor, Overloaded, Unauthorized, Unavailable

TRACES_PATH = "/v1/traces"
# google.rpc.Code values used in error bodies.
_INVALID_ARGUMENT, _RESOURCE_EXHAUSTED, _UNAVAILABLE, _UNAUTHENTICATED = 3, 8, 14, 16


def _encode(message, encoding: str) -> bytes:
    if encoding == otlp.JSON:
        return json.dumps(json_format.MessageToDict(message)).encode()
    return message.SerializeToString()


def _error(status: int, message: str, encoding: str, code: int,
           headers: dict[str, str] | None = None) -> web.Response:
    body = _encode(status_pb2.Status(code=code, message=message), encoding)
    return web.Response(status=status, body=body, content_type=encoding, headers=headers)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress with a size cap, so a small gzip bomb cannot exhaust memory."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise OverflowError
    if not d.eof:
        raise zlib.error("truncated gzip stream")
    return out


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """The whole body, or OverflowError as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise OverflowError
        chunks.append(chunk)


def make_app(ingestor: Ingestor, controls=None) -> web.Application:
    """The aiohttp application: /v1/traces, /v1/verdict, /health, /metrics."""
    limit = ingestor.settings.ingest.max_body_bytes
    retry = str(ingestor.settings.ingest.retry_after_s)
    metrics = ingestor.metrics

    async def traces(request: web.Request) -> web.Response:
        ctype = (request.content_type or "").lower()
        if ctype not in (otlp.PROTOBUF, otlp.JSON):
            metrics.inc("rejected_requests_total", reason="unsupported_media_type")
            return _error(415, f"unsupported Content-Type {ctype!r}: use "
                               f"{otlp.PROTOBUF} or {otlp.JSON}", otlp.PROTOBUF,
                          _INVALID_ARGUMENT)
        try:
            tenant = ingestor.tenant_for(request.headers.get("Authorization"))
        except Unauthorized as exc:
            metrics.inc("rejected_requests_total", reason="unauthorized")
            return _error(401, str(exc), ctype, _UNAUTHENTICATED,
                          {"WWW-Authenticate": "Bearer"})
        if request.content_length is not None and request.content_length > limit:
            metrics.inc("rejected_requests_total", reason="too_large")
            return _error(413, f"body of {request.content_length} bytes exceeds {limit}",
                          ctype, _INVALID_ARGUMENT)
        try:
            body = await _read_capped(request, limit)
            encoding = request.headers.get("Content-Encoding", "identity").lower()
            if encoding == "gzip":
                body = _gunzip(body, limit)
            elif encoding not in ("identity", ""):
                metrics.inc("rejected_requests_total", reason="unsupported_encoding")
                return _error(415, f"unsupported Content-Encoding {encoding!r}", ctype,
                              _INVALID_ARGUMENT)
        except OverflowError:
            metrics.inc("rejected_requests_total", reason="too_large")
            return _error(413, f"body exceeds {limit} bytes", ctype, _INVALID_ARGUMENT)
        except zlib.error as exc:
            metrics.inc("rejected_requests_total", reason="bad_gzip")
            return _error(400, f"invalid gzip body: {exc}", ctype, _INVALID_ARGUMENT)
        try:
            result = await ingestor.ingest(body, ctype, tenant)
        except otlp.DecodeError as exc:
            return _error(400, str(exc), ctype, _INVALID_ARGUMENT)
        except Overloaded as exc:
            return _error(429, str(exc), ctype, _RESOURCE_EXHAUSTED, {"Retry-After": retry})
        except Unavailable as exc:
            return _error(503, str(exc), ctype, _UNAVAILABLE, {"Retry-After": retry})
        resp = otlp.response(result.rejected, result.message)
        return web.Response(status=200, body=_encode(resp, ctype), content_type=ctype)

    async def health(_request: web.Request) -> web.Response:
        ok = await ingestor.kafka_ok()
        return web.json_response({"status": "ok" if ok else "degraded", "kafka": ok},
                                 status=200 if ok else 503)

    async def prometheus(_request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain",
                            charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})

    # aiohttp's own cap sits just above ours so that we answer 413 ourselves.
    app = web.Application(client_max_size=limit + 1024 * 1024)
    async def verdict(request: web.Request) -> web.Response:
        """``GET /v1/verdict?session=ID[&agent=&team=&user=]``: allow / warn / block for
        the caller's tenant (its bearer token; a token never sees another tenant)."""
        from pipeline.verdict import SUBJECTS

        try:
            tenant = ingestor.tenant_for(request.headers.get("Authorization"))
        except Unauthorized as exc:
            return web.json_response({"error": str(exc)}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        asked = request.query.get("tenant")
        if asked and asked != tenant:
            if ingestor.tokens:
                return web.json_response({"error": "this token cannot see tenant "
                                                   f"{asked!r}"}, status=403)
            tenant = asked    # auth off: one trusted network, any tenant may be asked
        subjects = {k: v for k in SUBJECTS if (v := request.query.get(k))}
        if not subjects:
            return web.json_response({"error": "ask about session=, agent=, team= or "
                                               "user="}, status=400)
        if controls is None or not controls.ready.is_set():
            return web.json_response({"error": "verdicts not loaded yet"}, status=503,
                                     headers={"Retry-After": retry})
        return web.json_response(controls.verdicts.lookup(tenant, subjects))

    app.router.add_post(TRACES_PATH, traces)
    app.router.add_get("/v1/verdict", verdict)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    return app
