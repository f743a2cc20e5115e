"""Stage 1: ``otlp_spans`` -> decode -> normalise + price -> ``llm_calls`` (NDJSON batches).

Up to ``stream.normalise_batch_records`` input records (OTLP export requests) are
normalised together and become at most one output record per target partition of
``llm_calls``, holding that partition's calls as newline-delimited JSON. The
target partition is Kafka's default (murmur2) partition of the key ``tenant|session_id``,
so one session's calls stay in order on one partition. Batching matters: Faust creates
one event per Kafka record, and its per-event cost would cap the pipeline if every call
were a record.

Records that cannot be decoded, or whose spans make the normaliser fail, go unchanged to
``otlp_spans.dlq`` with the reason; the worker carries on. Output is acknowledged by
Kafka before Faust may commit the input offset (at-least-once; ``call_id`` makes the
replayed twin harmless downstream).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline import call_ids, callbatch, calls_ndjson, otlp, pricing, stepclock
from pipeline import normalise as ref
from pipeline import normalise_columnar as columnar
from pipeline.aggregate import HEARTBEAT_HEADER
from pipeline.config import Settings
from pipeline.dlq import dlq_headers
from pipeline.stream.handoff import Handoff
from pipeline.topics import load_topics
from schemas.topics import LLM_CALLS, OTLP_SPANS, OTLP_SPANS_DLQ

log = logging.getLogger(__name__)

NDJSON = b"application/x-ndjson"
SOURCE_HEADER = "llmspend-source"


@dataclass
class RecordResult:
    """What one input record turns into."""

    outputs: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, NDJSON)
    dead_letter: str | None = None
    calls: int = 0
    stats: Counter = field(default_factory=Counter)


@dataclass
class BatchResult:
    """What several input records turn into: one output record per target partition."""

    outputs: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, NDJSON)
    dead_letters: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    calls: int = 0
    stats: Counter = field(default_factory=Counter)


#: (value, headers, partition, offset) of one ``otlp_spans`` record.
Input = tuple[bytes | None, Any, int, int]


class NormaliseStage:
    """The stage's state (settings, catalog, key) around the pure core functions."""

    def __init__(self, settings: Settings, calls_partitions: int,
                 handoff: Handoff[callbatch.CallBatch] | None = None,
                 lake_handoff: Handoff[pa.Table] | None = None) -> None:
        self.settings = settings
        self.catalog = pricing.load_catalog(settings.pricing.catalog)
        self.hash_key = settings.hash_key_bytes()
        self.partitions = calls_partitions
        self.handoff = handoff        # the aggregate stage of this worker, if it runs
        self.lake_handoff = lake_handoff   # the lake sink of this worker, if it runs
        self.totals: Counter = Counter()
        self.clock = stepclock.StepClock("normalise")

    def metrics(self) -> list[str]:
        """Prometheus lines: records in and dead-lettered, spans seen and skipped, calls
        made, and why calls went unpriced."""
        lines = ["# TYPE llmspend_normalise_events_total counter"]
        lines += [f'llmspend_normalise_events_total{{kind="{k}"}} {v}'
                  for k, v in sorted(self.totals.items())]
        return lines

    def process(self, value: bytes | None, headers: Any, partition: int,
                offset: int) -> RecordResult:
        """Decode, normalise and price one ``otlp_spans`` record; never raises."""
        res = self.process_many([(value, headers, partition, offset)])
        return RecordResult(res.outputs, res.dead_letters[0][1] if res.dead_letters else None,
                            res.calls, res.stats)

    def process_many(self, records: Sequence[Input]) -> BatchResult:
        """Decode several records, normalise and price their spans in one batch (each
        record as if alone: :func:`pipeline.normalise_columnar.normalise`), route the
        calls. Never raises: a record that cannot be decoded, or whose spans make the
        normaliser fail, is dead-lettered alone and the others go on."""
        result = self._run(records)
        self.totals.update(result.stats)
        return result

    def _run(self, records: Sequence[Input]) -> BatchResult:
        result = BatchResult()
        decoded: list[tuple[int, pa.Table]] = []
        with self.clock.step("decode"):
            for i, (value, headers, _, _) in enumerate(records):
                try:
                    decoded.append((i, otlp.decode_record(value, _headers(headers))))
                except otlp.DecodeError as exc:
                    result.dead_letters.append((i, f"decode: {exc}"))
                    result.stats["records_dead_lettered"] += 1
        if not decoded:
            return result
        try:
            parts = [self._convert([t for _, t in decoded])]
        except Exception:  # noqa: BLE001 - each record alone names the culprit
            parts = []
            for i, table in decoded:        # find the culprit: each record alone
                try:
                    parts.append(self._convert([table]))
                except Exception as exc:
                    _, _, partition, offset = records[i]
                    log.exception("normalise failed on %s[%d]@%d", OTLP_SPANS, partition,
                                  offset)
                    result.dead_letters.append((i, f"normalise: {type(exc).__name__}: "
                                                   f"{exc}"))
                    result.stats["records_dead_lettered"] += 1
            result.dead_letters.sort()
        routed = _merge([r for _, _, part in parts for r in part])
        result.outputs = [(partition, body) for partition, body, _ in routed]
        for tables, out, _ in parts:
            result.calls += out.calls.num_rows
            result.stats.update(out.stats)
            result.stats["records_in"] += tables
        if self.handoff is not None:
            with self.clock.step("handoff"):
                self._hand_off(routed)
        if self.lake_handoff is not None:
            for _, body, calls in routed:      # the rows as they are: nothing to build
                self.lake_handoff.put(body, calls)
        return result

    def _convert(self, tables: list[pa.Table]
                 ) -> tuple[int, ref.NormaliseResult, list[tuple[int, bytes, pa.Table]]]:
        """Decoded records -> (how many, their calls, routed to ``llm_calls``)."""
        with self.clock.step("normalise"):
            spans = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            out = columnar.normalise(spans, self.settings, self.catalog, self.hash_key,
                                     records=[t.num_rows for t in tables])
        with self.clock.step("route"):
            return len(tables), out, calls_ndjson.route_calls(out.calls, self.partitions)

    def _hand_off(self, routed: list[tuple[int, bytes, pa.Table]]) -> None:
        """Leave each body's columns for this worker's aggregate stage, built once for
        all the bodies and cut per body; a failure here only means the aggregate stage
        parses the bodies itself."""
        try:
            every = callbatch.from_table(pa.concat_tables([c for _, _, c in routed]))
            lo = 0
            for _, body, calls in routed:
                self.handoff.put(body, every.slice(lo, lo + calls.num_rows))
                lo += calls.num_rows
        except Exception:  # an optimisation: never a dead letter
            log.warning("handoff: columns of the bodies not built", exc_info=True)


