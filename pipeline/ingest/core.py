"""What every way in shares: validate, strip content, split, produce with ``acks=all``.

The HTTP and gRPC receivers are thin protocol adapters around :class:`Ingestor`; it owns
the one aiokafka producer of the process and answers only after Kafka acknowledged every
record of a request, so an acknowledged span is never lost. When Kafka is down or too
many requests wait for it, it raises :class:`Unavailable` or :class:`Overloaded`, which
the adapters turn into 503/429 (UNAVAILABLE/RESOURCE_EXHAUSTED) with a retry delay, as
OTLP exporters expect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pipeline import otlp
from pipeline.clients import aiokafka_config, compression_type
from pipeline.config import Settings
from pipeline.ingest.metrics import Metrics
from schemas.topics import OTLP_SPANS

log = logging.getLogger(__name__)

#: Room left in each Kafka record for the record and batch framing and our headers.
RECORD_OVERHEAD = 4096


class Unavailable(Exception):
    """Kafka did not acknowledge in time: the client should retry later (503)."""


class Overloaded(Exception):
    """Too many requests are waiting for Kafka: the client should back off (429)."""


class Unauthorized(Exception):
    """Auth is on and the request carries no valid bearer token (401)."""


@dataclass(frozen=True)
class Accepted:
    """The outcome of an accepted request (HTTP 200 / gRPC OK)."""

    spans: int
    rejected: int
    message: str
    records: int


class Ingestor:
    """Turns export requests into acknowledged ``otlp_spans`` records."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 topic: str = OTLP_SPANS) -> None:
        self.settings = settings
        self.topic = topic
        self.metrics = metrics or Metrics()
        self.tokens = settings.ingest_tokens()
        self.hash_key = settings.hash_key_bytes()
        self.keep_content = settings.privacy.keep_content
        self.max_record = settings.kafka.max_message_bytes - RECORD_OVERHEAD
        self._producer = None
        self._producer_lock = asyncio.Lock()
        self._inflight = 0

    # ------------------------------------------------------------ auth

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of a request: from its bearer token when auth is on."""
        if not self.tokens:
            return "default"
        if authorization and authorization[:7].lower() == "bearer ":
            tenant = self.tokens.get(authorization[7:].strip())
            if tenant:
                return tenant
        raise Unauthorized("missing or invalid bearer token")

    # ------------------------------------------------------------ kafka

    async def _get_producer(self):
        from aiokafka import AIOKafkaProducer

        async with self._producer_lock:
            if self._producer is None:
                k = self.settings.kafka
                producer = AIOKafkaProducer(
                    acks="all", enable_idempotence=True,
                    max_request_size=k.max_message_bytes,
                    request_timeout_ms=int(self.settings.ingest.produce_timeout_s * 1000),
                    linger_ms=2, client_id="llmspend-ingest",
                    compression_type=compression_type(self.settings),
                    **aiokafka_config(self.settings))
                try:
                    await asyncio.wait_for(producer.start(),
                                           self.settings.ingest.produce_timeout_s)
                except BaseException:
                    await _quiet_stop(producer)
                    raise
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await _quiet_stop(self._producer)
            self._producer = None

    async def kafka_ok(self) -> bool:
        """Whether a producer is connected (for /health)."""
        try:
            await self._get_producer()
        except Exception:  # noqa: BLE001 - any failure means "not connected"
            return False
        return True

    async def _produce(self, records: list[bytes], tenant: str) -> None:
        headers = [(otlp.TENANT_HEADER, tenant.encode()),
                   ("content-type", otlp.PROTOBUF.encode())]
        started = time.perf_counter()

        async def send_all() -> None:
            producer = await self._get_producer()
            futures = [await producer.send(self.topic, value=r, headers=headers)
                       for r in records]
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(send_all(), self.settings.ingest.produce_timeout_s)
        except (TimeoutError, OSError) as exc:
            self.metrics.inc("kafka_errors_total")
            raise Unavailable(f"Kafka did not acknowledge in time ({type(exc).__name__})"
                              ) from None
        except Exception as exc:  # noqa: BLE001 - aiokafka's KafkaError family
            self.metrics.inc("kafka_errors_total")
            # A broken producer is rebuilt on the next request.
            if self._producer is not None:
                await _quiet_stop(self._producer)
                self._producer = None
            raise Unavailable(f"Kafka unavailable: {type(exc).__name__}: {exc}") from None
        self.metrics.observe("kafka_produce_seconds", time.perf_counter() - started)

    # ------------------------------------------------------------ requests

    async def ingest(self, body: bytes, encoding: str, tenant: str) -> Accepted:
        """Decode, sanitise, split and produce one export request.

        Raises DecodeError (400), Overloaded (429) or Unavailable (503).
        """
        self.metrics.inc("requests_total")
        self.metrics.inc("bytes_total", len(body))
        try:
            req = otlp.parse_request(body, encoding)
        except otlp.DecodeError:
            self.metrics.inc("rejected_requests_total", reason="undecodable")
            raise
        report = otlp.sanitise_request(req, hash_key=self.hash_key,
                                       keep_content=tenant in self.keep_content)
        for reason, n in (report.reasons or {}).items():
            self.metrics.inc("rejected_spans_total", n, reason=reason)
        self.metrics.inc("content_attributes_removed_total", report.content_removed)
        accepted = report.spans - report.rejected
        try:
            records = otlp.split_request(req, self.max_record) if accepted else []
        except otlp.DecodeError:
            self.metrics.inc("rejected_requests_total", reason="span_too_large")
            raise
        if records:
            if self._inflight >= self.settings.ingest.max_inflight:
                self.metrics.inc("rejected_requests_total", reason="overloaded")
                raise Overloaded(f"{self._inflight} requests already wait for Kafka")
            self._inflight += 1
            try:
                await self._produce(records, tenant)
            except Unavailable:
                self.metrics.inc("rejected_requests_total", reason="kafka_unavailable")
                raise
            finally:
                self._inflight -= 1
        self.metrics.inc("spans_total", accepted)
        self.metrics.inc("records_total", len(records))
        return Accepted(spans=accepted, rejected=report.rejected, message=report.message,
                        records=len(records))


async def _quiet_stop(producer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception:
        log.debug("producer stop failed", exc_info=True)
