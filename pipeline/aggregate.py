"""Rolling 1-minute aggregates of calls, exact after restarts: the pure core of stage 2.

One :class:`PartitionAggregator` per ``llm_calls`` partition turns that partition's
records, in offset order, into aggregate partials (``llm_agg_1m`` records). Everything it
emits is a deterministic function of the partition's log, which is what makes the
aggregates exact after a crash:

* **Event time, record-local lateness.** A call belongs to the 1-minute window of its
  ``start_time``. It is late when its window ended more than ``allowed_lateness`` before
  its record's Kafka timestamp, or when the partition's clock (the highest record
  timestamp) passed the window end plus lateness plus ``close_grace``.
* **Segments.** The partition's offsets are cut into segments of ``segment_records``
  (``offset // segment_records``). The on-time calls of a (window, key) within one
  segment form a *main partial*, emitted once the clock passes the window end plus the
  lateness (re-emitted, same id, if a straggler still joins within ``close_grace``) and
  at the latest when the segment ends. Late calls form a *late partial* per (window, key,
  record). Ids are deterministic (view, window, key, partition, segment or late record
  offset), so a re-emission replaces the earlier record (compacted topic, latest per id
  in the lake), and partials of different segments add up.
* **Duplicates** (same ``call_id``) count once. The dedup memory is bounded: a call id is
  forgotten ``dedup_horizon`` after the record that first carried it (record
  timestamps); a twin arriving later than that counts again.
* **Checkpoints.** When a segment ends, all its partials have been emitted; the
  aggregator then offers a :class:`Checkpoint`: *emit_from*, the first offset of the new
  segment, and *replay_from*, the first record still inside the dedup horizon. A worker
  that stores emit_from durably and then commits replay_from can crash anywhere: its
  successor replays from replay_from with ``emit_from`` set, rebuilding memory (twins,
  sessions, clock) without emitting until the segment where emission stopped, and from
  there emits exactly the partials an uninterrupted run would have.

Idle partitions: windows close on record timestamps, so each partition needs records to
advance; the normalise stage writes an empty *heartbeat* record to every partition it
has not written to for a few seconds (:func:`is_heartbeat`), which keeps closing
deterministic (the heartbeat is in the log).

Sums live in numpy slot arrays (one row per open partial), folded by a numba kernel:
money as int64 pico-dollars, exact up to 9.2 million USD per partial (an overflow raises
rather than wrap).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

import numba
import numpy as np
import orjson
import pyarrow as pa

from pipeline import callbatch
from pipeline.callbatch import CallBatch
from pipeline.distinct import DistinctCount, unit_hash
from pipeline.sketch import bucket_indices
from schemas import aggregates as A
from schemas import calls as C

HEARTBEAT_HEADER = "llmspend-heartbeat"
#: Columns of a slot's sums: the integer fields, then cost and list cost in pico-USD.
N_SUMS = len(A.COUNT_FIELDS) + 2
_F = {name: i for i, name in enumerate(A.COUNT_FIELDS)}
_MONEY_LIMIT = 2**62
# The fold loop builds view keys positionally, in this order.
assert A.VIEW_KEYS == {A.VIEW_GROUP: (C.TENANT, C.SERVICE, C.PROVIDER, C.MODEL, C.TEAM,
                                      C.USE_CASE),
                       A.VIEW_USER: (C.TENANT, C.TEAM, C.USER_ID),
                       A.VIEW_UNIT: (C.TENANT, C.USE_CASE, C.UNIT_TYPE)}


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
    #: Records per segment: how often checkpoints (and commits) advance.
    segment_records: int = 500

    def __post_init__(self) -> None:
        need = self.window_ms + self.allowed_lateness_ms + self.close_grace_ms
        if self.dedup_horizon_ms < max(need, self.session_rule_window_ms):
            raise ValueError("dedup_horizon must cover window + lateness + grace and the "
                             "session rule window")
        if self.segment_records < 1:
            raise ValueError("segment_records must be at least 1")

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
                          for ladder in a.escalation_ladders.split(";") if ladder.strip()),
            segment_records=a.segment_records)

    def rank(self) -> dict[str, tuple[int, int]]:
        """model -> (ladder, position) for escalation checks."""
        return {m: (i, j) for i, ladder in enumerate(self.ladders) for j, m in enumerate(ladder)}


@dataclass(frozen=True)
class Checkpoint:
    """Store ``emit_from`` durably, then commit ``replay_from`` (in that order)."""

    replay_from: int
    emit_from: int


@dataclass
class _Window:
    slot: int
    emitted: bool = False
    dirty: bool = True


def agg_id(view: str, window_start_ms: int, key: tuple, partition: int,
           late_offset: int | None, segment: int | None = None) -> str:
    """Deterministic id (the Kafka key) of one partial."""
    raw = orjson.dumps([view, window_start_ms, list(key), partition, late_offset, segment])
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _money(p: int) -> str:
    return format(Decimal(int(p)).scaleb(-C.MONEY_SCALE), "f")


def partial_record(view: str, window_start_ms: int, window_ms: int, key: tuple,
                   partition: int, late_offset: int | None, segment: int | None,
                   sums: np.ndarray, latency: np.ndarray, ttft: np.ndarray,
                   units: DistinctCount | None = None) -> dict[str, Any]:
    """The ``llm_agg_1m`` JSON object of one partial (schema: ``schemas.aggregates``)."""
    rec: dict[str, Any] = {"agg_id": agg_id(view, window_start_ms, key, partition,
                                            late_offset, segment),
                           "view": view}
    names = A.VIEW_KEYS[view]
    for col in A.KEY_COLUMNS:
        rec[col] = key[names.index(col)] if col in names else None
    rec.update({
        "window_start": _rfc3339(window_start_ms),
        "window_end": _rfc3339(window_start_ms + window_ms),
        "source_partition": partition,
        "segment": segment,
        "late": late_offset is not None,
        "late_offset": late_offset,
    })
    values = sums.tolist()
    for i, name in enumerate(A.COUNT_FIELDS):
        rec[name] = values[i]
    rec["cost_usd"] = _money(values[-2])
    rec["list_cost_usd"] = _money(values[-1])
    rec["latency_buckets"] = _sparse(latency)
    rec["ttft_buckets"] = _sparse(ttft)
    rec["units"] = rec["unit_hashes"] = None
    if units is not None:
        rec["units"] = units.count()
        rec["unit_hashes"] = units.sorted_hashes()[:units.k] if units.saturated \
            else units.sorted_hashes()
    return rec


@lru_cache(maxsize=4096)
def _rfc3339(ms: int) -> str:
    return A.rfc3339_ms(ms)


def _sparse(counts: np.ndarray) -> list[dict[str, int]]:
    (nz,) = counts.nonzero()
    return [{"bucket": b, "count": n} for b, n in zip(nz.tolist(), counts[nz].tolist(),
                                                     strict=True)]


@numba.njit(cache=True, nogil=True)
def fold(sums: np.ndarray, latency: np.ndarray, ttft: np.ndarray, slots: np.ndarray,
         values: np.ndarray, lat_b: np.ndarray, ttft_b: np.ndarray, money_limit: int) -> bool:
    """Add every call (row of ``values``) into its slot; False if money left int64 range."""
    ok = True
    nf = values.shape[1]
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for f in range(nf):
            sums[s, f] += values[i, f]
        if sums[s, nf - 2] > money_limit or sums[s, nf - 2] < -money_limit \
                or sums[s, nf - 1] > money_limit or sums[s, nf - 1] < -money_limit:
            ok = False
        if lat_b[i] >= 0:
            latency[s, lat_b[i]] += 1
        if ttft_b[i] >= 0:
            ttft[s, ttft_b[i]] += 1
    return ok


class _Slots:
    """Rows of sums and sketches, one per open partial, reused when a partial closes."""

    def __init__(self, capacity: int = 256) -> None:
        self.sums = np.zeros((capacity, N_SUMS), np.int64)
        self.latency = np.zeros((capacity, A.N_BUCKETS), np.int32)
        self.ttft = np.zeros((capacity, A.N_BUCKETS), np.int32)
        self.free = list(range(capacity - 1, -1, -1))
        self.units: dict[int, DistinctCount] = {}   # unit-view slots: distinct units

    def take(self) -> int:
        if not self.free:
            n = len(self.sums)
            self.sums = np.concatenate([self.sums, np.zeros_like(self.sums)])
            self.latency = np.concatenate([self.latency, np.zeros_like(self.latency)])
            self.ttft = np.concatenate([self.ttft, np.zeros_like(self.ttft)])
            self.free = list(range(2 * n - 1, n - 1, -1))
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.sums[slot] = 0
        self.latency[slot] = 0
        self.ttft[slot] = 0
        self.units.pop(slot, None)
        self.free.append(slot)


@dataclass
class RecordOutput:
    """What one input record produced: partials to emit and what happened."""

    partials: list[dict[str, Any]] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)


class PartitionAggregator:
    """The aggregation state of one ``llm_calls`` partition (see the module docstring).

    ``emit_from``: the checkpoint's emit offset when resuming after a crash; records
    before it only rebuild memory."""

    def __init__(self, partition: int, config: AggregateConfig | None = None,
                 emit_from: int = 0) -> None:
        self.partition = partition
        self.config = config or AggregateConfig()
        self.emit_from = emit_from
        self._rank = self.config.rank()
        self._slots = _Slots()
        self.windows: dict[tuple, _Window] = {}  # (view, window_start, key) -> state
        self._by_start: dict[int, set[tuple]] = {}  # window_start -> not yet emitted
        self._emitted: dict[int, set[tuple]] = {}  # window_start -> emitted, in grace
        self._stragglers: set[tuple] = set()  # emitted windows that took more calls
        self.seen: dict[str, int] = {}  # call_id -> record ts of its counted copy
        self._seen_order: deque[tuple[int, str]] = deque()  # (record ts, call_id)
        # (tenant, session) -> (model, provider, ok, end ms, record ts) of its last call
        self.sessions: dict[tuple, tuple] = {}
        self._records: deque[tuple[int, int]] = deque()  # (offset, ts) within the horizon
        self.segment: int | None = None
        self.checkpoint: Checkpoint | None = None  # the newest one offered
        self.clock_ms = 0  # highest record timestamp seen
        self.next_offset = 0
        self._emitting = True

    # ------------------------------------------------------------ input

    def add(self, calls: pa.Table | CallBatch, offset: int, timestamp_ms: int) -> RecordOutput:
        """Fold one ``llm_calls`` record (its calls; empty for a heartbeat) into the state."""
        batch = calls if isinstance(calls, CallBatch) else callbatch.from_table(calls)
        out = RecordOutput()
        cfg = self.config
        segment = offset // cfg.segment_records
        if self.segment is None:
            self.segment = segment
        elif segment != self.segment:
            self._end_segment(out, offset)
            self.segment = segment
        emitting = self._emitting = offset >= self.emit_from
        self.clock_ms = max(self.clock_ms, timestamp_ms)
        self.next_offset = offset + 1
        if batch.n:
            self._fold_calls(batch, offset, timestamp_ms, out, emitting)
        self._records.append((offset, timestamp_ms))
        self._close(out, emitting)
        self._evict()
        if not emitting:
            out.partials.clear()
            out.stats = Counter(replayed_records=1)
        return out

    def _fold_calls(self, b: CallBatch, offset: int, ts: int, out: RecordOutput,
                    emitting: bool) -> None:
        cfg = self.config
        n = b.n
        L = b.lists
        cids, kinds, sessions = L[C.CALL_ID], L[C.KIND], L[C.SESSION_ID]
        tenants, services, providers = L[C.TENANT], L[C.SERVICE], L[C.PROVIDER]
        models, teams, use_cases, users = L[C.MODEL], L[C.TEAM], L[C.USE_CASE], L[C.USER_ID]
        unit_types, unit_ids = L[C.UNIT_TYPE], L[C.UNIT_ID]
        statuses = L[C.STATUS]
        starts = b.start_ms.tolist()
        ends = (b.start_ms + np.nan_to_num(b.latency_ms, nan=0.0).astype(np.int64)).tolist()
        slot_g = [-1] * n
        slot_u = [-1] * n
        slot_n = [-1] * n       # unit view: only calls that name a business unit
        fallback = [False] * n
        escalation = [False] * n
        late_slots: dict[tuple, int] = {}
        horizon = ts - cfg.dedup_horizon_ms
        W = cfg.window_ms
        # A window is late once it ended before either bound (see the module docstring).
        late_end = max(ts - cfg.allowed_lateness_ms,
                       self.clock_ms - cfg.allowed_lateness_ms - cfg.close_grace_ms)
        seen, seen_get, remember = self.seen, self.seen.get, self._seen_order.append
        slots, session_rules = self._slots, self._session_rules
        unit_sets = slots.units
        group, user, unit, llm, ok = A.VIEW_GROUP, A.VIEW_USER, A.VIEW_UNIT, C.KIND_LLM, \
            C.STATUS_OK

        def slot_of(wkey: tuple) -> int:
            """The slot of an on-time (view, window, key), opened if new."""
            state = self.windows.get(wkey)
            if state is None:
                state = self._open(wkey)
            elif state.emitted:
                self._stragglers.add(wkey)
            state.dirty = True
            return state.slot

        def late_slot(wkey: tuple) -> int:
            s = late_slots.get(wkey)
            if s is None:
                s = late_slots[wkey] = slots.take()
            return s

        n_late = n_dup = 0
        for i in range(n):
            cid = cids[i]
            first = seen_get(cid)
            if first is not None and first >= horizon:
                n_dup += 1
                continue
            seen[cid] = ts
            remember((ts, cid))
            start = starts[i]
            window = start - start % W
            tenant, team = tenants[i], teams[i]
            if kinds[i] == llm:
                fallback[i], escalation[i] = session_rules(
                    (tenant, sessions[i]), models[i], providers[i], statuses[i] == ok,
                    start, ends[i], ts)
            take = slot_of
            if window + W <= late_end:
                n_late += 1
                take = late_slot
            slot_g[i] = take((group, window, (tenant, services[i], providers[i], models[i],
                                              team, use_cases[i])))
            slot_u[i] = take((user, window, (tenant, team, users[i])))
            unit_id = unit_ids[i]
            if unit_id:
                s = slot_n[i] = take((unit, window, (tenant, use_cases[i], unit_types[i])))
                us = unit_sets.get(s)
                if us is None:
                    us = unit_sets[s] = DistinctCount()
                us.add(unit_hash(unit_types[i], unit_id))
        values = self._values(b, np.array(fallback, np.bool_), np.array(escalation, np.bool_))
        lat_b = np.where(np.isnan(b.latency_ms), -1, bucket_indices(b.latency_ms))
        ttft_b = np.where(np.isnan(b.ttft_ms), -1, bucket_indices(b.ttft_ms))
        for s in (np.array(slot_g, np.int64), np.array(slot_u, np.int64),
                  np.array(slot_n, np.int64)):
            if not fold(slots.sums, slots.latency, slots.ttft, s, values, lat_b, ttft_b,
                        _MONEY_LIMIT):
                raise OverflowError(f"llm_calls[{self.partition}]@{offset}: a partial's "
                                    "cost exceeds the int64 pico-dollar range")
        for wkey, slot in sorted(late_slots.items(), key=_sort_key):
            view, window, key = wkey
            if emitting:
                out.partials.append(self._record(view, window, key, offset, None, slot))
        for slot in late_slots.values():
            slots.release(slot)
        out.stats["calls"] += n - n_dup - n_late
        out.stats["late_calls"] += n_late
        out.stats["duplicates_dropped"] += n_dup

    def _open(self, wkey: tuple) -> _Window:
        state = self.windows[wkey] = _Window(self._slots.take())
        self._by_start.setdefault(wkey[1], set()).add(wkey)
        return state

    def _values(self, b: CallBatch, fallback: np.ndarray, escalation: np.ndarray
                ) -> np.ndarray:
        """Per call, what it adds to each sum (columns: COUNT_FIELDS, cost, list cost)."""
        cfg = self.config
        n = b.n
        v = np.zeros((n, N_SUMS), np.int64)
        llm = np.array([k == C.KIND_LLM for k in b.lists[C.KIND]], np.bool_)
        error = np.array([s == C.STATUS_ERROR for s in b.lists[C.STATUS]], np.bool_)
        timeout_type = np.array([t in cfg.timeout_error_types for t in b.lists[C.ERROR_TYPE]],
                                np.bool_)
        v[:, _F["calls"]] = 1
        v[:, _F["llm_calls"]] = llm
        v[:, _F["tool_calls"]] = ~llm
        v[:, _F["errors"]] = error
        v[:, _F["timeouts"]] = (error & timeout_type) | (b.latency_ms >= cfg.timeout_ms)
        v[:, _F["fallbacks"]] = fallback
        v[:, _F["escalations"]] = escalation
        v[:, _F["cache_hits"]] = b.tokens[:, 2] > 0
        v[:, _F["input_tokens"]:_F["reasoning_tokens"] + 1] = b.tokens
        v[:, _F["unpriced_calls"]] = llm & ~b.priced
        v[:, -2:] = b.cost_pico
        return v

    def _session_rules(self, skey: tuple, model: str | None, provider: str | None,
                       ok: bool, start: int, end: int, ts: int) -> tuple[bool, bool]:
        """(fallback, escalation) of an LLM call, from its session's previous call (if
        that arrived within the dedup horizon: a replay then sees the same one)."""
        # Re-inserted so the dict stays in update order (eviction pops from the front).
        prev = self.sessions.pop(skey, None)
        self.sessions[skey] = (model, provider, ok, end, ts)
        if prev is None:
            return False, False
        p_model, p_provider, p_ok, p_end, p_ts = prev
        if p_ts < ts - self.config.dedup_horizon_ms or \
                start - p_end > self.config.session_rule_window_ms:
            return False, False
        if not p_ok:
            return (model, provider) != (p_model, p_provider), False
        rank = self._rank
        if p_model in rank and model in rank:
            (fa, ia), (fb, ib) = rank[p_model], rank[model]
            return False, fa == fb and ib > ia
        return False, False

    # ------------------------------------------------------------ closing and eviction

    def _record(self, view: str, window: int, key: tuple, late_offset: int | None,
                segment: int | None, slot: int) -> dict[str, Any]:
        s = self._slots
        return partial_record(view, window, self.config.window_ms, key, self.partition,
                              late_offset, segment, s.sums[slot], s.latency[slot],
                              s.ttft[slot], s.units.get(slot))

    def _close(self, out: RecordOutput, emitting: bool) -> None:
        """Emit windows the clock closed (and re-emit stragglers' windows); forget them
        after the grace period."""
        cfg = self.config
        emit_upto = self.clock_ms - cfg.allowed_lateness_ms - cfg.window_ms
        drop_upto = emit_upto - cfg.close_grace_ms
        windows = self.windows
        for start in sorted(w for w in self._by_start if w <= emit_upto):
            keys = self._by_start.pop(start)
            for wkey in sorted(keys, key=_key_sort):
                state = windows[wkey]
                if emitting:
                    out.partials.append(self._record(wkey[0], start, wkey[2], None,
                                                     self.segment, state.slot))
                state.emitted, state.dirty = True, False
            out.stats["windows_closed"] += len(keys)
            self._emitted.setdefault(start, set()).update(keys)
        for wkey in sorted(self._stragglers, key=_key_sort):
            state = windows[wkey]
            if emitting:
                out.partials.append(self._record(wkey[0], wkey[1], wkey[2], None,
                                                 self.segment, state.slot))
            out.stats["reemitted"] += 1
            state.dirty = False
        self._stragglers.clear()
        for start in [w for w in self._emitted if w <= drop_upto]:
            for wkey in self._emitted.pop(start):
                self._slots.release(windows.pop(wkey).slot)

    def _end_segment(self, out: RecordOutput, offset: int) -> None:
        """Emit every dirty partial of the ending segment, forget them all, and offer a
        checkpoint at the new segment's first record."""
        for wkey in sorted(self.windows, key=_key_sort):
            state = self.windows[wkey]
            if state.dirty and self._emitting:
                out.partials.append(self._record(wkey[0], wkey[1], wkey[2], None,
                                                 self.segment, state.slot))
                out.stats["segment_flushes"] += 1
            self._slots.release(state.slot)
        self.windows.clear()
        self._by_start.clear()
        self._emitted.clear()
        self._stragglers.clear()
        if offset >= self.emit_from:  # (a replay re-offers nothing before its emit point)
            replay_from = self._records[0][0] if self._records else offset
            self.checkpoint = Checkpoint(replay_from=replay_from, emit_from=offset)

    def _evict(self) -> None:
        """Forget what no later record can need, assuming record timestamps of one
        partition never go back by more than ``close_grace`` (producer clock jitter)."""
        cfg = self.config
        horizon = self.clock_ms - cfg.close_grace_ms - cfg.dedup_horizon_ms
        while self._seen_order and self._seen_order[0][0] < horizon:
            ts, cid = self._seen_order.popleft()
            if self.seen.get(cid) == ts:
                del self.seen[cid]
        sessions = self.sessions
        while sessions:
            first = next(iter(sessions))
            if sessions[first][4] >= horizon:
                break
            del sessions[first]
        while self._records and self._records[0][1] < horizon:
            self._records.popleft()

    def open_windows(self) -> int:
        return len(self.windows)


def _key_sort(wkey: tuple) -> tuple:
    view, window, key = wkey
    return (view, window, tuple("" if v is None else str(v) for v in key))


def _sort_key(item: tuple) -> tuple:
    return _key_sort(item[0])


# ------------------------------------------------------------ merging partials


def merge_partials(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Merge partials into totals per (view, window_start, key): latest record per
    ``agg_id`` first (re-emissions replace), then sums across partitions and late ones;
    the unit view's distinct units are united (``units``: a DistinctCount)."""
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
        if r.get("unit_hashes") is not None:
            t.setdefault("units", DistinctCount()).merge(
                r["unit_hashes"], saturated=r["units"] > len(r["unit_hashes"]))
    return totals
