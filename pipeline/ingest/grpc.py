"""OTLP/gRPC receiver (``opentelemetry.proto.collector.trace.v1.TraceService/Export``).

Same semantics as the HTTP receiver: OK only after Kafka acknowledged, ``partial_success``
for dropped invalid spans, UNAVAILABLE / RESOURCE_EXHAUSTED with a ``RetryInfo`` detail
(the delay OTLP exporters honour) when Kafka is down or busy, UNAUTHENTICATED without a
valid bearer token. gzip is negotiated by gRPC itself.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from pipeline import otlp
from pipeline.ingest.core import Ingestor, Overloaded, Unauthorized, Unavailable


def _retry_details(code: grpc.StatusCode, message: str, seconds: int) -> tuple:
    """Trailing metadata carrying a google.rpc.Status with RetryInfo."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """The Export RPC over an :class:`Ingestor`."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    async def Export(self, request, context):
        metadata = dict(context.invocation_metadata() or ())
        try:
            tenant = self.ingestor.tenant_for(metadata.get("authorization"))
        except Unauthorized as exc:
            self.ingestor.metrics.inc("rejected_requests_total", reason="unauthorized")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        retry = self.ingestor.settings.ingest.retry_after_s
        try:
            # The request is already parsed by gRPC; the Ingestor takes bytes so every
            # way in shares one code path (and one set of checks).
            result = await self.ingestor.ingest(request.SerializeToString(), otlp.PROTOBUF,
                                                tenant)
        except otlp.DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            context.set_trailing_metadata(
                _retry_details(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), retry))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Unavailable as exc:
            context.set_trailing_metadata(
                _retry_details(grpc.StatusCode.UNAVAILABLE, str(exc), retry))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return otlp.response(result.rejected, result.message)


def make_server(ingestor: Ingestor) -> grpc.aio.Server:
    """A grpc.aio server with the trace service, bound to the configured address."""
    limit = ingestor.settings.ingest.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", 4 * 1024 * 1024)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(ingestor), server)
    s = ingestor.settings.ingest
    server.add_insecure_port(f"{s.host}:{s.grpc_port}")
    return server
