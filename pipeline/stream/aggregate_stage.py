"""Stage 2: ``llm_calls`` (NDJSON batches) -> 1-minute partials -> ``llm_agg_1m``.

A thin Faust shell around :class:`pipeline.aggregate.PartitionAggregator`, one per
assigned partition. Exactness after a crash rests on two rules:

* events are acknowledged manually (``stream.noack()``), and only below the
  aggregator's :meth:`commit_offset`, so Faust never commits past a record that a
  restarted worker needs to rebuild the same state;
* every partial is produced (and acknowledged by Kafka) before the records that made it
  are acknowledged; re-emitted partials carry the same key, so the compacted topic and
  the lake keep one version.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from typing import Any

from pipeline.aggregate import AggregateConfig, PartitionAggregator, is_heartbeat
from pipeline.config import Settings
from pipeline.normalise import ndjson_to_calls
from schemas import calls as C
from schemas.topics import LLM_AGG_1M, LLM_CALLS

log = logging.getLogger(__name__)


class AggregateStage:
    """Per-partition aggregators, pending (unacknowledged) events and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.config = AggregateConfig.from_settings(settings.aggregate)
        self.aggs: dict[int, PartitionAggregator] = {}
        self.pending: dict[int, deque] = {}
        self.positions: dict[int, int] = {}
        self.totals: Counter = Counter()

    def reset(self, partitions: set[int]) -> None:
        """Forget revoked partitions: whoever gets them next replays from the committed
        offset and rebuilds identical state. (Never on assignment: events already queued
        would then never be acknowledged, and Faust would stop committing.)"""
        for p in partitions:
            self.aggs.pop(p, None)
            self.pending.pop(p, None)
            self.positions.pop(p, None)

    def process(self, partition: int, offset: int, timestamp_ms: int, value: bytes | None,
                headers: Any) -> list[dict[str, Any]]:
        """One record in, the partials it closes or creates out."""
        agg = self.aggs.get(partition)
        if agg is None:
            agg = self.aggs[partition] = PartitionAggregator(partition, self.config)
        hdrs = [(k.decode() if isinstance(k, bytes) else k, v) for k, v in (headers or ())]
        if is_heartbeat(hdrs, value):
            calls = C.CALLS.empty_table()
            self.totals["heartbeats"] += 1
        else:
            try:
                calls = ndjson_to_calls([value or b""])
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable llm_calls[%d]@%d: %s", partition, offset, exc)
                self.totals["bad_records"] += 1
                calls = C.CALLS.empty_table()
        out = agg.add(calls, offset, timestamp_ms)
        self.totals.update(out.stats)
        self.totals["partials_emitted"] += len(out.partials)
        self.positions[partition] = offset
        return out.partials

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
        lines.append("# TYPE llmspend_aggregate_unacked_records gauge")
        lines.append(f"llmspend_aggregate_unacked_records "
                     f"{sum(len(q) for q in self.pending.values())}")
        return "\n".join(lines) + "\n"


def register(app, settings: Settings) -> AggregateStage:
    """Add the aggregate agent to a Faust app."""
    stage = AggregateStage(settings)
    source = app.topic(LLM_CALLS, value_type=bytes, value_serializer="raw")
    sink = app.topic(LLM_AGG_1M, value_type=bytes, value_serializer="raw",
                     key_serializer="raw")
    last_log = [time.monotonic()]

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **_kw) -> None:
        stage.reset({tp.partition for tp in revoked if tp.topic == LLM_CALLS})

    @app.agent(source, name="aggregate")
    async def aggregate_agent(stream):
        stream = stream.noack()
        async for event in stream.events():
            m = event.message
            p = m.partition
            partials = stage.process(p, m.offset, int(m.timestamp * 1000), event.value,
                                     m.headers)
            futures = [await sink.send(key=rec["agg_id"].encode(),
                                       value=json.dumps(rec, separators=(",", ":"),
                                                        ensure_ascii=False).encode())
                       for rec in partials]
            for f in futures:
                await f
            queue = stage.pending.setdefault(p, deque())
            queue.append(event)
            agg = stage.aggs.get(p)
            commit = agg.commit_offset() if agg is not None else m.offset + 1
            while queue and queue[0].message.offset < commit:
                await stream.ack(queue.popleft())
            if time.monotonic() - last_log[0] > 10:
                last_log[0] = time.monotonic()
                log.info("aggregate totals: %s", dict(stage.totals))

    return stage
