"""`llmspend worker`: run the stream stages in one Faust worker process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pipeline import clients, gc_clock
from pipeline.config import Settings
from pipeline.stream import aggregate_stage, detect_stage, lake_stage, normalise_stage
from pipeline.stream.app import create_app
from pipeline.stream.handoff import Handoff
from pipeline.stream.handoff import metrics as handoff_metrics


def ready_file(settings: Settings) -> Path:
    """Touched when the worker's partitions are assigned (what `up` waits for)."""
    return settings.state_dir / "run" / "worker.ready"


def build(settings: Settings):
    """The Faust app with every stage registered (stages are added here as they land)."""
    app = create_app(settings)
    stages = settings.stream.stage_set
    # Both stages here: the aggregate takes the normaliser's columns, not re-parsing.
    handoff = Handoff() if {"normalise", "aggregate"} <= stages else None
    # And the lake sink takes its rows, not re-parsing the NDJSON either.
    lake_handoff = Handoff() if {"normalise", "lake"} <= stages else None
    norm = normalise_stage.register(app, settings,
                                    heartbeats=bool(stages & {"aggregate", "detect"}),
                                    handoff=handoff, lake_handoff=lake_handoff,
                                    ) if "normalise" in stages else None
    agg = aggregate_stage.register(app, settings, handoff) if "aggregate" in stages \
        else None
    sessions = (detect_stage.register_sessions(app, settings) if "detect" in stages
                else None)
    windows = (detect_stage.register_windows(app, settings) if "detect_windows" in stages
               else None)
    sink = lake_stage.register(app, settings, lake_handoff) if "lake" in stages else None
    if sink is not None and settings.jobs.every_s > 0:
        _schedule_jobs(app, settings)
    if settings.stream.metrics_port:
        _serve_metrics(app, settings, [norm, agg, sessions, windows, sink],
                       {"aggregate": handoff, "lake": lake_handoff},
                       gc_clock.GcClock().start())
    marker = ready_file(settings)

    @app.on_rebalance_complete.connect
    async def _ready(sender, **_kwargs) -> None:
        # Resolve every position first (offset reset included) and pin the new ones:
        # once the marker exists, nothing produced afterwards can be skipped by a
        # "latest" reset, not even after a crash before the group's first commit.
        positions = {}
        for tp in app.consumer.assignment():
            try:
                positions[tp] = await app.consumer.position(tp)
            except Exception:  # readiness is best effort
                logging.getLogger(__name__).debug("position of %s", tp, exc_info=True)
        await _pin_new_partitions(app, settings, positions)
        if windows is not None:
            try:
                await asyncio.wait_for(windows.positioned.wait(), 60)
            except TimeoutError:
                logging.getLogger(__name__).warning("window detectors not positioned")
        if sink is not None and not await asyncio.get_running_loop().run_in_executor(
                None, sink.ready.wait, 60):
            logging.getLogger(__name__).warning("lake sink not positioned")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("ready\n")

    return app


async def _pin_new_partitions(app, settings: Settings, positions: dict) -> None:
    """Commit the starting position of every partition the group never committed.

    Faust commits only what it processed. A new group starting at "latest" and killed
    before its first commit would restart at a *new* "latest" and skip everything
    produced in between; committing where it started closes that gap (at worst the
    restarted worker reprocesses, which every stage tolerates)."""
    log = logging.getLogger(__name__)
    loop = asyncio.get_running_loop()
    try:
        committed = await loop.run_in_executor(None, clients.committed_partitions,
                                               settings, settings.stream.app_id)
        new = {tp: off for tp, off in positions.items()
               if off is not None and (tp.topic, tp.partition) not in committed}
        if new:
            await app.consumer._commit(new)
            log.info("pinned the start of %d new partition(s)", len(new))
    except Exception:  # the old behaviour (commit once processed) is the fallback
        log.warning("could not pin the start of new partitions", exc_info=True)


def _schedule_jobs(app, settings: Settings) -> None:
    """Compaction, rollups and retention every ``jobs.every_s``, on a thread (they read
    and write files; the stream stages keep the event loop). The lake's job lock keeps
    several workers (or a ``llmspend jobs`` run) from overlapping."""
    from jobs import run_scheduled

    log = logging.getLogger("llmspend.jobs")

    @app.timer(interval=settings.jobs.every_s)
    async def _lake_jobs() -> None:
        try:
            r = await asyncio.get_running_loop().run_in_executor(None, run_scheduled,
                                                                 settings)
        except Exception:  # a failed run is retried next time; the lake stays valid
            log.exception("lake jobs failed")
            return
        log.info("lake jobs: compacted %d partition(s) (%d files -> %d, %d twins dropped), "
                 "rolled up %d day(s), retention deleted %d partition(s)%s",
                 r.compact.partitions, r.compact.files_in, r.compact.files_out,
                 r.compact.twins_dropped, r.rollup.days, len(r.retention.expired),
                 f", skipped: {r.compact.skipped}" if r.compact.skipped else "")


def _serve_metrics(app, settings: Settings, stages: list,
                   handoffs: dict[str, Handoff | None], collector: gc_clock.GcClock) -> None:
    """Prometheus /metrics of the worker (records in and dead-lettered, consumer lag,
    calls, dedup drops, late calls, window emissions, detector counts, handoff hits,
    CPU per stage step and thread, garbage collections), on its own small aiohttp
    server. ``stages``: normalise, aggregate, sessions, windows, lake (None if off);
    ``handoffs``: by the stage that takes from it (None if off)."""
    from aiohttp import web

    from pipeline import stepclock
    from schemas.topics import LLM_CALLS

    norm, agg, sessions, windows, sink = stages

    async def metrics(_request):
        highwater = {}
        for tp in app.consumer.assignment():
            if tp.topic == LLM_CALLS:
                hw = app.consumer.highwater(tp)
                if hw is not None:
                    highwater[tp.partition] = hw
        text = agg.metrics(highwater) if agg is not None else ""
        for stage in (norm, sessions, windows, sink):
            if stage is not None:
                text += "\n".join(stage.metrics()) + "\n"
        text += "".join(line + "\n" for line in handoff_metrics(handoffs))
        text += "".join(line + "\n" for line in collector.metrics())
        text += "\n".join(stepclock.render(s.clock for s in stages if s is not None))
        return web.Response(text=text + "\n", content_type="text/plain")

    @app.task
    async def _metrics_server() -> None:
        web_app = web.Application()
        web_app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.ingest.host,
                              settings.stream.metrics_port).start()
        except OSError as exc:  # metrics are not worth stopping the pipeline for
            logging.getLogger(__name__).warning(
                "worker /metrics not served on port %d: %s (set LLMSPEND_STREAM_METRICS_PORT)",
                settings.stream.metrics_port, exc)


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (Faust stops cleanly and commits processed offsets)."""
    import faust

    from pipeline import logs

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            logs.quiet_repeats(logger)   # Kafka down: one reconnect line per 30 s

    ready_file(settings).unlink(missing_ok=True)
    app = build(settings)
    gc_clock.freeze(settings.stream.gc_freeze)   # built, kernels warm: nothing of it is garbage
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