def _merge(routed: list[tuple[int, bytes, pa.Table]]) -> list[tuple[int, bytes, pa.Table]]:
    """One output per partition: bodies (and their calls) of several parts joined in
    order, so records normalised one by one give what one batch would have."""
    by: dict[int, list[tuple[bytes, pa.Table]]] = {}
    for partition, body, calls in routed:
        by.setdefault(partition, []).append((body, calls))
    return [(p, b"".join(b for b, _ in by[p]), pa.concat_tables([c for _, c in by[p]]))
            for p in sorted(by)]


class RecordClock:
    """The timestamps stamped on ``llm_calls`` records (seconds, as Faust takes them).

    A record gets the newest input timestamp seen so far, capped at the wall clock, and
    never less than a stamp already given (partitions at different depths of a backlog
    interleave). A heartbeat gets the wall clock once the stage is caught up: no input
    for ``idle_s`` (three times that after partitions were assigned, so the first fetch
    of a backlog is not overtaken). Until then it gets the newest input time advanced
    by the wall time since, or nothing (None: send no heartbeat) if no input came yet.
    All methods take the wall and monotonic times, so tests drive the clock."""

    def __init__(self, idle_s: float, mono: float) -> None:
        self.idle_s = idle_s
        self.newest: float | None = None   # newest input timestamp (capped)
        self.seen_at = mono                # monotonic time of the last input
        self.hold_until = mono + 3 * idle_s
        self.given = 0.0                   # the newest stamp given

    def assigned(self, mono: float) -> None:
        self.hold_until = max(self.hold_until, mono + 3 * self.idle_s)

    def stamp(self, input_ts: float | None, wall: float, mono: float) -> float:
        if input_ts is not None and input_ts > 0:
            self.newest = max(self.newest or 0.0, min(input_ts, wall))
        self.seen_at = mono
        self.hold_until = max(self.hold_until, mono + self.idle_s)
        return self._give(self.newest if self.newest is not None else wall)

    def heartbeat(self, wall: float, mono: float) -> float | None:
        if mono >= self.hold_until:
            return self._give(wall)
        if self.newest is None:
            return None
        return self._give(min(wall, self.newest + (mono - self.seen_at)))

    def _give(self, t: float) -> float:
        self.given = max(self.given, t)
        return self.given


