"""Window detectors on a backlog: what reading partitions as fetched costs in verdicts,
and what merging them in write order (pipeline/timealign.py) costs in time.

Input: the ``llm_agg_1m`` partials of generator traffic with a bad deploy (the
``support-assistant`` service's prompts grow 4x half-way), derived offline by the real
normalise and aggregate cores, spread over 6 topic partitions by agg_id and stamped in
write order. Three ways into one :class:`pipeline.anomaly.WindowDetector`:

* (l) live: every partial in write order, in batches of 200 ms of write time: what a
  detector keeping up sees (the reference for verdicts);
* (f) as fetched: each partition's whole backlog after the other, 5,000 records a
  batch, straight into the detector (the window task before the aligner);
* (a) aligned: the same fetches through :class:`pipeline.timealign.TimeAligner`.

Prints partials per second of each (the best of 5 runs) and which spend anomalies
fired, over several partition orders for (f) and (a). Exits non-zero if (a) differs
from (l) in any order or (l) misses the bad deploy. ``--short``: 40 minutes instead of
120, one run each (CI checks the verdicts only).

    .venv/bin/python bench/bench_windows.py [minutes] [rate]
"""

from __future__ import annotations

import sys
import time

import orjson

from pipeline.anomaly import WindowDetector
from pipeline.config import load_settings
from pipeline.normalise import murmur2_partition
from pipeline.timealign import TimeAligner
from pipeline.traffic.offline import llm_agg_1m_records, llm_calls_records
from pipeline.traffic.plan import Options
from schemas import aggregates as G
from schemas import alerts as A

PARTITIONS = 6
FETCH = 5000
START_NS = 1_764_000_000 * 10**9
ORDERS = ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 3, 4, 5, 0, 1], [3, 0, 4, 1, 5, 2])


def backlog(minutes: int, rate: float) -> list[tuple[int, int, dict]]:
    """(topic partition, write time ms, partial) in write order."""
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "bench-windows-key-0123456789abcd"})
    opts = Options(seed=5, rate=rate, duration_s=minutes * 60.0, scenarios=("bad-deploy",),
                   # A fixed start: the same plan, so the same verdicts, every run.
                   start_time_ns=START_NS,
                   service_prefix="bw-")
    calls = llm_calls_records(opts, settings, PARTITIONS)
    out = []
    for i, (_src, value) in enumerate(llm_agg_1m_records(calls, PARTITIONS)):
        p = orjson.loads(value)
        # the partition Kafka's default partitioner gives the aggregate stage's key
        out.append((murmur2_partition(p[G.AGG_ID].encode(), PARTITIONS), i, p))
    return out


def best_of(runs: int, f, *args) -> tuple[set[str], float]:
    """The verdicts and the shortest time of ``runs`` runs (the machine is shared; a
    run this short is easily hit by another process or a garbage collection)."""
    results = [f(*args) for _ in range(runs)]
    assert all(r[0] == results[0][0] for r in results)
    return results[0][0], min(r[1] for r in results)


def fired(alerts: list[dict]) -> set[str]:
    return {a[A.DEDUP_KEY] for a in alerts if a[A.STATE] == A.FIRING}


def live(parts: list[tuple[int, int, dict]]) -> tuple[set[str], float]:
    det, alerts = WindowDetector(), []
    t = time.perf_counter()
    batch, until = [], 200
    for _q, ts, p in parts:
        if ts >= until:
            alerts += det.add(batch, until)
            batch, until = [], ts + 200
        batch.append(p)
    alerts += det.add(batch, until)
    alerts += det.tick(until + 10**9)
    return fired(alerts), time.perf_counter() - t


def fetched(parts: list[tuple[int, int, dict]], order: list[int], aligned: bool
            ) -> tuple[set[str], float]:
    by_q: dict[int, list[tuple[int, dict]]] = {q: [] for q in range(PARTITIONS)}
    for q, ts, p in parts:
        by_q[q].append((ts, p))
    end = parts[-1][1] + 1
    det, al, alerts, done = WindowDetector(), TimeAligner(), [], set()
    t = time.perf_counter()
    for q in order:
        rows = by_q[q]
        for i in range(0, len(rows), FETCH):
            chunk = rows[i:i + FETCH]
            if not aligned:
                alerts += det.add([p for _, p in chunk], end)
                continue
            al.offer(q, chunk)
            if i + FETCH >= len(rows):
                done.add(q)
            out, clock = al.release(end, {p: (end if p in done else None)
                                          for p in range(PARTITIONS)})
            alerts += det.add(out, clock)
    alerts += det.tick(end + 10**9)
    return fired(alerts), time.perf_counter() - t


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--short"]
    short = "--short" in sys.argv
    # 40 minutes is about the least for a verdict: 10 of warm-up, the deploy half-way.
    minutes = int(args[0]) if args else (40 if short else 120)
    rate = float(args[1]) if len(args) > 1 else 1.0
    t = time.perf_counter()
    parts = backlog(minutes, rate)
    print(f"input: {minutes} min of traffic at rate {rate} with a bad deploy -> "
          f"{len(parts)} llm_agg_1m partials over {PARTITIONS} partitions "
          f"(derived in {time.perf_counter() - t:.1f} s)")
    runs = 1 if short else 5
    ref, ref_s = best_of(runs, live, parts)
    print(f"(l) live, write order      : {len(parts) / ref_s:10,.0f} partials/s, "
          f"fired {sorted(ref)}")
    ok = any(k.startswith("spend_anomaly/") and "support-assistant" in k for k in ref)
    for order in ORDERS:
        f_keys, f_s = best_of(runs, fetched, parts, order, False)
        a_keys, a_s = best_of(runs, fetched, parts, order, True)
        ok &= a_keys == ref
        print(f"order {order}: (f) as fetched {len(parts) / f_s:10,.0f} partials/s, "
              f"{'same verdicts' if f_keys == ref else f'fired {sorted(f_keys)}'}; "
              f"(a) aligned {len(parts) / a_s:10,.0f} partials/s "
              f"({a_s / ref_s:.2f}x the time of (l)), "
              f"{'same verdicts' if a_keys == ref else f'fired {sorted(a_keys)}'}")
    print(f"aligned verdicts equal the live ones in every order, and the bad deploy "
          f"fired: {ok}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
