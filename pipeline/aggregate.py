"""Rolling 1-minute aggregates of calls, exact after restarts: the pure core of stage 2.

One :class:`PartitionAggregator` per ``llm_calls`` partition turns that partition's
records, in offset order, into aggregate partials (``llm_agg_1m`` records). Everything it
emits is a deterministic function of the partition's log, which is what makes the
aggregates exact after a crash:

* **Event time, record-local lateness.** A call belongs to the 1-minute window of its
  ``start_time``. Whether it is on time is decided by the record that carries it: late
  when its window ended more than ``allowed_lateness`` before the record's Kafka
  timestamp. The decision never depends on what was read before, so a replay decides
  the same.
* **Partials with deterministic ids.** The on-time calls of a (window, key) on one
  partition form its *main partial*, emitted once a record's timestamp passes the window
  end plus the lateness (and re-emitted, same id, if a straggler still joins it within
  ``close_grace``). Late calls form a *late partial* per (window, key, source record),
  id'd by the record's offset. Re-emitting a partial replaces the earlier record of the
  same id (the topic is compacted, the lake keeps the latest per id).
* **Duplicates** (same ``call_id``) count once. The dedup memory is bounded: a call id is
  forgotten ``dedup_horizon`` after the record that first carried it (record
  timestamps); a twin arriving later than that counts again, as a late partial.
* **Commits that allow an exact replay.** :meth:`PartitionAggregator.commit_offset` is
  the first offset whose record still matters (its calls are still remembered for dedup,
  session rules or open windows). Committing no further than that, a restarted worker
  rebuilds the same state from the log and emits the same partials.

Idle partitions: windows close on record timestamps, so each partition needs records to
advance; the normalise stage writes an empty *heartbeat* record to every partition it
has not written to for a few seconds (:func:`is_heartbeat`), which keeps closing
deterministic (the heartbeat is in the log).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sketch import bucket_indices
from pipeline.sketch import quantile as sketch_quantile
from schemas import aggregates as A
from schemas import calls as C

HEARTBEAT_HEADER = "llmspend-heartbeat"
_US_PER_MS = 1000


def is_heartbeat(headers: Iterable[tuple[str, bytes]] | None, value: bytes | None) -> bool:
    """An empty ``llm_calls`` record that only advances the partition's clock."""
    return not value and any(k == HEARTBEAT_HEADER for k, _ in (headers or ()))


@dataclass(frozen=True)
class AggregateConfig:
    """How windows close and which calls count as timeouts, fallbacks, escalations."""

    window_ms: int = 60_000
    allowed_lateness_ms: int = 30_000
    close_grace_ms: int = 30_000
    dedup_horizon_ms: int = 600_000
    timeout_ms: float = 60_000.0
    timeout_error_types: frozenset[str] = frozenset(
        {"timeout", "TimeoutError", "APITimeoutError", "ReadTimeout", "ReadTimeoutError",
         "deadline_exceeded", "DEADLINE_EXCEEDED", "504"})
    #: A call in the same session within this time after an error, on another model or
    #: provider, is a fallback; after a success, on a higher model of a ladder, an
    #: escalation.
    session_rule_window_ms: int = 300_000
    #: Ordered model ladders (cheap -> large), one tuple per family.
    ladders: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        need = self.window_ms + self.allowed_lateness_ms + self.close_grace_ms
        if self.dedup_horizon_ms < max(need, self.session_rule_window_ms):
            raise ValueError("dedup_horizon must cover window + lateness + grace and the "
                             "session rule window")

    @classmethod
    def from_settings(cls, a: Any) -> AggregateConfig:
        """From ``Settings.aggregate`` (seconds and comma lists in, ms and sets here)."""
        return cls(
            window_ms=int(a.window_s * 1000), allowed_lateness_ms=int(a.allowed_lateness_s * 1000),
            close_grace_ms=int(a.close_grace_s * 1000),
            dedup_horizon_ms=int(a.dedup_horizon_s * 1000), timeout_ms=a.timeout_ms,
            timeout_error_types=frozenset(t.strip() for t in a.timeout_error_types.split(",")
                                          if t.strip()),
            session_rule_window_ms=int(a.session_rule_window_s * 1000),
            ladders=tuple(tuple(m.strip() for m in ladder.split("<") if m.strip())
                          for ladder in a.escalation_ladders.split(";") if ladder.strip()))

    def rank(self) -> dict[str, tuple[int, int]]:
        """model -> (ladder, position) for escalation checks."""
        return {m: (i, j) for i, ladder in enumerate(self.ladders) for j, m in enumerate(ladder)}