async def to_the_end(aw: Any) -> None:
    """Await ``aw`` to completion even if the awaiting task is cancelled meanwhile, then
    re-raise the cancellation. Why: ``take_events`` acknowledges a batch's events in a
    ``finally`` when the agent is cancelled (a worker stopping), so a batch cut
    short after some of its outputs were sent would have its offsets committed with
    the rest of its calls never produced. Finished, they are all produced first."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():      # the batch itself was cancelled (loop closing)
                raise
            cancelled = True          # ours, not the batch's: finish the batch first
    if cancelled:
        raise asyncio.CancelledError


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k.decode() if isinstance(k, bytes) else k, v or b"") for k, v in items]


def calls_partitions(settings: Settings) -> int:
    return next(s.partitions for s in load_topics(settings.topics_file) if s.name == LLM_CALLS)


def register(app, settings: Settings, heartbeats: bool = False,
             handoff: Handoff | None = None,
             lake_handoff: Handoff | None = None) -> NormaliseStage:
    """Add the normalise agent to a Faust app (and, for the aggregate stage, heartbeats
    to quiet ``llm_calls`` partitions; ``handoff`` for the aggregate stage and
    ``lake_handoff`` for the lake sink: see pipeline/stream/handoff.py)."""
    from pipeline import otlp_wire

    stage = NormaliseStage(settings, calls_partitions(settings), handoff, lake_handoff)
    log.info("OTLP wire decoder ready in %.1f s (native: %s)", otlp_wire.warm_up(),
             otlp_wire.NATIVE)
    calls_ndjson.warm_up()
    columnar.warm_up()
    call_ids.warm_up()
    source = app.topic(OTLP_SPANS, value_type=bytes, value_serializer="raw")
    calls_topic = app.topic(LLM_CALLS, value_type=bytes, value_serializer="raw")
    dlq_topic = app.topic(OTLP_SPANS_DLQ, value_type=bytes, value_serializer="raw")
    last_log = [time.monotonic()]
    last_write: dict[int, float] = {}
    clock = RecordClock(settings.stream.heartbeat_s, time.monotonic())

    async def heartbeat() -> None:
        """Empty records to quiet partitions, so their windows close (pipeline/aggregate)."""
        now = time.monotonic()
        stamp = clock.heartbeat(time.time(), now)
        if stamp is None:       # a backlog is being read: its own stamps move the clock
            return
        for p in range(stage.partitions):
            if now - last_write.get(p, 0.0) >= settings.stream.heartbeat_s:
                await calls_topic.send(value=b"", partition=p, timestamp=stamp,
                                       headers=[(HEARTBEAT_HEADER, b"1")])
                last_write[p] = now

    if heartbeats:
        app.timer(interval=settings.stream.heartbeat_s)(heartbeat)

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **_kw) -> None:
        if any(tp.topic == OTLP_SPANS for tp in assigned):
            clock.assigned(time.monotonic())

    @app.agent(source, name="normalise")
    async def normalise_agent(stream):
        # Several records per batch: the normaliser's cost is mostly per batch. Faust
        # acknowledges a batch's events once this body is done with it (take_events).
        async for events in stream.take_events(settings.stream.normalise_batch_records,
                                               settings.stream.normalise_batch_wait_s):
            try:
                await to_the_end(_handle(events))
            except asyncio.CancelledError:
                raise
            except Exception:
                # Output not acknowledged by Kafka: stop now, before Faust can commit
                # these records' offsets; the next worker replays them.
                log.critical("normalise: producing to Kafka failed; exiting so that "
                             "the batch is replayed", exc_info=True)
                os._exit(70)

    async def _handle(events) -> None:
        res = stage.process_many([(e.value, e.message.headers, e.message.partition,
                                   e.message.offset) for e in events])
        futures = []
        for i, reason in res.dead_letters:
            m = events[i].message
            futures.append(await dlq_topic.send(
                value=events[i].value or b"",
                headers=dlq_headers(reason, m.partition, m.offset, _headers(m.headers))))
        origin = ",".join(f"{OTLP_SPANS}[{e.message.partition}]@{e.message.offset}"
                          for e in events).encode()
        stamp = clock.stamp(max(e.message.timestamp or 0.0 for e in events), time.time(),
                            time.monotonic())
        for partition, body in res.outputs:
            futures.append(await calls_topic.send(
                value=body, partition=partition, timestamp=stamp,
                headers=[("content-type", NDJSON), (SOURCE_HEADER, origin)]))
            last_write[partition] = time.monotonic()
        for f in futures:  # acknowledged before these offsets can be committed
            await f
        if time.monotonic() - last_log[0] > 10:
            last_log[0] = time.monotonic()
            log.info("normalise totals: %s", dict(stage.totals))

    return stage
