"""Stage 3: detectors -> ``llm_alerts``. Thin Faust shells around the pure detectors.

* **Sessions** (``detect``): an agent on ``llm_calls`` (partitioned by session) feeds one
  :class:`pipeline.detect.SessionDetector` per partition. Session state is changelogged
  to a compacted topic ``<app id>-detect-sessions`` (same partition numbers as
  ``llm_calls``; a tombstone when a session expires) and read back when a partition is
  assigned, before its first record. For every record the changelog writes are
  acknowledged before the alerts are sent, and the alerts before the next record is
  taken (so before Faust may commit its offset): a restart replays at most the
  uncommitted records onto state that already holds them, and ``call_id`` dedup makes
  that a no-op; no incident re-fires, none is lost.
* **Windows** (``detect_windows``): a task reading EVERY ``llm_agg_1m`` partition (no
  consumer group: a key's partials come from all partitions), merged in write order
  by :class:`pipeline.timealign.TimeAligner` (a partition's backlog never runs ahead
  of the others), into one :class:`pipeline.anomaly.WindowDetector`. On start it
  recovers its incidents from ``llm_alerts`` (the latest record of each dedup_key) and,
  with ``stream.auto_offset_reset = earliest``, re-reads the last baseline's worth of
  partials (judging only minutes completed after the start). Run it on one worker.

Latency budget of the alert path (see bench/bench_detect.py): ingest produce (linger
5 ms) -> normalise (Faust fetch, one record per export request) -> ``llm_calls``
(producer linger 0, acks=all) -> this agent -> ``llm_alerts`` (acks=all). Nothing
waits for a window: session detectors judge every call as it is folded in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from pipeline import clients, stepclock
from pipeline.aggregate import is_heartbeat
from pipeline.alerts import latest_by_key
from pipeline.anomaly import WindowDetector, WindowLimits
from pipeline.budget import BookConfig, BudgetBook, parse_budgets, unit_targets
from pipeline.config import Settings
from pipeline.detect import SessionDetector, SessionLimits
from pipeline.timealign import TimeAligner
from pipeline.topics import TopicSpec, ensure_topics
from pipeline.verdict import control_from_alert
from schemas.topics import LLM_AGG_1M, LLM_ALERTS, LLM_CALLS, LLM_CONTROLS

log = logging.getLogger(__name__)


def changelog_topic(settings: Settings) -> str:
    return f"{settings.stream.app_id}-detect-sessions"


def decode_rows(value: bytes | None) -> tuple[list[dict[str, Any]], int]:
    """The calls of one ``llm_calls`` record, and how many lines were unreadable (a bad
    line is skipped, never the record)."""
    rows, bad = [], 0
    for line in (value or b"").split(b"\n"):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and row.get("call_id") and row.get("session_id") \
                and row.get("tenant") is not None and row.get("start_time"):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    return [(k.decode() if isinstance(k, bytes) else k, v) for k, v in items]


def read_changelog(settings: Settings, topic: str, partition: int
                   ) -> dict[str, dict[str, Any]]:
    """The latest state of every live session in one changelog partition."""
    state: dict[str, dict[str, Any]] = {}
    for r in clients.read_to_end(settings, topic, [partition]):
        key = r.key.decode()
        if r.value is None:
            state.pop(key, None)
        else:
            state[key] = orjson.loads(r.value)
    return state


def read_alerts(settings: Settings) -> list[dict[str, Any]]:
    """Every record still in ``llm_alerts`` (to recover incidents)."""
    out: list[dict[str, Any]] = []
    for r in clients.read_to_end(settings, LLM_ALERTS):
        try:
            out.append(orjson.loads(r.value))
        except (orjson.JSONDecodeError, TypeError):
            continue
    return out


class SessionStage:
    """Per-partition session detectors, their changelog and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = SessionLimits.from_settings(settings.detect)
        self.detectors: dict[int, SessionDetector] = {}
        self.totals: Counter = Counter()
        self.clock = stepclock.StepClock("detect_sessions")

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.detectors.pop(p, None)

    def load(self, partition: int, state: dict[str, dict[str, Any]]) -> SessionDetector:
        det = SessionDetector(self.limits)
        for key, value in state.items():
            det.restore(key, value)
        self.detectors[partition] = det
        self.totals["sessions_restored"] += len(state)
        return det

    def metrics(self) -> list[str]:
        lines = ["# TYPE llmspend_detect_events_total counter"]
        for name, value in sorted(self.totals.items()):
            lines.append(f'llmspend_detect_events_total{{kind="{name}"}} {value}')
        lines.append("# TYPE llmspend_detect_sessions gauge")
        lines.append(f"llmspend_detect_sessions "
                     f"{sum(len(d.sessions) for d in self.detectors.values())}")
        lines.append("# TYPE llmspend_detect_firing_incidents gauge")
        lines.append(f"llmspend_detect_firing_incidents "
                     f"{sum(len(d.firing) for d in self.detectors.values())}")
        return lines


