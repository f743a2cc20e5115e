"""Emission: replay a :class:`~pipeline.traffic.plan.Plan` through the real OTel SDK.

Each (tenant, service) pair gets a ``TracerProvider`` with the service's resource, a
:class:`PlannedIdGenerator` (so the SDK assigns exactly the planned trace and span ids:
the same seed gives the same ids) and the tenant's :class:`BackpressureProcessor` in
front of a stock exporter (OTLP/HTTP, OTLP/gRPC, or llmspend's ``KafkaSpanExporter``).
Spans are created with their planned start time and ended with their planned end time,
in end-time order, which is when a real application exports them.

Pacing: by default a span is emitted when the wall clock reaches its end time
(``start_time`` maps to the moment emission starts). With ``max_rate`` spans go out as
fast as the exporter accepts them: the processor blocks the emitter while
``max_pending`` batches wait for the exporter, so nothing is ever dropped (the SDK's own
``BatchSpanProcessor`` drops spans when its queue is full, unacceptable for a ground
truth). Retry-storm copies are the same span created again (same ids) two seconds of
event time after the original, like a client re-sending a batch whose answer it missed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from pipeline.traffic.plan import Plan, PlannedSpan

KINDS = {"client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL,
         "server": SpanKind.SERVER}
DUPLICATE_DELAY_NS = 2_000_000_000
HTTP, GRPC, KAFKA = "http", "grpc", "kafka"
PROTOCOLS = (HTTP, GRPC, KAFKA)
DEFAULT_ENDPOINTS = {HTTP: "http://127.0.0.1:4318/v1/traces", GRPC: "127.0.0.1:4317",
                     KAFKA: ""}
SCOPE_VERSION = "0.1.0"


class PlannedIdGenerator(IdGenerator):
    """Hands the SDK the ids the plan chose (set before each ``start_span``)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


class BackpressureProcessor(SpanProcessor):
    """Batches ended spans and exports them on one worker thread, never dropping any.

    ``on_end`` blocks while ``max_pending`` full batches wait for the exporter: the
    emitter then runs exactly as fast as the exporter (and what is behind it) accepts.
    """

    def __init__(self, exporter: SpanExporter, max_batch: int = 512,
                 max_delay_s: float = 0.5, max_pending: int = 4) -> None:
        self.exporter = exporter
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._batch: list[ReadableSpan] = []
        self._since = time.monotonic()
        self._queue: queue.Queue[list[ReadableSpan] | None] = queue.Queue(max_pending)
        self.exported = 0
        self.failed = 0
        self.batches = 0
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="llmspend-generate-export",
                                        daemon=True)
        self._worker.start()

    def on_start(self, span, parent_context=None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(span)
        if len(self._batch) >= self.max_batch:
            self._submit()

    def tick(self) -> None:
        """Export a partial batch older than ``max_delay_s`` (call while idle)."""
        if self._batch and time.monotonic() - self._since >= self.max_delay_s:
            self._submit()

    def _submit(self) -> None:
        batch, self._batch = self._batch, []
        self._queue.put(batch)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                try:
                    ok = self.exporter.export(batch) == SpanExportResult.SUCCESS
                except Exception:  # noqa: BLE001 - an exporter bug must not hang us
                    ok = False
                with self._lock:
                    self.batches += 1
                    if ok:
                        self.exported += len(batch)
                    else:
                        self.failed += len(batch)
            finally:
                self._queue.task_done()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._batch:
            self._submit()
        self._queue.join()
        return True

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.force_flush()
        self._queue.put(None)
        self._worker.join()
        self.exporter.shutdown()


def http_endpoint(url: str) -> str:
    """An OTLP/HTTP traces URL: ``/v1/traces`` added when only a base URL is given."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path if parts.path not in ("", "/") else "/v1/traces"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def make_exporter(protocol: str, endpoint: str | None = None, token: str | None = None,
                  tenant: str = "default", settings=None, timeout_s: float = 30.0
                  ) -> SpanExporter:
    """A stock exporter for ``protocol`` (or the Kafka one), with the tenant's token."""
    if protocol == HTTP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=http_endpoint(endpoint or DEFAULT_ENDPOINTS[HTTP]),
                                headers={"Authorization": f"Bearer {token}"} if token else None,
                                timeout=timeout_s)
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        target = endpoint or DEFAULT_ENDPOINTS[GRPC]
        secure = target.startswith("https://")
        target = target.removeprefix("https://").removeprefix("http://").rstrip("/")
        return GrpcExporter(endpoint=target, insecure=not secure,
                            headers=(("authorization", f"Bearer {token}"),) if token else None,
                            timeout=timeout_s)
    if protocol == KAFKA:
        from pipeline.ingest.exporter import KafkaSpanExporter

        return KafkaSpanExporter(settings, tenant=tenant, timeout_s=timeout_s)
    raise ValueError(f"unknown protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")


