"""The dead-letter topics: records a stage could not take, with why.

``otlp_spans.dlq`` holds span batches the normaliser could not decode; ``lake.dlq`` the
``llm_calls``, ``llm_agg_1m`` and ``llm_alerts`` records the lake sink could not land.
A stage sends such a record there unchanged, with the headers ``llmspend-error`` (the
reason), ``llmspend-source-topic``, ``llmspend-source-partition`` and
``llmspend-source-offset``, and carries on. ``llmspend dlq list`` shows what is there;
``llmspend dlq replay`` sends ``otlp_spans.dlq`` records back to ``otlp_spans`` after a
fix, remembering (in the consumer group ``llmspend-dlq-replay``) what it already
replayed. Lake dead letters are not replayed upstream (the aggregates would count them
twice); they are kept for a week for whoever fixes the producer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.config import Settings
from schemas.topics import DEAD_LETTERS, OTLP_SPANS, OTLP_SPANS_DLQ, TENANT_HEADER

ERROR_HEADER = "llmspend-error"
SOURCE_TOPIC_HEADER = "llmspend-source-topic"
SOURCE_PARTITION_HEADER = "llmspend-source-partition"
SOURCE_OFFSET_HEADER = "llmspend-source-offset"
REPLAYED_HEADER = "llmspend-replayed-from"
REPLAY_GROUP = "llmspend-dlq-replay"
_OURS = (ERROR_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER, SOURCE_OFFSET_HEADER,
         REPLAYED_HEADER)
MAX_REASON = 1000


def dlq_headers(reason: str, partition: int, offset: int,
                original: Iterable[tuple[str, bytes]] | None = None,
                topic: str = OTLP_SPANS) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: the original ones (tenant...) plus why and where from."""
    kept = [(k, v) for k, v in (original or []) if k not in _OURS]
    return [*kept,
            (ERROR_HEADER, reason[:MAX_REASON].encode("utf-8", "replace")),
            (SOURCE_TOPIC_HEADER, topic.encode()),
            (SOURCE_PARTITION_HEADER, str(partition).encode()),
            (SOURCE_OFFSET_HEADER, str(offset).encode())]


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    size: int
    error: str
    source: str
    tenant: str


def _entry(r) -> DeadLetter:
    h = {k: v for k, v in (r.headers or [])}
    topic = h.get(SOURCE_TOPIC_HEADER, OTLP_SPANS.encode()).decode("utf-8", "replace")
    src = (f"{topic}[{h.get(SOURCE_PARTITION_HEADER, b'?').decode()}]"
           f"@{h.get(SOURCE_OFFSET_HEADER, b'?').decode()}")
    return DeadLetter(partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp,
                      size=len(r.value or b""),
                      error=h.get(ERROR_HEADER, b"").decode("utf-8", "replace"),
                      source=src,
                      tenant=h.get(TENANT_HEADER, b"default" if topic == OTLP_SPANS
                                   else b"-").decode("utf-8", "replace"))


def _read_all(settings: Settings, from_committed: bool, topic: str = OTLP_SPANS_DLQ):
    """Every record of a dead-letter topic (or those after the replay group's committed
    offsets)."""
    from kafka import TopicPartition

    from pipeline.clients import consumer

    if topic not in DEAD_LETTERS:
        raise ValueError(f"{topic} is not a dead-letter topic (those are: "
                         f"{', '.join(DEAD_LETTERS)})")
    c = consumer(settings, group_id=REPLAY_GROUP if from_committed else None,
                 enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(parts)
    ends = c.end_offsets(parts)
    for tp in parts:
        committed = c.committed(tp) if from_committed else None
        c.seek(tp, committed or 0)
    records = []
    while any(c.position(tp) < ends[tp] for tp in parts):
        for batch in c.poll(timeout_ms=1000).values():
            records.extend(r for r in batch if r.offset < ends[TopicPartition(r.topic,
                                                                               r.partition)])
    return c, parts, ends, records


def list_dead_letters(settings: Settings, limit: int = 50, topic: str = OTLP_SPANS_DLQ
                      ) -> tuple[int, list[DeadLetter]]:
    """(total count, the last ``limit`` dead letters of ``topic``)."""
    c, _, _, records = _read_all(settings, from_committed=False, topic=topic)
    c.close()
    return len(records), [_entry(r) for r in records[-limit:]] if limit else []


def replay(settings: Settings, dry_run: bool = False, topic: str = OTLP_SPANS_DLQ) -> int:
    """Send not-yet-replayed dead letters of ``topic`` back to the topic they came from
    (``schemas.topics.DEAD_LETTERS``); returns how many."""
    from kafka.structs import OffsetAndMetadata

    from pipeline.clients import producer

    target = DEAD_LETTERS.get(topic)
    if target is None:
        raise ValueError(f"{topic} is not replayable (replayable: "
                         f"{', '.join(d for d, t in DEAD_LETTERS.items() if t)})")
    c, parts, ends, records = _read_all(settings, from_committed=True, topic=topic)
    try:
        if dry_run or not records:
            return len(records)
        p = producer(settings)
        try:
            futures = []
            for r in records:
                headers = [(k, v) for k, v in (r.headers or []) if k not in _OURS]
                headers.append((REPLAYED_HEADER, f"{topic}[{r.partition}]@{r.offset}".encode()))
                futures.append(p.send(target, value=r.value, headers=headers))
            for f in futures:
                f.get(timeout=60)
        finally:
            p.close()
        c.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in parts})
        return len(records)
    finally:
        c.close()
