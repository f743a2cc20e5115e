"""The lake sink: a dedicated consumer thread in the worker landing ``llm_calls``,
``llm_agg_1m`` and ``llm_alerts`` in Parquet (pure core: ``pipeline/lake.py``).

It is a plain Kafka consumer in its own group (``<app id>-lake``), not a Faust agent,
because it positions itself from the lake rather than from Kafka: when it is given a
partition it recovers that partition's lake state (finishing or dropping an interrupted
flush) and seeks to the lake's ``next_offset``. Records are buffered per source
partition and flushed when the oldest has waited ``lake.flush_s`` or the buffers reach
``lake.flush_mb``; a flush lands every buffered partition, then commits the consumer
offsets (for lag monitoring only). Partitions taken away are flushed first. A record
that does not decode goes to ``lake.dlq`` with the reason (``pipeline/dlq.py``), and the
dead letter is acknowledged before the flush lands its range: a landed range is never
read again, so a record is either in the lake, in ``lake.dlq``, or still to be read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from pipeline import clients, lake, stepclock
from pipeline.config import Settings
from pipeline.dlq import dlq_headers
from pipeline.lake_fs import LocalFS
from pipeline.stream.handoff import Handoff
from schemas import lake as L
from schemas.topics import LAKE_DLQ

log = logging.getLogger(__name__)

#: The sink's thread (its CPU is ``llmspend_thread_cpu_seconds_total{thread=...}``).
THREAD_NAME = "llmspend-lake"

#: Test hook: ``step[:n]`` kills the process (SIGKILL) at the n-th time (default 1) the
#: flush protocol reaches ``step`` (temps, state, rename, renamed). Never set it in
#: production.
KILL_AT_ENV = "LLMSPEND_TEST_LAKE_KILL_AT"


def _kill_hook() -> lake.Hook | None:
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return None
    step, _, nth = spec.partition(":")
    left = [int(nth or 1)]

    def hook(at: str) -> None:
        if at == step:
            left[0] -= 1
            if left[0] == 0:
                log.warning("lake: %s=%s reached, killing myself", KILL_AT_ENV, spec)
                os.kill(os.getpid(), signal.SIGKILL)
    return hook


class LakeSink:
    """Buffers, flushes and positions (module docstring)."""

    def __init__(self, settings: Settings, handoff: Handoff[pa.Table] | None = None) -> None:
        self.settings = settings
        #: The normaliser's rows by ``llm_calls`` body, when it runs in this worker.
        self.handoff = handoff
        #: Rows taken from it for buffered records: (topic, partition) -> offset -> rows.
        self.held: dict[tuple[str, int], dict[int, pa.Table]] = {}
        self.fs = LocalFS(settings.lake_dir)
        self.datasets = [L.DATASETS[n] for n in settings.lake.dataset_list]
        self.group = f"{settings.stream.app_id}-lake"
        self.hook = _kill_hook()
        self.writers: dict[tuple[str, int], lake.PartitionWriter] = {}
        self.buffers: dict[tuple[str, int], list[lake.Record]] = {}
        self.buffered_bytes = 0
        self.oldest: float | None = None
        self.stats: Counter = Counter()
        self.clock = stepclock.StepClock("lake")
        self.ready = threading.Event()
        self._consumer: Any = None
        self._dead_letters: Any = None      # a producer to lake.dlq, made when needed
        self._unresolved: list[Any] = []

    # ------------------------------------------------------------------ thread

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop``; a failing flush is retried, never skipped."""
        from kafka import ConsumerRebalanceListener

        sink = self

        class Listener(ConsumerRebalanceListener):
            # Called on the consumer's IO thread: no blocking consumer call in here.
            def on_partitions_revoked(self, revoked):
                sink.flush(only={(tp.topic, tp.partition) for tp in revoked}, commit=False)
                for tp in revoked:
                    sink.writers.pop((tp.topic, tp.partition), None)
                    sink.buffers.pop((tp.topic, tp.partition), None)
                    sink.held.pop((tp.topic, tp.partition), None)

            def on_partitions_assigned(self, assigned):
                sink.assign(assigned)

        self.settings.lake_dir.mkdir(parents=True, exist_ok=True)
        c = self._consumer = clients.consumer(
            self.settings, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset=self.settings.stream.auto_offset_reset)
        c.subscribe([d.topic for d in self.datasets], listener=Listener())
        limit = self.settings.lake.flush_mb * 1024 * 1024
        try:
            while not stop.is_set():
                with self.clock.step("poll"):       # CPU only: waiting costs none
                    batch = c.poll(timeout_ms=500, max_records=5000)
                if self._unresolved:
                    for tp in self._unresolved:
                        # "latest" means from the sink's first start: record it in the
                        # lake, so a restart does not skip what came while it was down
                        # (from the first record this poll returned, if any).
                        got = batch.get(tp)
                        first = got[0].offset if got else c.position(tp)
                        self.writers[(tp.topic, tp.partition)].start_at(first)
                    self._unresolved = []
                    self.ready.set()
                for tp, recs in batch.items():
                    self.offer(tp.topic, tp.partition,
                               [(r.partition, r.offset, r.value) for r in recs])
                if self.buffered_bytes >= limit or (
                        self.oldest is not None
                        and time.monotonic() - self.oldest >= self.settings.lake.flush_s):
                    self.flush()
            self.flush()
        finally:
            c.close(autocommit=False)
            if self._dead_letters is not None:
                self._dead_letters.close()
                self._dead_letters = None

    def assign(self, assigned) -> None:
        """Recover each new partition from the lake and seek to where it left off."""
        c = self._consumer
        for tp in assigned:
            ds = L.BY_TOPIC[tp.topic]
            w = lake.PartitionWriter(self.fs, ds, tp.partition, self.hook)
            nxt = w.recover()
            self.writers[(tp.topic, tp.partition)] = w
            if nxt is not None:
                c.seek(tp, nxt)
            elif self.settings.stream.auto_offset_reset == "earliest":
                c.seek_to_beginning(tp)     # a new lake takes everything retained
            else:
                c.seek_to_end(tp)
                self._unresolved.append(tp)  # resolved by run() after this callback
            log.info("lake: %s[%d] resumes at %s", tp.topic, tp.partition,
                     nxt if nxt is not None else self.settings.stream.auto_offset_reset)
        if not self._unresolved:
            self.ready.set()

    # ------------------------------------------------------------------ core

    def offer(self, topic: str, partition: int, records: list[lake.Record]) -> None:
        w = self.writers.get((topic, partition))
        if w is None:
            return                                  # not (or no longer) ours
        if w.next_offset is not None:
            records = [r for r in records if r[1] >= w.next_offset]
        if not records:
            return
        if self.handoff is not None and topic == L.CALLS.topic:
            held = self.held.setdefault((topic, partition), {})
            for _p, o, v in records:
                rows = self.handoff.take(v) if v else None
                if rows is not None:
                    held[o] = rows
        self.buffers.setdefault((topic, partition), []).extend(records)
        self.buffered_bytes += sum(len(r[2] or b"") for r in records)
        if self.oldest is None:
            self.oldest = time.monotonic()

    def flush(self, only: set[tuple[str, int]] | None = None, commit: bool = True) -> None:
        """Land every buffered partition (or ``only`` those), then commit offsets."""
        from kafka import OffsetAndMetadata, TopicPartition

        commits = {}
        for key, recs in list(self.buffers.items()):
            if not recs or (only is not None and key not in only):
                continue
            topic, part = key
            ds = L.BY_TOPIC[topic]
            w = self.writers[key]
            held = self.held.pop(key, {})
            with self.clock.step("decode"):
                d = lake.decode(ds, recs, {(part, o): t for o, t in held.items()})
            self.stats[f"{ds.name}_records_handed_off"] += len(held)
            if d.bad:
                self.dead_letter(topic, recs, d.bad)
            t0 = time.perf_counter()
            with self.clock.step("write"):
                w.flush(recs[0][1], recs[-1][1] + 1, lake.split(ds, d.table))
            self.stats[f"{ds.name}_rows"] += d.table.num_rows
            self.stats[f"{ds.name}_rejected"] += len(d.bad)
            self.stats["flushes"] += 1
            self.stats["flush_ms"] += round((time.perf_counter() - t0) * 1000)
            commits[TopicPartition(topic, part)] = OffsetAndMetadata(recs[-1][1] + 1, "", -1)
            self.buffered_bytes -= sum(len(r[2] or b"") for r in recs)
            self.buffers[key] = []
        if not any(self.buffers.values()):
            self.oldest = None
        if commits and commit and self._consumer is not None:
            try:
                self._consumer.commit(commits)
            except Exception:   # monitoring only: the lake state is the truth
                log.debug("lake: offset commit failed", exc_info=True)

    def dead_letter(self, topic: str, recs: list[lake.Record],
                    bad: list[tuple[int, int, str]]) -> None:
        """Send rejected records to ``lake.dlq`` unchanged, with why, and wait for the
        broker's acknowledgement (raises if it does not come: the flush then fails and
        is retried, so nothing is skipped unrecorded)."""
        if self._dead_letters is None:
            self._dead_letters = clients.producer(self.settings)
        value = {(p, o): v for p, o, v in recs}
        futures = []
        for p, o, why in bad:
            log.warning("lake: %s[%d]@%d to %s: %s", topic, p, o, LAKE_DLQ, why)
            futures.append(self._dead_letters.send(
                LAKE_DLQ, value=value.get((p, o)),
                headers=dlq_headers(why, p, o, topic=topic)))
        for f in futures:
            f.get(timeout=30)

    def metrics(self) -> list[str]:
        """Prometheus lines of the sink."""
        out = ["# TYPE llmspend_lake_rows_total counter"]
        for ds in self.datasets:
            out.append(f'llmspend_lake_rows_total{{dataset="{ds.name}"}} '
                       f'{self.stats[f"{ds.name}_rows"]}')
        out.append("# TYPE llmspend_lake_rejected_records_total counter")
        for ds in self.datasets:
            out.append(f'llmspend_lake_rejected_records_total{{dataset="{ds.name}"}} '
                       f'{self.stats[f"{ds.name}_rejected"]}')
        out.append("# TYPE llmspend_lake_records_handed_off_total counter")
        out.append(f'llmspend_lake_records_handed_off_total{{dataset="{L.CALLS.name}"}} '
                   f'{self.stats[f"{L.CALLS.name}_records_handed_off"]}')
        out += ["# TYPE llmspend_lake_flushes_total counter",
                f"llmspend_lake_flushes_total {self.stats['flushes']}",
                "# TYPE llmspend_lake_buffered_bytes gauge",
                f"llmspend_lake_buffered_bytes {self.buffered_bytes}"]
        return out


def register(app, settings: Settings, handoff: Handoff | None = None) -> LakeSink:
    """Run the sink in a thread of the worker, started and stopped with the app
    (``handoff``: the normaliser's rows by body, pipeline/stream/handoff.py)."""
    sink = LakeSink(settings, handoff)
    stop = threading.Event()
    thread = threading.Thread(target=_run_forever, args=(sink, stop), daemon=True,
                              name=THREAD_NAME)

    thread.start()

    @app.on_before_shutdown.connect
    async def _stop_lake(sender, **_kw) -> None:
        stop.set()          # the thread flushes what it holds, then closes
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 60)

    return sink


def _run_forever(sink: LakeSink, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sink.run(stop)
        except Exception:
            log.exception("lake sink failed; restarting in 5 s (buffers are re-read "
                          "from the lake's offsets)")
            sink.writers.clear()
            sink.buffers.clear()
            sink.held.clear()
            sink.buffered_bytes, sink.oldest = 0, None
            stop.wait(5)