def ensure_changelog(settings: Settings) -> None:
    """Create the compacted session changelog (same partition count as llm_calls)."""
    from pipeline.stream.normalise_stage import calls_partitions

    admin = clients.admin_client(settings)
    try:
        ensure_topics(admin, [TopicSpec(changelog_topic(settings),
                                        calls_partitions(settings),
                                        cleanup_policy="compact", retention_hours=-1,
                                        max_message_bytes=settings.kafka.max_message_bytes)])
    finally:
        admin.close()


def register_sessions(app, settings: Settings) -> SessionStage:
    """Add the session-detector agent to a Faust app."""
    stage = SessionStage(settings)
    ensure_changelog(settings)
    topic = changelog_topic(settings)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmspend-detect")
    source = app.topic(LLM_CALLS, value_type=bytes, value_serializer="raw")

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **_kw) -> None:
        stage.forget({tp.partition for tp in revoked if tp.topic == LLM_CALLS})

    @app.agent(source, name="detect-sessions")
    async def detect_agent(stream):
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            m = event.message
            p = m.partition
            det = stage.detectors.get(p)
            if det is None:
                state = await loop.run_in_executor(pool, read_changelog, settings, topic, p)
                det = stage.load(p, state)
                log.info("detect: %s[%d] restored %d sessions", topic, p, len(state))
            headers = _headers(m.headers)
            if is_heartbeat(headers, event.value):
                rows, bad = [], 0
            else:
                with stage.clock.step("parse"):
                    rows, bad = decode_rows(event.value)
            if bad:
                stage.totals["bad_lines"] += bad
                log.warning("llm_calls[%d]@%d: %d unreadable line(s) skipped", p,
                            m.offset, bad)
            with stage.clock.step("detect"):
                out = det.add(rows, int(m.timestamp * 1000))
            stage.totals.update(out.stats)
            writes = []
            for key in out.changed:
                s = det.sessions.get(key)
                if s is not None:
                    writes.append(await app.producer.send(
                        topic, key.encode(), orjson.dumps(s.to_json()), p, None, None))
            for key in out.expired:
                writes.append(await app.producer.send(topic, key.encode(), None, p, None,
                                                      None))
            if out.alerts:
                for f in writes:  # state first: a sent alert is never re-fired
                    await f
                writes = [await app.producer.send(
                    LLM_ALERTS, a["dedup_key"].encode(), orjson.dumps(a), None, None, None)
                    for a in out.alerts]
                for a in out.alerts:   # what apps asking for a verdict will be told
                    control = control_from_alert(a)
                    if control is not None:
                        key, value = control
                        writes.append(await app.producer.send(
                            LLM_CONTROLS, key.encode(),
                            None if value is None else orjson.dumps(value), None, None,
                            None))
                for a in out.alerts:
                    log.warning("alert %s %s %s: %s", a["severity"], a["state"],
                                a["dedup_key"], a["summary"])
            for f in writes:  # acknowledged before this offset can be committed
                await f

    return stage