@dataclass
class Acc:
    """Sums of one partial (one window, one key, one view)."""

    calls: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    errors: int = 0
    timeouts: int = 0
    fallbacks: int = 0
    escalations: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    list_cost_usd: Decimal = Decimal(0)
    unpriced_calls: int = 0
    latency: Counter = field(default_factory=Counter)
    ttft: Counter = field(default_factory=Counter)

    def merge(self, other: Acc) -> None:
        for name in A.COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd += other.cost_usd
        self.list_cost_usd += other.list_cost_usd
        self.latency.update(other.latency)
        self.ttft.update(other.ttft)


@dataclass
class _Window:
    acc: Acc
    first_offset: int
    emitted: bool = False
    dirty: bool = True


@dataclass
class _Session:
    model: str | None
    provider: str | None
    ok: bool
    end_ms: int
    record_ts: int
    offset: int


def _key_values(view: str, row: dict[str, Any]) -> tuple:
    return tuple(row[c] for c in A.VIEW_KEYS[view])


def agg_id(view: str, window_start_ms: int, key: tuple, partition: int,
           late_offset: int | None) -> str:
    """Deterministic id (the Kafka key) of one partial."""
    raw = json.dumps([view, window_start_ms, list(key), partition, late_offset],
                     separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def partial_record(view: str, window_start_ms: int, window_ms: int, key: tuple,
                   partition: int, late_offset: int | None, acc: Acc) -> dict[str, Any]:
    """The ``llm_agg_1m`` JSON object of one partial (schema: ``schemas.aggregates``)."""
    rec: dict[str, Any] = {"agg_id": agg_id(view, window_start_ms, key, partition,
                                            late_offset),
                           "view": view}
    names = A.VIEW_KEYS[view]
    for col in A.KEY_COLUMNS:
        rec[col] = key[names.index(col)] if col in names else None
    rec.update({
        "window_start": A.rfc3339_ms(window_start_ms),
        "window_end": A.rfc3339_ms(window_start_ms + window_ms),
        "source_partition": partition,
        "late": late_offset is not None,
        "late_offset": late_offset,
    })
    for name in A.COUNT_FIELDS:
        rec[name] = getattr(acc, name)
    rec["cost_usd"] = format(acc.cost_usd, "f")
    rec["list_cost_usd"] = format(acc.list_cost_usd, "f")
    rec["latency_buckets"] = [{"bucket": b, "count": n} for b, n in sorted(acc.latency.items())]
    rec["ttft_buckets"] = [{"bucket": b, "count": n} for b, n in sorted(acc.ttft.items())]
    return rec


@dataclass
class RecordOutput:
    """What one input record produced: partials to emit and what happened."""

    partials: list[dict[str, Any]] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)


