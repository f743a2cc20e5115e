"""Stage 2: ``llm_calls`` (NDJSON batches) -> 1-minute partials -> ``llm_agg_1m``.

A thin Faust shell around :class:`pipeline.aggregate.PartitionAggregator`, one per
assigned partition. Exactness after a crash rests on the aggregator's checkpoints
(see ``pipeline/aggregate.py``) and three rules here:

* every partial is handed to the producer as soon as it exists; when a segment ends,
  the stage waits until Kafka acknowledged every partial so far, then
* stores the checkpoint's ``emit_from`` durably (:class:`EmitPoints`), then
* acknowledges the events before the checkpoint's ``replay_from`` (events are acked
  manually, ``stream.noack()``), so Faust commits at most that far.

A restarted worker resumes from the committed offset, loads the emit point, and replays
without emitting until it reaches it. Faust's own exactly-once mode is not used (open
bugs, see the Faust issue tracker); nothing here needs transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from pipeline import callbatch, stepclock
from pipeline.aggregate import AggregateConfig, Checkpoint, PartitionAggregator, is_heartbeat
from pipeline.clients import admin_client, group_offsets
from pipeline.config import Settings
from pipeline.stream.handoff import Handoff
from schemas.topics import LLM_AGG_1M, LLM_CALLS

log = logging.getLogger(__name__)


class EmitPoints:
    """Each partition's emit point, kept as the committed offsets of a sidecar consumer
    group (``<app id>-aggregate-emit``) that never has members: durable, per partition,
    in Kafka itself, readable with the usual tools (``kafka-consumer-groups.sh``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = f"{settings.stream.app_id}-aggregate-emit"
        self._admin = None

    def _client(self):
        if self._admin is None:
            self._admin = admin_client(self.settings)
        return self._admin

    def load(self) -> dict[int, int]:
        return group_offsets(self._client(), self.group, LLM_CALLS)

    def store(self, partition: int, offset: int) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        errors = self._client().alter_group_offsets(
            self.group, {TopicPartition(LLM_CALLS, partition): OffsetAndMetadata(offset, "",
                                                                                 -1)})
        failed = {tp: e for tp, e in errors.items() if e.__name__ != "NoError"}
        if failed:
            raise RuntimeError(f"storing the aggregate emit point failed: {failed}")

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


class AggregateStage:
    """Per-partition aggregators, unacknowledged events and metrics."""

    def __init__(self, settings: Settings, handoff: Handoff | None = None) -> None:
        self.config = AggregateConfig.from_settings(settings.aggregate)
        self.handoff = handoff   # columns of this worker's normalise stage, by body
        self.aggs: dict[int, PartitionAggregator] = {}
        self.pending: dict[int, deque] = {}
        self.positions: dict[int, int] = {}
        self.stored: dict[int, Checkpoint] = {}
        self.emit_points: dict[int, int] | None = None  # loaded once per assignment
        self.totals: Counter = Counter()
        self.clock = stepclock.StepClock("aggregate")

    def reset(self, partitions: set[int]) -> None:
        """Forget revoked partitions: whoever gets them next replays from the committed
        offset and rebuilds identical state. (Never on assignment: events already queued
        would then never be acknowledged, and Faust would stop committing.)"""
        for p in partitions:
            self.aggs.pop(p, None)
            self.pending.pop(p, None)
            self.positions.pop(p, None)
            self.stored.pop(p, None)
        self.emit_points = None

    def process(self, partition: int, offset: int, timestamp_ms: int, value: bytes | None,
                headers: Any) -> list[dict[str, Any]]:
        """One record in, the partials it closes or creates out."""
        agg = self.aggs.get(partition)
        if agg is not None and offset < agg.next_offset:
            # The log went backwards under us (a rebalance seek after stale events): the
            # state no longer matches the position, so rebuild it from here, as a restart
            # would. Partials emitted meanwhile are replaced by the replay's (same ids).
            log.warning("llm_calls[%d]: offset %d after %d, rebuilding the partition's "
                        "state", partition, offset, agg.next_offset - 1)
            self.totals["rewinds"] += 1
            known = self.stored.get(partition)
            emit_from = max(agg.emit_from, known.emit_from if known else 0)
            points = self.emit_points
            self.reset({partition})
            self.emit_points = {**(points or {}), partition: emit_from}
            agg = None
        if agg is None:
            emit_from = (self.emit_points or {}).get(partition, 0)
            agg = self.aggs[partition] = PartitionAggregator(partition, self.config,
                                                             emit_from=emit_from)
            if emit_from > offset:
                log.info("llm_calls[%d]: replaying %d..%d before emitting", partition,
                         offset, emit_from)
        hdrs = [(k.decode() if isinstance(k, bytes) else k, v) for k, v in (headers or ())]
        if is_heartbeat(hdrs, value):
            batch = callbatch.CallBatch.empty()
            self.totals["heartbeats"] += 1
        elif self.handoff is not None and value and \
                (held := self.handoff.take(value)) is not None:
            batch = held
            self.totals["bodies_handed_off"] += 1
        else:
            self.totals["bodies_parsed"] += 1
            try:
                with self.clock.step("parse"):
                    batch = callbatch.from_ndjson(value or b"")
            except ValueError as exc:
                log.error("unreadable llm_calls[%d]@%d: %s", partition, offset, exc)
                self.totals["bad_records"] += 1
                batch = callbatch.CallBatch.empty()
        with self.clock.step("fold"):
            out = agg.add(batch, offset, timestamp_ms)
        self.totals.update(out.stats)
        self.totals["partials_emitted"] += len(out.partials)
        self.positions[partition] = offset
        return out.partials

    def new_checkpoint(self, partition: int) -> Checkpoint | None:
        agg = self.aggs.get(partition)
        cp = agg.checkpoint if agg is not None else None
        return cp if cp is not None and cp != self.stored.get(partition) else None

    def metrics(self, highwater: dict[int, int]) -> str:
        lines = ["# TYPE llmspend_aggregate_events_total counter"]
        for name, value in sorted(self.totals.items()):
            lines.append(f'llmspend_aggregate_events_total{{kind="{name}"}} {value}')
        lines.append("# TYPE llmspend_aggregate_open_windows gauge")
        lines.append(f"llmspend_aggregate_open_windows "
                     f"{sum(a.open_windows() for a in self.aggs.values())}")
        lines.append("# TYPE llmspend_aggregate_consumer_lag gauge")
        for p, hw in sorted(highwater.items()):
            lag = max(0, hw - self.positions.get(p, -1) - 1)
            lines.append(f'llmspend_aggregate_consumer_lag{{topic="{LLM_CALLS}",'
                         f'partition="{p}"}} {lag}')
        lines.append("# TYPE llmspend_aggregate_checkpoint_offset gauge")
        for p, cp in sorted(self.stored.items()):
            lines.append(f'llmspend_aggregate_checkpoint_offset{{partition="{p}",'
                         f'kind="replay_from"}} {cp.replay_from}')
            lines.append(f'llmspend_aggregate_checkpoint_offset{{partition="{p}",'
                         f'kind="emit_from"}} {cp.emit_from}')
        lines.append("# TYPE llmspend_aggregate_unacked_records gauge")
        lines.append(f"llmspend_aggregate_unacked_records "
                     f"{sum(len(q) for q in self.pending.values())}")
        return "\n".join(lines) + "\n"


def register(app, settings: Settings, handoff: Handoff | None = None) -> AggregateStage:
    """Add the aggregate agent to a Faust app (``handoff``: pipeline/stream/handoff.py)."""
    stage = AggregateStage(settings, handoff)
    points = EmitPoints(settings)
    admin_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmspend-emit")
    source = app.topic(LLM_CALLS, value_type=bytes, value_serializer="raw")
    last_log = [time.monotonic()]

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **_kw) -> None:
        stage.reset({tp.partition for tp in revoked if tp.topic == LLM_CALLS})

    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(admin_thread, fn, *args)

    @app.agent(source, name="aggregate")
    async def aggregate_agent(stream):
        stream = stream.noack()
        sent: list[asyncio.Future] = []
        async for event in stream.events():
            m = event.message
            p = m.partition
            if stage.emit_points is None:
                stage.emit_points = await in_thread(points.load)
            partials = stage.process(p, m.offset, int(m.timestamp * 1000), event.value,
                                     m.headers)
            # Clocked apart from the sends: an await that suspends would count the CPU
            # of whatever other task ran meanwhile.
            with stage.clock.step("encode"):
                encoded = [(rec["agg_id"].encode(), orjson.dumps(rec)) for rec in partials]
            for key, value in encoded:
                # The producer itself, not Topic.send: a tenth of the overhead per record.
                sent.append(await app.producer.send(LLM_AGG_1M, key, value, None, None,
                                                    None))
            stage.pending.setdefault(p, deque()).append(event)
            cp = stage.new_checkpoint(p)
            if cp is not None:
                # Partials first, then the emit point, then the commit (module docstring).
                for f in sent:
                    await f
                sent.clear()
                await in_thread(points.store, p, cp.emit_from)
                stage.stored[p] = cp
                stage.totals["checkpoints"] += 1
                queue = stage.pending[p]
                while queue and queue[0].message.offset < cp.replay_from:
                    await stream.ack(queue.popleft())
            elif len(sent) > 10_000:
                sent = _in_flight(sent)
            if time.monotonic() - last_log[0] > 10:
                last_log[0] = time.monotonic()
                log.info("aggregate totals: %s", dict(stage.totals))

    @app.on_before_shutdown.connect
    async def _close(sender, **_kw) -> None:
        points.close()

    return stage


def _in_flight(futures: list) -> list:
    """The futures still pending (raising the error of any that failed: the worker
    stops and its successor replays from the last checkpoint)."""
    out = []
    for f in futures:
        if f.done():
            f.result()
        else:
            out.append(f)
    return out