@dataclass
class EmitStats:
    spans: int = 0              # spans created (copies included)
    exported: int = 0           # acknowledged by the exporters
    failed: int = 0             # the exporters gave up on these
    batches: int = 0
    seconds: float = 0.0
    per_tenant: dict[str, int] = field(default_factory=dict)

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.seconds if self.seconds > 0 else 0.0


def _order(p: Plan) -> list[tuple[int, PlannedSpan]]:
    out = [(sp.end_ns, sp) for sp in p.spans]
    for sp in p.spans:
        for k in range(1, sp.copies):
            out.append((sp.end_ns + k * DUPLICATE_DELAY_NS, sp))
    out.sort(key=lambda x: x[0])
    return out


def emit(p: Plan, exporters: Mapping[str, SpanExporter], *, max_rate: bool = True,
         progress: Callable[[int, int, EmitStats], None] | None = None,
         max_batch: int = 512, max_pending: int = 4,
         sleep: Callable[[float], None] = time.sleep) -> EmitStats:
    """Create every planned span with the SDK and export it; returns what happened.

    ``exporters`` maps each tenant of the plan to its exporter (shut down at the end).
    """
    missing = {sp.tenant for sp in p.spans} - set(exporters)
    if missing:
        raise ValueError(f"no exporter for tenant(s) {', '.join(sorted(missing))}")
    ids = PlannedIdGenerator()
    limits = SpanLimits(max_span_attributes=4096, max_event_attributes=128)
    processors = {t: BackpressureProcessor(e, max_batch=max_batch, max_pending=max_pending)
                  for t, e in exporters.items()}
    providers: dict[tuple[str, str], TracerProvider] = {}
    tracers: dict[tuple[str, str, str], object] = {}
    stats = EmitStats()
    order = _order(p)
    total = len(order)
    started = shown = time.monotonic()
    root_ctx = otel_context.Context()
    try:
        for n, (when, sp) in enumerate(order):
            if not max_rate:
                due = started + (when - p.start_ns) / 1e9
                while True:
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    for proc in processors.values():
                        proc.tick()
                    if progress is not None and time.monotonic() - shown >= 0.5:
                        shown = time.monotonic()
                        _collect(stats, processors)
                        stats.seconds = shown - started
                        progress(n, total, stats)
                    sleep(min(wait, 0.05))
            key = (sp.tenant, sp.service, sp.scope)
            tracer = tracers.get(key)
            if tracer is None:
                prov = providers.get(key[:2])
                if prov is None:
                    prov = TracerProvider(resource=Resource.create(p.resources[sp.service]),
                                          sampler=ALWAYS_ON, id_generator=ids,
                                          span_limits=limits, shutdown_on_exit=False)
                    prov.add_span_processor(processors[sp.tenant])
                    providers[key[:2]] = prov
                tracer = tracers[key] = prov.get_tracer(sp.scope, SCOPE_VERSION)
            ids.trace_id, ids.span_id = sp.trace_id, sp.span_id
            if sp.parent_id:
                ctx = set_span_in_context(NonRecordingSpan(SpanContext(
                    sp.trace_id, sp.parent_id, is_remote=False,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED))))
            else:
                ctx = root_ctx
            span = tracer.start_span(sp.name, context=ctx, kind=KINDS[sp.kind],
                                     attributes=sp.attributes, start_time=sp.start_ns)
            if sp.error:
                span.set_status(Status(StatusCode.ERROR, sp.error))
            span.end(end_time=sp.end_ns)
            stats.spans += 1
            stats.per_tenant[sp.tenant] = stats.per_tenant.get(sp.tenant, 0) + 1
            if progress is not None and (n % 200 == 0 or n == total - 1):
                _collect(stats, processors)
                stats.seconds = time.monotonic() - started
                progress(n + 1, total, stats)
    finally:
        for proc in processors.values():
            proc.shutdown()
        for prov in providers.values():   # processors shut down once (idempotent)
            prov.shutdown()
    _collect(stats, processors)
    stats.seconds = time.monotonic() - started
    if progress is not None:
        progress(total, total, stats)
    return stats


def _collect(stats: EmitStats, processors: Mapping[str, BackpressureProcessor]) -> None:
    stats.exported = sum(p.exported for p in processors.values())
    stats.failed = sum(p.failed for p in processors.values())
    stats.batches = sum(p.batches for p in processors.values())