class WindowStage:
    """The window detectors and their input consumer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.detector = WindowDetector(WindowLimits.from_settings(settings.detect))
        self.totals: Counter = Counter()
        self.clock = stepclock.StepClock("detect_windows")
        #: Set once the input consumer is positioned (the worker's readiness waits).
        self.positioned = asyncio.Event()
        self.aligner: TimeAligner | None = None

    def metrics(self) -> list[str]:
        lines = ["# TYPE llmspend_detect_window_events_total counter"]
        merged = Counter(self.totals) + Counter(self.detector.stats)
        if self.aligner is not None:
            merged += Counter({f"aligned_{k}": v for k, v in self.aligner.stats.items()})
        for name, value in sorted(merged.items()):
            lines.append(f'llmspend_detect_window_events_total{{kind="{name}"}} {value}')
        lines.append("# TYPE llmspend_detect_window_held_partials gauge")
        lines.append(f"llmspend_detect_window_held_partials "
                     f"{0 if self.aligner is None else len(self.aligner)}")
        lines.append("# TYPE llmspend_detect_window_lag_seconds gauge")
        lines.append(f"llmspend_detect_window_lag_seconds "
                     f"{self._lag_s():.3f}")
        return lines

    def _lag_s(self) -> float:
        """Wall time minus the time every llm_agg_1m partition is read through."""
        if self.aligner is None or not self.aligner.clock_ms:
            return 0.0
        return max(0.0, time.time() - self.aligner.clock_ms / 1000)


class BudgetStore:
    """The budget book of the window task, and its durable state: one record on the
    compacted topic ``<app id>-budgets`` holding the book and, per ``llm_agg_1m``
    partition, the next offset not yet counted, so partials re-read after a restart
    (the baseline replay, or records after the last save) count exactly once."""

    def __init__(self, settings: Settings) -> None:
        b = settings.budgets
        self.settings = settings
        self.topic = f"{settings.stream.app_id}-budgets"
        self.book = BudgetBook(parse_budgets(b.limits), unit_targets(b.unit_costs),
                               BookConfig(thresholds=b.threshold_list, tz=b.timezone,
                                          min_elapsed=b.projection_min_elapsed,
                                          min_units=b.unit_min_units))
        self.positions: dict[int, int] = {}
        self.pending: list[dict[str, Any]] = []
        self.clock_us = 0
        self._producer = None

    @property
    def dirty(self) -> bool:
        return bool(self.pending)

    def offer(self, partition: int, offset: int, partial: dict[str, Any]) -> None:
        if offset < self.positions.get(partition, 0):
            return                      # counted before the restart
        self.positions[partition] = offset + 1
        if isinstance(partial, dict):
            self.pending.append(partial)

    def fold(self) -> list[dict[str, Any]]:
        from pipeline.alerts import parse_rfc3339_us

        alerts = self.book.add_partials(self.pending)
        for p in self.pending:
            if p.get("window_end"):
                self.clock_us = max(self.clock_us, parse_rfc3339_us(p["window_end"]))
        self.pending = []
        return alerts + self.book.tick(self.clock_us)

    def load(self) -> None:
        admin = clients.admin_client(self.settings)
        try:
            ensure_topics(admin, [TopicSpec(self.topic, 1, cleanup_policy="compact",
                                            retention_hours=-1, max_message_bytes=self.settings
                                            .kafka.max_message_bytes)])
        finally:
            admin.close()
        last = None
        for r in clients.read_to_end(self.settings, self.topic, [0], timeout_s=60):
            last = r.value or last
        if last:
            state = orjson.loads(last)
            self.book.load_state(state["book"])
            self.positions = {int(k): v for k, v in state["positions"].items()}
            self.clock_us = state.get("clock_us", 0)
            log.info("budgets: state restored (%d budget periods)", len(state["book"]))

    def save(self) -> None:
        if self._producer is None:
            self._producer = clients.producer(self.settings)
        self._producer.send(self.topic, key=b"book", value=orjson.dumps(
            self.state()), partition=0).get(timeout=30)

    def state(self) -> dict[str, Any]:
        """The JSON record saved (partition numbers as strings: JSON object keys)."""
        return {"book": self.book.to_state(), "clock_us": self.clock_us,
                "positions": {str(p): o for p, o in self.positions.items()}}


def register_windows(app, settings: Settings) -> WindowStage:
    """Add the window-detector task (reads every llm_agg_1m partition) to a Faust app."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    stage = WindowStage(settings)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmspend-windows")
    lookback_ms = (settings.detect.spend_baseline_minutes + 2) * 60_000 \
        * max(1, int(settings.aggregate.window_s // 60))

    budgets = BudgetStore(settings) \
        if settings.budgets.limits or settings.budgets.unit_costs else None

    async def send(alerts: list[dict[str, Any]]) -> None:
        futures = [await app.producer.send(LLM_ALERTS, a["dedup_key"].encode(),
                                           orjson.dumps(a), None, None, None)
                   for a in alerts]
        for a in alerts:   # what apps asking for a verdict will be told
            control = control_from_alert(a)
            if control is not None:
                key, value = control
                futures.append(await app.producer.send(
                    LLM_CONTROLS, key.encode(),
                    None if value is None else orjson.dumps(value), None, None, None))
        for f in futures:
            await f
        for a in alerts:
            log.warning("alert %s %s %s: %s", a["severity"], a["state"], a["dedup_key"],
                        a["summary"])

    started: list[asyncio.Task] = []

    @app.on_rebalance_complete.connect
    async def _start(sender, **_kw) -> None:
        # A task of our own, started once: Faust's app.task starts only after the
        # first rebalance callbacks return, and the worker's readiness waits for this.
        if not started:
            started.append(asyncio.ensure_future(_guarded()))

    @app.on_before_shutdown.connect
    async def _stop(sender, **_kw) -> None:
        for t in started:
            t.cancel()

    async def _guarded() -> None:
        while True:
            try:
                await detect_windows()
            except asyncio.CancelledError:
                raise
            except Exception:
                stage.totals["restarts"] += 1
                log.exception("window detectors failed; restarting in 5 s")
                stage.positioned.clear()
                await asyncio.sleep(5)

    async def detect_windows() -> None:
        loop = asyncio.get_running_loop()
        recovered = latest_by_key(await loop.run_in_executor(pool, read_alerts, settings))
        stage.detector.restore(recovered)
        log.info("detect windows: %d incidents recovered from %s", len(recovered),
                 LLM_ALERTS)
        consumer = AIOKafkaConsumer(**clients.aiokafka_config(settings),
                                    enable_auto_commit=False, group_id=None,
                                    max_partition_fetch_bytes=settings.kafka.max_message_bytes,
                                    fetch_max_wait_ms=200)
        await consumer.start()
        log.info("detect windows: consumer started")
        try:
            parts = {tp.partition for tp in await loop.run_in_executor(
                pool, clients.end_offsets, settings, LLM_AGG_1M)}
            if not parts:
                raise RuntimeError(f"topic {LLM_AGG_1M} not found (run `llmspend up`)")
            tps = [TopicPartition(LLM_AGG_1M, p) for p in sorted(parts)]
            consumer.assign(tps)
            replay_until: dict[Any, int] = {}
            if settings.stream.auto_offset_reset == "earliest":
                since = int(time.time() * 1000) - lookback_ms
                found = await consumer.offsets_for_times({tp: since for tp in tps})
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    off = found.get(tp)
                    consumer.seek(tp, off.offset if off is not None else ends[tp])
                    replay_until[tp] = ends[tp]
            else:
                await consumer.seek_to_end(*tps)
                for tp in tps:  # resolve "end" now, not at the first fetch
                    await consumer.position(tp)
            stage.positioned.set()
            replaying = bool(replay_until) and any(
                [await consumer.position(tp) < replay_until[tp] for tp in tps])
            log.info("detect windows: reading %d llm_agg_1m partitions (%d incidents "
                     "recovered%s)", len(tps), len(stage.detector.incidents),
                     ", re-reading the baseline" if replaying else "")
            if budgets is not None:
                await loop.run_in_executor(pool, budgets.load)
            aligner = TimeAligner()
            stage.aligner = aligner
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batches.items():
                    rows = []
                    for r in records:
                        try:
                            partial = orjson.loads(r.value)
                        except (orjson.JSONDecodeError, TypeError):
                            stage.totals["bad_records"] += 1
                            continue
                        rows.append((r.timestamp, partial))
                        if budgets is not None:
                            budgets.offer(r.partition, r.offset, partial)
                    aligner.offer(tp.partition, rows)
                if budgets is not None and budgets.dirty:
                    # State first (a restart never re-counts nor re-alerts), then alerts.
                    budget_alerts = budgets.fold()
                    await loop.run_in_executor(pool, budgets.save)
                    if budget_alerts:
                        stage.totals["budget_alerts"] += len(budget_alerts)
                        await send(budget_alerts)
                # Partials in the order they were written across partitions, and the
                # time every partition is read through (pipeline/timealign.py).
                polled = {}
                for tp in tps:
                    hw, at = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
                    caught_up = hw is not None and at is not None \
                        and await consumer.position(tp) >= hw
                    polled[tp.partition] = at if caught_up else None
                partials, clock_ms = aligner.release(int(time.time() * 1000), polled,
                                                     everything=replaying)
                if replaying:
                    with stage.clock.step("detect"):
                        stage.detector.add(partials, clock_ms, judge=False)
                    if all([await consumer.position(tp) >= replay_until[tp] for tp in tps]):
                        replaying = False
                        stage.detector.skip_judged()
                    continue
                with stage.clock.step("detect"):
                    alerts = stage.detector.add(partials, clock_ms)
                if alerts:
                    stage.totals["alerts"] += len(alerts)
                    await send(alerts)
        finally:
            await consumer.stop()

    return stage
