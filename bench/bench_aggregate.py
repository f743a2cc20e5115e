"""Aggregate stage throughput and P50/P95/P99 accuracy on generator traffic.

Traffic: ``llmspend generate``'s plan (arrivals and tokens replayed from the Azure LLM
inference traces, latencies from the documented model) emitted through the real
OpenTelemetry SDK into memory, decoded, normalised and priced by the real normaliser,
and routed into ``llm_calls`` records exactly as the normalise stage writes them; each
record is stamped just after its calls ended (a live pipeline).

Measures, on one core:

  (k) the pure kernel: ``callbatch.from_ndjson`` + ``PartitionAggregator.add``;
  (s) the state the fold touches: distinct sessions and (view, window, key)s per call,
      within each record and across the run (per partition);
  (q) quantile accuracy: P50/P95/P99 per model and overall from the merged partials vs
      the exact lower nearest rank of the calls' latencies;
  (e) end to end through Kafka and Faust: one ``llmspend worker`` (aggregate stage)
      reading the records from the broker, rate from its /metrics;
  (b) baseline, same run: a plain Faust agent that only counts events, fed one call per
      record (what a per-event design would process).

Needs the broker (``llmspend up --kafka-only``). Usage:
``.venv/bin/python bench/bench_aggregate.py [calls] [--no-kafka]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from itertools import repeat
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from pipeline import callbatch, sketch
from pipeline.aggregate import AggregateConfig, PartitionAggregator, merge_partials
from pipeline.config import load_settings
from pipeline.traffic.offline import llm_calls_records
from pipeline.traffic.plan import Options
from schemas import aggregates as A
from schemas import calls as C
from schemas.topics import LLM_CALLS

PARTITIONS = 6
ROOT = Path(__file__).resolve().parent.parent


def build_records(n_calls: int, settings) -> list[tuple[int, int, bytes]]:
    """(partition, record timestamp ms, NDJSON body) in the order the stage writes them."""
    opts = Options(seed=7, calls=n_calls, start_time_ns=1_764_000_000 * 10**9,
                   tenants=("acme", "globex"))
    return llm_calls_records(opts, settings, PARTITIONS)


def kernel(records, cfg: AggregateConfig):
    """(k): decode + aggregate every record on this core; returns partials and timings."""
    aggs = {p: PartitionAggregator(p, cfg) for p in range(PARTITIONS)}
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    warm = PartitionAggregator(0, cfg)  # numba compiles outside the timing
    warm.add(callbatch.from_ndjson(records[0][2]), 0, records[0][1])
    t = time.perf_counter()
    batches = [callbatch.from_ndjson(body) for _, _, body in records]
    decode_s = time.perf_counter() - t
    partials = []
    t = time.perf_counter()
    for (part, stamp, _), b in zip(records, batches, strict=True):
        partials += aggs[part].add(b, offsets[part], stamp).partials
        offsets[part] += 1
    last = max(r[1] for r in records) + 3_600_000
    for part, agg in aggs.items():  # a final heartbeat closes every window
        partials += agg.add(callbatch.CallBatch.empty(), offsets[part], last).partials
    fold_s = time.perf_counter() - t
    return partials, batches, decode_s, fold_s


def state_per_call(records, batches, window_ms: int
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """(s): per call, how many distinct sessions and (view, window, key)s its record
    holds (the fold's Python work is per call and state lookup, so this is what a
    per-record vectorisation could save), and how many the whole run holds per
    partition (how often a call opens a new window or session: what state kept across
    records could save)."""
    names = ("sessions", *A.VIEW_KEYS)
    per_record = dict.fromkeys(names, 0)
    run: dict[str, set] = {k: set() for k in names}
    n = 0
    for (part, _, _), b in zip(records, batches, strict=True):
        L, n = b.lists, n + b.n
        windows = (b.start_ms - b.start_ms % window_ms).tolist()
        keys = {"sessions": set(zip(repeat(part), L[C.TENANT], L[C.SESSION_ID]))}
        for view, cols in A.VIEW_KEYS.items():
            rows = zip(repeat(part), windows, *(L[c] for c in cols))
            if view == A.VIEW_UNIT:
                rows = (r for r, u in zip(rows, L[C.UNIT_ID], strict=False) if u)
            keys[view] = set(rows)
        for k, v in keys.items():
            per_record[k] += len(v)
            run[k] |= v
    return ({k: v / max(n, 1) for k, v in per_record.items()},
            {k: len(v) / max(n, 1) for k, v in run.items()})


def accuracy(partials, batches) -> tuple[float, list[str]]:
    """(q): max relative error of P50/P95/P99 per model and overall."""
    lat: dict[str, dict[str, float]] = {}
    for b in batches:
        for cid, model, x in zip(b.lists["call_id"], b.lists["model"], b.latency_ms,
                                 strict=True):
            if not np.isnan(x):
                lat.setdefault(model or "(tool calls)", {})[cid] = float(x)
    merged: dict[str, np.ndarray] = {}
    for (view, _, key), t in merge_partials(partials).items():
        if view == "group":
            m = key[3] or "(tool calls)"
            merged[m] = merged.get(m, 0) + t["latency"]
    lines, worst = [], 0.0
    everything = np.concatenate([np.array(list(v.values())) for v in lat.values()])
    rows = [(m, np.array(list(v.values())), merged[m]) for m, v in sorted(lat.items())]
    rows.append(("(all models)", everything, sum(merged.values())))
    for model, xs, counts in rows:
        errs = []
        for q in (0.5, 0.95, 0.99):
            exact = sketch.exact_lower_nearest_rank(xs, q)
            got = sketch.quantile(counts, q)
            errs.append(abs(got - exact) / exact)
        worst = max(worst, *errs)
        lines.append(f"    {model:28s} n={len(xs):7d}  P50/P95/P99 rel. error "
                     + " / ".join(f"{e:.4%}" for e in errs))
    return worst, lines


def _metrics(port: int) -> dict[str, float]:
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("llmspend_aggregate_events_total"):
                name = line.split('kind="', 1)[1].split('"', 1)[0]
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(settings, records, n_rows: int) -> tuple[float, float]:
    """(e): produce the records, start one worker at them, time it through /metrics."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from pipeline import clients
    from tests.integration.kafka_helpers import free_port

    start = {tp.partition: off for tp, off in clients.end_offsets(settings,
                                                                  LLM_CALLS).items()}
    prod = clients.producer(settings, linger_ms=50)
    futures = [prod.send(LLM_CALLS, body, partition=part, timestamp_ms=stamp)
               for part, stamp, body in records]
    for f in futures:
        f.get(timeout=120)
    prod.close()
    group = f"llmspend-bench-{uuid.uuid4().hex[:8]}"
    admin = clients.admin_client(settings)
    admin.alter_group_offsets(group, {TopicPartition(LLM_CALLS, p): OffsetAndMetadata(o, "",
                                                                                      -1)
                                      for p, o in start.items()})
    admin.close()
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "LLMSPEND_STATE_DIR": state, "LLMSPEND_STREAM_APP_ID": group,
               "LLMSPEND_STREAM_STAGES": "aggregate",
               "LLMSPEND_STREAM_METRICS_PORT": str(port)}
        log = open(Path(state) / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            first = cpu0 = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                try:
                    m = _metrics(port)
                except OSError:
                    time.sleep(0.2)
                    continue
                done = m.get("calls", 0) + m.get("late_calls", 0) + m.get(
                    "duplicates_dropped", 0)
                if done and first is None:
                    first, cpu0 = time.perf_counter(), _cpu_s(proc.pid)
                if done >= n_rows:
                    wall = time.perf_counter() - first
                    return n_rows / wall, n_rows / (_cpu_s(proc.pid) - cpu0)
                time.sleep(0.05)
            raise RuntimeError("the worker did not finish: "
                               + (Path(state) / "worker.log").read_text()[-2000:])
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()


def baseline(settings, records) -> float:
    """(b): one call per record through a plain counting Faust agent."""
    from kafka.admin import NewTopic

    from pipeline import clients

    topic = f"llmspend-bench-count-{uuid.uuid4().hex[:8]}"
    admin = clients.admin_client(settings)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    try:
        prod = clients.producer(settings, linger_ms=50)
        n = 0
        for part, _, body in records:
            for line in body.split(b"\n"):
                if line:
                    prod.send(topic, line, partition=part)
                    n += 1
        prod.flush(timeout=300)
        prod.close()
        with tempfile.TemporaryDirectory() as state:
            out = Path(state) / "result"
            env = {**os.environ, "BENCH_TOPIC": topic, "BENCH_N": str(n),
                   "BENCH_OUT": str(out), "BENCH_STATE": state}
            subprocess.run([sys.executable, str(ROOT / "bench" / "faust_count_baseline.py"),
                            "worker", "-l", "warn"], env=env, cwd=ROOT, timeout=900,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            first, last, count = map(float, out.read_text().split())
        return count / (last - first)
    finally:
        admin.delete_topics([topic])
        admin.close()


def main() -> None:
    n_calls = int(next((a for a in sys.argv[1:] if a.isdigit()), 100_000))
    settings = load_settings()
    t = time.perf_counter()
    records = build_records(n_calls, settings)
    n_rows = sum(body.count(b"\n") for _, _, body in records)
    mb = sum(len(b) for _, _, b in records) / 1e6
    print(f"traffic: {n_rows} calls in {len(records)} llm_calls records ({mb:.0f} MB NDJSON, "
          f"{n_rows / len(records):.0f} calls/record), built in "
          f"{time.perf_counter() - t:.0f} s")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cfg = AggregateConfig.from_settings(settings.aggregate)
    partials, batches, decode_s, fold_s = kernel(records, cfg)
    print(f"(k) pure kernel, one core      : {n_rows / (decode_s + fold_s):10,.0f} calls/s  "
          f"(from_ndjson {n_rows / decode_s:,.0f}/s, add {n_rows / fold_s:,.0f}/s; "
          f"{len(partials)} partials)")
    in_record, in_run = state_per_call(records, batches, cfg.window_ms)
    print("(s) distinct sessions and (view, window, key)s per call, within its record: "
          + ", ".join(f"{k} {v:.3f}" for k, v in in_record.items())
          + "; within the run (per partition): "
          + ", ".join(f"{k} {v:.3f}" for k, v in in_run.items()))
    worst, lines = accuracy(partials, batches)
    print(f"(q) quantile accuracy vs exact lower nearest rank: max relative error "
          f"{worst:.4%} (target <= 1%)")
    print("\n".join(lines))
    if "--no-kafka" in sys.argv:
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    wall, per_cpu = end_to_end(settings, records, n_rows)
    print(f"(e) Kafka + Faust, one worker  : {wall:10,.0f} calls/s wall, {per_cpu:,.0f} "
          f"calls per worker CPU-second (target >= 50,000)")
    base = baseline(settings, records)
    print(f"(b) plain Faust counting agent : {base:10,.0f} calls/s (one call per record)")
    print(f"ratio (e)/(b): {wall / base:.1f}x")


if __name__ == "__main__":
    main()