class PartitionAggregator:
    """The aggregation state of one ``llm_calls`` partition (see the module docstring)."""

    def __init__(self, partition: int, config: AggregateConfig | None = None) -> None:
        self.partition = partition
        self.config = config or AggregateConfig()
        self._rank = self.config.rank()
        self.windows: dict[tuple, _Window] = {}  # (view, window_start, key) -> state
        self.closed: dict[tuple, int] = {}  # windows dropped from state -> window end
        self.seen: dict[str, int] = {}  # call_id -> start ms
        self._seen_order: deque[tuple[int, str]] = deque()  # (start ms, call_id), in order
        self.sessions: dict[tuple, _Session] = {}
        self._records: deque[tuple[int, int]] = deque()  # (offset, record ts), remembered
        self._deps: deque[tuple[int, int]] = deque()  # (offset, earliest record it used)
        self._commit = 0
        self._offset = 0
        self._dep = 0
        self.clock_ms = 0  # highest record timestamp seen
        self.next_offset = 0

    # ------------------------------------------------------------ input

    def add(self, calls: pa.Table, offset: int, timestamp_ms: int) -> RecordOutput:
        """Fold one ``llm_calls`` record (its calls; empty for a heartbeat) into the state."""
        out = RecordOutput()
        cfg = self.config
        self.clock_ms = max(self.clock_ms, timestamp_ms)
        self.next_offset = offset + 1
        late_accs: dict[tuple, Acc] = {}
        self._offset = offset
        self._dep = offset  # earliest record whose memory this record's decisions used
        if calls.num_rows:
            rows, starts, lat_b, ttft_b = self._columns(calls)
            for i, row in enumerate(rows):
                start = starts[i]
                cid = row[C.CALL_ID]
                first = self.seen.get(cid)
                # Horizon measured in record timestamps (when each copy arrived), so a
                # replay from the committed offset decides alike.
                if first is not None and first[0] >= timestamp_ms - cfg.dedup_horizon_ms:
                    out.stats["duplicates_dropped"] += 1
                    self._dep = min(self._dep, first[1])
                    continue
                self.seen[cid] = (timestamp_ms, offset)
                self._seen_order.append((timestamp_ms, cid))
                window = start - start % cfg.window_ms
                late = window + cfg.window_ms + cfg.allowed_lateness_ms <= timestamp_ms
                fallback, escalation = self._session_rules(row, start, timestamp_ms)
                for view in A.VIEWS:
                    key = _key_values(view, row)
                    if late or (view, window, key) in self.closed:
                        acc = late_accs.setdefault((view, window, key), Acc())
                    else:
                        state = self.windows.get((view, window, key))
                        if state is None:
                            state = self.windows[(view, window, key)] = _Window(Acc(), offset)
                        # A replay must re-read the window's earlier records too.
                        self._dep = min(self._dep, state.first_offset)
                        state.dirty = True
                        acc = state.acc
                    _fold(acc, row, lat_b[i], ttft_b[i], fallback, escalation, cfg)
                out.stats["late_calls" if late else "calls"] += 1
        for (view, window, key), acc in sorted(late_accs.items(), key=_sort_key):
            out.partials.append(partial_record(view, window, cfg.window_ms, key,
                                               self.partition, offset, acc))
        self._records.append((offset, timestamp_ms))
        if self._dep < offset:
            self._deps.append((offset, self._dep))
        out.partials.extend(self._close(timestamp_ms, out.stats))
        self._evict()
        return out

    def _columns(self, calls: pa.Table):
        starts = pc.cast(calls.column(C.START_TIME), pa.int64()).to_numpy(
            zero_copy_only=False) // _US_PER_MS
        lat = calls.column(C.LATENCY_MS).to_numpy(zero_copy_only=False).astype(np.float64)
        ttft = calls.column(C.TTFT_MS).to_numpy(zero_copy_only=False).astype(np.float64)
        lat_b = np.where(np.isnan(lat), -1, bucket_indices(lat)).tolist()
        ttft_b = np.where(np.isnan(ttft), -1, bucket_indices(ttft)).tolist()
        rows = calls.select(A.NEEDED_COLUMNS).to_pylist()
        for row in rows:  # unpriced traffic stays visible under the model it named
            row[C.MODEL] = row[C.MODEL] or row[C.RESPONSE_MODEL] or row[C.REQUEST_MODEL]
        return rows, starts.tolist(), lat_b, ttft_b

    def _session_rules(self, row: dict[str, Any], start: int, ts: int) -> tuple[bool, bool]:
        """(fallback, escalation) of an LLM call, from its session's previous call (if
        that arrived within the dedup horizon: a replay then sees the same one)."""
        if row[C.KIND] != C.KIND_LLM:
            return False, False
        skey = (row[C.TENANT], row[C.SESSION_ID])
        prev = self.sessions.get(skey)
        model = row[C.MODEL]
        fallback = escalation = False
        if (prev is not None and prev.record_ts >= ts - self.config.dedup_horizon_ms
                and start - prev.end_ms <= self.config.session_rule_window_ms):
            if not prev.ok:
                fallback = (model, row[C.PROVIDER]) != (prev.model, prev.provider)
            elif prev.model in self._rank and model in self._rank:
                (fa, ia), (fb, ib) = self._rank[prev.model], self._rank[model]
                escalation = fa == fb and ib > ia
            if fallback or escalation:
                self._dep = min(self._dep, prev.offset)
        end = start + int(row[C.LATENCY_MS] or 0)
        self.sessions[skey] = _Session(model, row[C.PROVIDER], row[C.STATUS] == C.STATUS_OK,
                                       end, ts, self._offset)
        return fallback, escalation

    # ------------------------------------------------------------ closing and eviction

    def _close(self, now_ms: int, stats: Counter) -> list[dict[str, Any]]:
        cfg = self.config
        out = []
        drop = []
        for wkey, state in sorted(self.windows.items(), key=_sort_key):
            view, window, key = wkey
            end = window + cfg.window_ms
            if end + cfg.allowed_lateness_ms > now_ms:
                continue
            if state.dirty:
                out.append(partial_record(view, window, cfg.window_ms, key, self.partition,
                                          None, state.acc))
                stats["reemitted" if state.emitted else "windows_closed"] += 1
                state.emitted, state.dirty = True, False
            if end + cfg.allowed_lateness_ms + cfg.close_grace_ms <= now_ms:
                drop.append(wkey)
        for wkey in drop:
            del self.windows[wkey]
            self.closed[wkey] = wkey[1] + cfg.window_ms
        return out

    def _evict(self) -> None:
        """Forget what no later record can need, assuming record timestamps of one
        partition never go back by more than ``close_grace`` (producer clock jitter)."""
        cfg = self.config
        horizon = self.clock_ms - cfg.close_grace_ms - cfg.dedup_horizon_ms
        while self._seen_order and self._seen_order[0][0] < horizon:
            ts, cid = self._seen_order.popleft()
            first = self.seen.get(cid)
            if first is not None and first[0] == ts:
                del self.seen[cid]
        if len(self.sessions) > 4096:
            self.sessions = {k: s for k, s in self.sessions.items() if s.record_ts >= horizon}
        if len(self.closed) > 4096:
            self.closed = {k: end for k, end in self.closed.items() if end >= horizon}
        # Records no later record can depend on: older than any future record's horizon.
        while self._records and self._records[0][1] < horizon:
            self._records.popleft()

    def commit_offset(self) -> int:
        """The offset a consumer may commit: replaying from it rebuilds the same state
        and the same decisions. It is the earliest of: the first record still remembered
        (a future twin or session may need it), the first record of every window still
        in memory, and (transitively) every record that an already processed record
        after that point depended on (the first copy of a twin it dropped, the session
        call that made it a fallback or escalation, the first record of a window it
        added to)."""
        c = self._records[0][0] if self._records else self.next_offset
        for w in self.windows.values():
            c = min(c, w.first_offset)
        c = max(c, self._commit)  # never behind what was already allowed
        changed = True
        while changed:
            changed = False
            for off, dep in self._deps:
                if off >= c and dep < c:
                    c, changed = dep, True
        while self._deps and self._deps[0][0] < c:
            self._deps.popleft()
        self._commit = c
        return c

    def open_windows(self) -> int:
        return len(self.windows)


