"""Run the OTLP/HTTP and OTLP/gRPC receivers in one asyncio process (`llmspend ingest`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from pipeline.config import Settings
from pipeline.health import start_watchdog
from pipeline.ingest.core import Ingestor
from pipeline.ingest.grpc import make_server
from pipeline.ingest.http import make_app

log = logging.getLogger(__name__)


class ReceiverError(RuntimeError):
    """A receiver could not start (e.g. its port is taken)."""


async def serve(settings: Settings, stop: asyncio.Event | None = None,
                ready: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT), then drain and close."""
    stop = stop or asyncio.Event()
    ingestor = Ingestor(settings)
    s = settings.ingest
    # We decompress ourselves, with a size cap (a gzip bomb must not fill memory).
    from pipeline.verdict import ControlsReader

    controls = ControlsReader(settings).start()   # answers GET /v1/verdict
    runner = web.AppRunner(make_app(ingestor, controls), access_log=None,
                           auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, s.host, s.http_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ReceiverError(f"OTLP/HTTP port {s.host}:{s.http_port} unavailable ({exc}); "
                            f"set LLMSPEND_INGEST_HTTP_PORT") from None
    try:
        grpc_server = make_server(ingestor)
        await grpc_server.start()
    except RuntimeError as exc:
        await runner.cleanup()
        raise ReceiverError(f"OTLP/gRPC port {s.host}:{s.grpc_port} unavailable ({exc}); "
                            f"set LLMSPEND_INGEST_GRPC_PORT") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("OTLP receivers on http://%s:%d/v1/traces and grpc %s:%d",
             s.host, s.http_port, s.host, s.grpc_port)
    # Connect to Kafka eagerly so the first export is fast; failure is not fatal
    # (requests answer 503 until Kafka is back).
    await ingestor.kafka_ok()
    if ready is not None:
        ready.set()
    # Watch the worker from outside: a stalled pipeline must alert (pipeline/health.py).
    watchdog = start_watchdog(settings)
    try:
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.stop()
        controls.stop()
        await grpc_server.stop(grace=5)
        await runner.cleanup()
        await ingestor.close()
