"""Pipeline health: a stalled or falling-behind worker must raise an alert, not silence.

Every other detector runs inside the worker, so a dead or hung worker would stop them
all without a word. This one runs in the ingest process (a separate process that keeps
receiving spans) and watches the worker from outside, through Kafka alone: the end
offsets of ``otlp_spans`` (what arrived) against the committed offsets of the worker's
consumer group (what was processed).

* :class:`HealthMonitor` is the pure core: fed one sample per check, it returns the
  alert records to write (``pipeline_stalled``, ``pipeline_lag``), one incident each.
* :class:`Watchdog` is the thin runner: a daemon thread of the ingest server that
  samples the offsets every ``detect.pipeline_check_s`` seconds with kafka-python and
  produces the records to ``llm_alerts``. It never raises into the server.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.alerts import Incident, latest_by_key
from pipeline.config import Settings
from schemas import alerts as A
from schemas.topics import LLM_ALERTS, OTLP_SPANS

log = logging.getLogger(__name__)

#: Hard cap on kept samples, whatever the call rate (time pruning normally keeps ~20).
MAX_SAMPLES = 4096


@dataclass(frozen=True)
class Sample:
    """One look at the offsets: totals over every ``otlp_spans`` partition."""

    t: float
    end: int
    committed: int | None

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(self.end - self.committed, 0)


class HealthMonitor:
    """Turns offset samples into ``pipeline_stalled`` / ``pipeline_lag`` records.

    * stalled (critical): spans arrived during the last ``stall_s`` seconds while the
      group's committed offsets did not move at all (a group that never committed does
      not move either), with records waiting. Resolves as soon as a commit moves.
    * lag (warning): the lag never shrank over the last ``lag_window_s`` seconds, ended
      above where it started, and is at least ``lag_floor`` records. Not opened while
      the pipeline is stalled (the critical incident already says more). Resolves when
      the lag shrinks or falls under the floor.
    """

    def __init__(self, group: str, stall_s: float = 300.0, lag_window_s: float = 300.0,
                 lag_floor: int = 1000, topic: str = OTLP_SPANS,
                 max_samples: int = MAX_SAMPLES) -> None:
        self.group, self.topic = group, topic
        self.stall_s, self.lag_window_s, self.lag_floor = stall_s, lag_window_s, lag_floor
        self.samples: deque[Sample] = deque(maxlen=max_samples)
        #: Time of the latest sample whose committed total differed from the previous one.
        self.last_progress_t: float | None = None
        self.stalled = Incident(A.dedup_key("pipeline", "*", group, "stalled"), "pipeline",
                                group, "*")
        self.lag = Incident(A.dedup_key("pipeline", "*", group, "lag"), "pipeline", group,
                            "*")

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthMonitor:
        d = settings.detect
        return cls(settings.stream.app_id, d.pipeline_stall_s, d.pipeline_lag_window_s,
                   d.pipeline_lag_floor)

    @property
    def keys(self) -> tuple[str, str]:
        return self.stalled.dedup_key, self.lag.dedup_key

    def restore(self, records: Iterable[dict[str, Any]]) -> None:
        """Take back our incidents from the alert log (after a restart), so a firing
        one is resolved later rather than forgotten, and not opened twice."""
        found = latest_by_key([r for r in records
                               if isinstance(r, dict) and r.get(A.DEDUP_KEY) in self.keys])
        if self.stalled.dedup_key in found:
            self.stalled = found[self.stalled.dedup_key]
        if self.lag.dedup_key in found:
            self.lag = found[self.lag.dedup_key]

    # ------------------------------------------------------------ samples

    def _window(self, now: float, span_s: float) -> list[Sample] | None:
        """Samples from the newest one at or before ``now - span_s`` to now; None while
        the history does not reach that far back."""
        # Samples are in time order: the first one after the cut, minus one.
        start = bisect.bisect_right(self.samples, now - span_s, key=lambda s: s.t) - 1
        return None if start < 0 else list(itertools.islice(self.samples, start, None))

    def _prune(self, now: float) -> None:
        """Drop samples no window needs (keep one at or before the oldest horizon)."""
        horizon = now - max(self.stall_s, self.lag_window_s)
        while len(self.samples) >= 2 and self.samples[1].t <= horizon:
            self.samples.popleft()

    def observe(self, now_s: float, end_total: int, committed_total: int | None,
                ) -> list[dict[str, Any]]:
        """Feed one sample (seconds, end offsets total, committed total or None when
        the group has no commits); the alert records to write, in order."""
        if self.samples and (end_total < self.samples[-1].end or now_s < self.samples[-1].t):
            # Topic re-created or clock stepped back: the history no longer compares.
            self.samples.clear()
        prev = self.samples[-1] if self.samples else None
        cur = Sample(now_s, end_total, committed_total)
        moved = prev is not None and cur.committed != prev.committed
        if moved or self.last_progress_t is None:
            self.last_progress_t = now_s
        self.samples.append(cur)
        self._prune(now_s)
        us = int(now_s * 1e6)
        out: list[dict[str, Any]] = []

        # ---- stalled
        stalled_now = False
        win = self._window(now_s, self.stall_s)
        if win is not None:
            first = win[0]
            arrived = cur.end - first.end
            still = all(s.committed == first.committed for s in win)
            waiting = cur.lag is None or cur.lag > 0
            stalled_now = arrived > 0 and still and waiting
            if stalled_now:
                idle = now_s - (first.t if self.last_progress_t is None
                                else min(self.last_progress_t, first.t))
                ev = self._evidence(cur, idle, window_s=round(now_s - first.t, 3),
                                    stall_s=self.stall_s, arrived=arrived)
                why = ("has never committed" if cur.committed is None else
                       f"committed nothing (lag {cur.lag} records)")
                summary = (f"Pipeline stalled: {arrived} records arrived in {self.topic} "
                           f"in the last {now_s - first.t:.0f}s but consumer group "
                           f"{self.group} {why}: nothing is being priced.")
                out.append(self.stalled.observe(A.CRITICAL, "pipeline_stalled", summary,
                                                ev, us))
        if self.stalled.firing and not stalled_now:
            if moved:
                ev = self._evidence(cur, 0.0, stall_s=self.stall_s)
                out.append(self.stalled.resolve(
                    f"Pipeline resumed: consumer group {self.group} committed on "
                    f"{self.topic} again (lag {cur.lag} records).", us, ev))
            else:
                self.stalled.observe(None, "pipeline_stalled", "", {}, us)

        # ---- lag
        win = self._window(now_s, self.lag_window_s)
        growing = (win is not None and all(s.lag is not None for s in win)
                   and all(b.lag >= a.lag for a, b in itertools.pairwise(win))
                   and cur.lag > win[0].lag and cur.lag >= self.lag_floor)
        if growing and not (stalled_now and not self.lag.firing):
            assert win is not None and cur.lag is not None
            ev = self._evidence(cur, now_s - self.last_progress_t,
                                window_s=round(now_s - win[0].t, 3),
                                lag_window_s=self.lag_window_s, lag_floor=self.lag_floor,
                                lag_at_window_start=win[0].lag)
            summary = (f"Consumer group {self.group} is falling behind on {self.topic}: "
                       f"lag grew from {win[0].lag} to {cur.lag} records over the last "
                       f"{now_s - win[0].t:.0f}s (floor {self.lag_floor}).")
            out.append(self.lag.observe(A.WARNING, "pipeline_lag", summary, ev, us))
        elif self.lag.firing:
            shrinking = (prev is not None and cur.lag is not None and prev.lag is not None
                         and cur.lag < prev.lag)
            if cur.lag is not None and (cur.lag < self.lag_floor or shrinking):
                why = "under the floor" if cur.lag < self.lag_floor else "shrinking"
                ev = self._evidence(cur, now_s - self.last_progress_t,
                                    lag_window_s=self.lag_window_s,
                                    lag_floor=self.lag_floor)
                out.append(self.lag.resolve(
                    f"Consumer group {self.group} is catching up on {self.topic}: lag "
                    f"{cur.lag} records, {why}.", us, ev))
            else:
                self.lag.observe(None, "pipeline_lag", "", {}, us)
        return [r for r in out if r is not None]

    def _evidence(self, cur: Sample, idle_s: float, **extra: Any) -> dict[str, Any]:
        return {"topic": self.topic, "group": self.group, "end_offsets_total": cur.end,
                "committed_total": cur.committed, "lag": cur.lag,
                "seconds_without_progress": round(max(idle_s, 0.0), 3), **extra}


# ---------------------------------------------------------------- runner


def read_offsets(admin, consumer, group: str, topic: str = OTLP_SPANS) -> tuple[int, int | None]:
    """(end offsets total, committed total or None) of ``group`` on ``topic``.

    A partition the group has not committed yet counts from its first retained record
    (what the group would still have to read); None only when it committed nowhere.
    """
    from kafka import TopicPartition

    from pipeline import clients

    parts = sorted(consumer.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in parts]
    ends = consumer.end_offsets(tps) if tps else {}
    committed = clients.group_offsets(admin, group, topic)
    end_total = sum(ends.values())
    if not committed:
        return end_total, None
    missing = [tp for tp in tps if tp.partition not in committed]
    starts = consumer.beginning_offsets(missing) if missing else {}
    return end_total, sum(committed.values()) + sum(starts.values())


class Watchdog:
    """Samples the offsets every ``pipeline_check_s`` seconds in a daemon thread and
    produces the monitor's records to ``llm_alerts`` (key = dedup_key, JSON).

    A thread, not an asyncio task: kafka-python blocks, and a hung broker call must
    neither stall the receivers' event loop nor delay the server's shutdown. Every
    failure is logged and retried at the next check; records not yet acknowledged are
    kept and sent again (same ids, so downstream drops twins).
    """

    def __init__(self, settings: Settings, monitor: HealthMonitor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.monitor = monitor or HealthMonitor.from_settings(settings)
        self.clock = clock
        self.interval = settings.detect.pipeline_check_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin = self._consumer = self._producer = None
        self._pending: list[dict[str, Any]] = []
        self._failing = False
        self._recover_tries = 0

    # ---- kafka

    def _clients(self):
        from pipeline import clients

        if self._admin is None:
            self._admin = clients.admin_client(self.settings)
        if self._consumer is None:
            self._consumer = clients.consumer(self.settings, enable_auto_commit=False,
                                              client_id="llmspend-health")
        return self._admin, self._consumer

    def _close(self) -> None:
        for name in ("_admin", "_consumer", "_producer"):
            c = getattr(self, name)
            setattr(self, name, None)
            if c is None:
                continue
            try:
                if name == "_producer":
                    c.close(timeout=2)
                else:
                    c.close()
            except Exception:  # closing a broken client
                log.debug("closing %s failed", name, exc_info=True)

    def _recover(self) -> None:
        """Read our incidents back from ``llm_alerts`` (once, before the first check)."""
        from kafka import TopicPartition

        _, c = self._clients()
        keys = {k.encode() for k in self.monitor.keys}
        tps = [TopicPartition(LLM_ALERTS, p) for p in c.partitions_for_topic(LLM_ALERTS)
               or ()]
        records: list[dict[str, Any]] = []
        if tps:
            c.assign(tps)
            c.seek_to_beginning(*tps)
            ends = c.end_offsets(tps)
            deadline = time.monotonic() + 30
            try:
                while (any(c.position(tp) < ends[tp] for tp in tps)
                       and time.monotonic() < deadline and not self._stop.is_set()):
                    for batch in c.poll(timeout_ms=500).values():
                        for r in batch:
                            if r.key in keys:
                                try:
                                    records.append(orjson.loads(r.value))
                                except (orjson.JSONDecodeError, TypeError):
                                    continue
            finally:
                c.unsubscribe()
        self.monitor.restore(records)

    def _send(self) -> None:
        from pipeline import clients

        if not self._pending:
            return
        if self._producer is None:
            self._producer = clients.producer(self.settings, client_id="llmspend-health")
        futures = [self._producer.send(LLM_ALERTS, key=a[A.DEDUP_KEY].encode(),
                                       value=orjson.dumps(a)) for a in self._pending]
        for f in futures:
            f.get(timeout=max(self.settings.ingest.produce_timeout_s, 5.0))
        for a in self._pending:
            log.warning("pipeline health: %s %s: %s", a[A.STATE], a[A.DETECTOR],
                        a[A.SUMMARY])
        self._pending.clear()

    # ---- one check

    def check(self) -> list[dict[str, Any]]:
        """Sample, judge, produce; the new records (raises on Kafka errors)."""
        if self._recover_tries < 3:
            # Before the first judgement; given up after 3 failures (alerting matters
            # more than recovering: at worst a firing incident is re-written, same id).
            self._recover_tries += 1
            self._recover()
            self._recover_tries = 3
        admin, consumer = self._clients()
        end, committed = read_offsets(admin, consumer, self.monitor.group,
                                      self.monitor.topic)
        alerts = self.monitor.observe(self.clock(), end, committed)
        self._pending.extend(alerts)
        self._send()
        return alerts

    def run(self) -> None:
        """The thread's loop: check, then sleep; never raises."""
        while not self._stop.is_set():
            try:
                self.check()
                if self._failing:
                    log.info("pipeline health check works again")
                self._failing = False
            except Exception:  # the ingest server must keep running
                if not self._failing:
                    log.warning("pipeline health check failed (retrying every %gs)",
                                self.interval, exc_info=True)
                else:
                    log.debug("pipeline health check failed", exc_info=True)
                self._failing = True
                self._close()
            self._stop.wait(self.interval)
        self._close()

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self.run, name="llmspend-health",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait a little (it is a daemon: never blocks exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def start_watchdog(settings: Settings) -> Watchdog | None:
    """Start the pipeline health watchdog (None when ``pipeline_check_s`` <= 0: off).
    Never raises: the receivers matter more than their watchdog."""
    if settings.detect.pipeline_check_s <= 0:
        return None
    try:
        return Watchdog(settings).start()
    except Exception:
        log.warning("pipeline health watchdog did not start", exc_info=True)
        return None