def _sort_key(item: tuple) -> tuple:
    (view, window, key), _ = item
    return (view, window, tuple("" if v is None else str(v) for v in key))


def _fold(acc: Acc, row: dict[str, Any], lat_b: int, ttft_b: int, fallback: bool,
          escalation: bool, cfg: AggregateConfig) -> None:
    acc.calls += 1
    is_llm = row[C.KIND] == C.KIND_LLM
    acc.llm_calls += is_llm
    acc.tool_calls += not is_llm
    error = row[C.STATUS] == C.STATUS_ERROR
    acc.errors += error
    latency = row[C.LATENCY_MS]
    acc.timeouts += (error and row[C.ERROR_TYPE] in cfg.timeout_error_types) or (
        latency is not None and latency >= cfg.timeout_ms)
    acc.fallbacks += fallback
    acc.escalations += escalation
    cached = row[C.CACHED_INPUT_TOKENS] or 0
    acc.cache_hits += cached > 0
    acc.input_tokens += row[C.INPUT_TOKENS] or 0
    acc.output_tokens += row[C.OUTPUT_TOKENS] or 0
    acc.cached_input_tokens += cached
    acc.cache_write_tokens += row[C.CACHE_WRITE_TOKENS] or 0
    acc.reasoning_tokens += row[C.REASONING_TOKENS] or 0
    if row[C.COST_USD] is not None:
        acc.cost_usd += row[C.COST_USD]
    if row[C.LIST_COST_USD] is not None:
        acc.list_cost_usd += row[C.LIST_COST_USD]
    acc.unpriced_calls += is_llm and not row[C.PRICED]
    if lat_b >= 0:
        acc.latency[lat_b] += 1
    if ttft_b >= 0:
        acc.ttft[ttft_b] += 1


# ------------------------------------------------------------ merging partials


def merge_partials(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Merge partials into totals per (view, window_start, key): latest record per
    ``agg_id`` first (re-emissions replace), then sums across partitions and late ones."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        latest[r["agg_id"]] = r
    totals: dict[tuple, dict[str, Any]] = {}
    for r in latest.values():
        k = (r["view"], r["window_start"], tuple(r[c] for c in A.VIEW_KEYS[r["view"]]))
        t = totals.get(k)
        if t is None:
            t = totals[k] = {name: 0 for name in A.COUNT_FIELDS}
            t.update(cost_usd=Decimal(0), list_cost_usd=Decimal(0),
                     latency=np.zeros(A.N_BUCKETS, np.int64),
                     ttft=np.zeros(A.N_BUCKETS, np.int64))
        for name in A.COUNT_FIELDS:
            t[name] += r[name]
        t["cost_usd"] += Decimal(r["cost_usd"])
        t["list_cost_usd"] += Decimal(r["list_cost_usd"])
        for p in r["latency_buckets"]:
            t["latency"][p["bucket"]] += p["count"]
        for p in r["ttft_buckets"]:
            t["ttft"][p["bucket"]] += p["count"]
    return totals


def quantiles(counts: np.ndarray, qs: Iterable[float] = (0.5, 0.95, 0.99)
              ) -> Iterator[float | None]:
    """P50/P95/P99 (lower nearest rank, bucket value) of a merged sketch."""
    for q in qs:
        yield sketch_quantile(counts, q)
