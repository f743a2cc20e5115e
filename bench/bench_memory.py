"""Memory of the stateful stages over a long stream: flat in calls, linear in live sessions.

Feeds ``--calls`` synthetic calls (default 10 M) through the pure cores of the two
stateful stages exactly as the worker does, record by record: ``llm_calls`` NDJSON bodies
(written by ``pipeline.calls_ndjson``) -> ``callbatch.from_ndjson`` ->
``PartitionAggregator.add`` (one-minute windows, sketches, dedup horizon), and ->
``detect_stage.decode_rows`` -> ``SessionDetector.add`` (per-session state, TTL expiry).

The traffic has a fixed number of keys (2 tenants, 4 services, 6 teams, 200 users,
8 models, 3 tools) and ``--live`` sessions open at any time: each session lasts about
``--session-calls`` calls and is then replaced by a new one, so session ids never stop
growing while the live set stays the same size. Event time advances at ``--rate`` calls
per second; the detector's session TTL is ``--ttl-s`` (a finished session is forgotten
that long after its last call).

Prints, every ``--every`` calls: the process RSS, the detector's retained sessions and
the aggregator's open windows. Expected: retained sessions rise for one TTL, then stay
near live + TTL x sessions ending per second; RSS stops growing with them; open windows
stay bounded by keys x (lateness / window + 1). Then it prints the RSS growth from two
TTLs on (the aggregator's call-id dedup horizon, 10 minutes, fills meanwhile too) to the
end, as a ratio.

``--short`` (CI): 100,000 calls with a 5 s TTL; checks only that sessions and windows
stay within their bounds (exit 1 otherwise), never a size in bytes or a time.

Usage: ``.venv/bin/python bench/bench_memory.py [--calls N] [--live N] [--short]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa

from pipeline import callbatch, calls_ndjson
from pipeline.aggregate import AggregateConfig, PartitionAggregator
from pipeline.arrow_buffers import money_from_pico
from pipeline.detect import SessionDetector, SessionLimits
from pipeline.stream.detect_stage import decode_rows
from schemas import calls as C

RECORD = 500                              # calls per llm_calls record
T0_US = 1_767_225_600 * 10**6             # 2026-01-01T00:00:00Z
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-haiku-4-5", "gemini-2.5-pro",
          "gemini-2.5-flash", "o4-mini", "gpt-5"]
TOOLS = ["search", "fetch", "calc"]


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


class Traffic:
    """Synthetic calls with fixed keys and a constant number of live sessions."""

    def __init__(self, live: int, session_calls: int, rate: float, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.live = np.arange(live)           # session number of each live slot
        self.next_session = live
        self.end_chance = 1.0 / session_calls
        self.us_per_call = 1e6 / rate
        self.sent = 0

    def record(self) -> pa.Table:
        rng, n = self.rng, RECORD
        ids = np.arange(self.sent, self.sent + n)
        slot = rng.integers(0, len(self.live), n)
        session = self.live[slot]
        ending = np.unique(slot[rng.random(n) < self.end_chance])
        self.live[ending] = np.arange(self.next_session, self.next_session + len(ending))
        self.next_session += len(ending)
        start = (T0_US + ids * self.us_per_call).astype(np.int64)
        latency = rng.gamma(2.0, 400.0, n)
        tool = rng.random(n) < 0.3
        model = rng.integers(0, len(MODELS), n)
        inp, out = rng.integers(100, 8000, n), rng.integers(10, 800, n)
        cost = np.where(tool, 0, inp * 2_500_000 + out * 10_000_000) // 1_000_000 * 1000
        err = rng.random(n) < 0.02
        s = lambda values: pa.array(values, pa.string())  # noqa: E731
        strs = lambda fmt, k: s([fmt % x for x in rng.integers(0, k, n)])  # noqa: E731
        cols = {
            C.CALL_ID: s([f"{i:032x}" for i in ids]),
            C.KIND: s(np.where(tool, C.KIND_TOOL, C.KIND_LLM)),
            C.TENANT: s([f"tenant-{x}" for x in session % 2]),
            C.SERVICE: strs("svc-%d", 4), C.ENVIRONMENT: s(["prod"] * n),
            C.TRACE_ID: s([f"{x:032x}" for x in session]),
            C.SPAN_ID: s([f"{i:016x}" for i in ids]),
            C.SESSION_ID: s([f"session-{x}" for x in session]),
            C.TEAM: strs("team-%d", 6), C.USER_ID: strs("user-%d", 200),
            C.MODEL: s(np.where(tool, None, np.array(MODELS, object)[model])),
            C.RESPONSE_MODEL: s(np.where(tool, None, np.array(MODELS, object)[model])),
            C.TOOL_NAME: s(np.where(tool, np.array(TOOLS, object)[model % 3], None)),
            # Distinct arguments: no loop alerts (a firing session is kept until quiet).
            C.TOOL_ARGS_HASH: s(np.where(tool, [f"{i:032x}" for i in ids], None)),
            C.INPUT_TOKENS: pa.array(np.where(tool, 0, inp), mask=tool),
            C.OUTPUT_TOKENS: pa.array(np.where(tool, 0, out), mask=tool),
            C.START_TIME: pa.array(start).cast(C.TIME),
            C.END_TIME: pa.array(start + (latency * 1000).astype(np.int64)).cast(C.TIME),
            C.LATENCY_MS: pa.array(latency),
            C.STATUS: s(np.where(err, C.STATUS_ERROR, C.STATUS_OK)),
            C.ERROR_TYPE: s(np.where(err, "RateLimitError", None)),
            C.COST_USD: money_from_pico(cost, np.ones(n, bool)),
            C.LIST_COST_USD: money_from_pico(cost, np.ones(n, bool)),
            C.PRICED: pa.array(np.ones(n, bool)), C.BATCH: pa.array(np.zeros(n, bool)),
            C.CONVENTION: s(["semconv"] * n),
        }
        self.sent += n
        arrays = [cols.get(f.name, pa.nulls(n, f.type)) for f in C.CALLS]
        return pa.Table.from_arrays(arrays, schema=C.CALLS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--live", type=int, default=2_000)
    ap.add_argument("--session-calls", type=int, default=50)
    ap.add_argument("--rate", type=float, default=5_000.0, help="calls per event second")
    ap.add_argument("--ttl-s", type=float, default=600.0)
    ap.add_argument("--every", type=int, default=500_000)
    ap.add_argument("--short", action="store_true")
    a = ap.parse_args()
    if a.short:
        a.calls, a.ttl_s, a.every = 100_000, 5.0, 10_000
    traffic = Traffic(a.live, a.session_calls, a.rate)
    agg = PartitionAggregator(0, AggregateConfig())
    det = SessionDetector(SessionLimits(ttl_s=a.ttl_s))
    ttl_calls = int(a.ttl_s * a.rate)
    # Sessions ending per event second, each remembered for one TTL after its last call.
    bound = a.live + int(a.rate / a.session_calls * (a.ttl_s + 60) * 1.5)
    print(f"{a.calls:,} calls, {a.live:,} live sessions of ~{a.session_calls} calls, "
          f"{a.rate:,.0f} calls per event second, session TTL {a.ttl_s:.0f} s "
          f"({ttl_calls:,} calls); RSS at start {rss_mb():.0f} MB")
    print(f"{'calls':>12} {'RSS MB':>8} {'sessions':>9} {'windows':>8} {'calls/s':>9}")
    rows_at: list[tuple[int, float, int, int]] = []
    problems, t0 = [], time.perf_counter()
    offset = 0
    while traffic.sent < a.calls:
        table = traffic.record()
        body = b"".join(body for _, body in calls_ndjson.route(table, 1))
        ts_ms = int(table.column(C.END_TIME)[-1].value // 1000) + 1000
        agg.add(callbatch.from_ndjson(body), offset, ts_ms)
        rows, bad = decode_rows(body)
        det.add(rows, ts_ms)
        offset += 1
        if bad:
            problems.append(f"{bad} unreadable lines at offset {offset}")
        if traffic.sent % a.every == 0:
            sessions, windows = len(det.sessions), agg.open_windows()
            rows_at.append((traffic.sent, rss_mb(), sessions, windows))
            print(f"{traffic.sent:>12,} {rows_at[-1][1]:>8.0f} {sessions:>9,} "
                  f"{windows:>8,} {traffic.sent / (time.perf_counter() - t0):>9,.0f}")
            if sessions > bound:
                problems.append(f"{sessions:,} sessions retained at {traffic.sent:,} calls, "
                                f"above the bound {bound:,}")
            if windows > 20_000:
                problems.append(f"{windows:,} open windows at {traffic.sent:,} calls")
    settled = [r for r in rows_at if r[0] >= 2 * ttl_calls]
    if len(settled) >= 2:
        first, last = settled[0], settled[-1]
        print(f"after two TTLs ({first[0]:,} calls): RSS {first[1]:.0f} MB -> {last[1]:.0f} MB "
              f"at {last[0]:,} calls, ratio {last[1] / first[1]:.3f}; sessions "
              f"{first[2]:,} -> {last[2]:,}")
    for p in problems:
        print("FAILED:", p)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
