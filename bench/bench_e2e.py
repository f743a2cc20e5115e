"""End to end: spans accepted into ``otlp_spans`` -> one worker -> rows in the Parquet
lake, against a raw aiokafka consume-and-parse loop over the same records.

Generator traffic (``llmspend generate``'s plan, real OpenTelemetry SDK, several
conventions) is produced into ``otlp_spans`` by llmspend's Kafka exporter, exactly as
the receivers accept it (sanitised, split, tenant header), as a backlog: a worker is
started once so its consumer groups pin where they start, stopped, the traffic is
produced, and the worker is started again. Measures:

  (e) one ``llmspend worker`` process (stages normalise, aggregate, lake; with
      ``--all-stages`` also detect and detect_windows): calls/s from its first record
      to the last call's row in Parquet (the new files' row counts, then a DuckDB count
      of the bench's tenant), wall and per worker CPU-second;
  (r) baseline, same run: an aiokafka consumer reading the same ``otlp_spans`` records
      and ``ExportTraceServiceRequest.ParseFromString`` on each (nothing else);
  and where the worker's CPU went: each stage step's CPU (the worker's own
  ``llmspend_stage_cpu_seconds_total`` counters, pipeline/stepclock.py) over the drain,
  in us a call and as a share of the worker's CPU.

Prints both rates and the ratio (issue 11's targets: (e) >= 50 % of (r) and >= 50,000
calls per worker core). ``--short`` (CI) uses a small traffic and checks only that the
lake equals the generator's truth (calls and exact cost); it never judges a time.

Needs the broker (``llmspend up --kafka-only``). Usage:
``.venv/bin/python bench/bench_e2e.py [calls] [--short] [--all-stages] [--flush-s S]``
(``--flush-s``: the lake's flush interval, 1 s by default so that the last rows land
within a second of the drain; every flush writes a file per hive partition and source
partition, whose fixed costs the lake's ``write`` step then shows).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import clients, gc_clock, stepclock
from pipeline.analytics import connect
from pipeline.config import StreamSettings, load_settings
from pipeline.ingest.exporter import KafkaSpanExporter
from pipeline.stream import lake_stage
from pipeline.traffic.generator import generate
from pipeline.traffic.plan import Options
from schemas import lake as L
from schemas.topics import OTLP_SPANS

ROOT = Path(__file__).resolve().parent.parent
HASH_KEY = "bench-e2e-hash-key-0123456789abcdef"


def _proc(pid: int) -> tuple[float, float, int]:
    """(user CPU s, system CPU s, minor page faults) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """One `llmspend worker` process of the bench's app id, state and lake."""

    def __init__(self, state: Path, app_id: str, stages: str, flush_s: str = "1") -> None:
        self.state = state
        self.metrics_port = _free_port()
        self.env = {**os.environ, "LLMSPEND_STATE_DIR": str(state),
                    "LLMSPEND_STREAM_APP_ID": app_id, "LLMSPEND_HASH_KEY": HASH_KEY,
                    "LLMSPEND_STREAM_AUTO_OFFSET_RESET": "latest",
                    "LLMSPEND_STREAM_STAGES": stages,
                    "LLMSPEND_STREAM_METRICS_PORT": str(self.metrics_port),
                    "LLMSPEND_LAKE_FLUSH_S": flush_s, "LLMSPEND_JOBS_EVERY_S": "0"}
        self.proc: subprocess.Popen | None = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        for _ in range(50):                  # the server starts with the worker
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return r.read().decode()
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"no worker /metrics on {url}")

    def step_cpu(self) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
        """The worker's CPU seconds so far per stage step, and per thread."""
        text = self.metrics()
        return stepclock.parse(text)[0], stepclock.parse_threads(text)

    @staticmethod
    def handoffs(text: str) -> str:
        """Bodies each stage took from the normaliser, parsed again, or saw evicted, from
        a /metrics text."""
        counts: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            if line.startswith("llmspend_handoff_bodies_total{"):
                labels, _, value = line.partition("} ")
                to = labels.split('to="')[1].split('"')[0]
                outcome = labels.split('outcome="')[1].split('"')[0]
                counts.setdefault(to, {})[outcome] = value
        return "; ".join(f"to {to}: " + ", ".join(f"{v} {k}" for k, v in c.items())
                         for to, c in counts.items()) or "none"

    def start(self) -> float:
        """Start and wait until its partitions are assigned; returns when (monotonic)."""
        ready = self.state / "run" / "worker.ready"
        ready.unlink(missing_ok=True)
        log = open(self.state / "worker.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        deadline = time.monotonic() + 180
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.state / "worker.log").read_text()[-3000:])
            time.sleep(0.05)
        return time.monotonic()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


#: Trace compression of the bench's plan: about 1,500 calls per second of event time,
#: roughly the pace the exporter produces at here, so spans reach Kafka within seconds
#: of ending, as from live applications (not hours late, which would turn every call
#: into a late one for the aggregate stage).
RATE = 100.0


def produce(settings, tenant: str, n_calls: int):
    """The generator's traffic into otlp_spans through the Kafka exporter, stamped from
    now on (event time paced like the production); its truth."""
    opts = Options(seed=17, calls=n_calls, service_prefix="bench-", rate=RATE,
                   start_time_ns=time.time_ns())
    exporter = KafkaSpanExporter(settings, tenant=tenant)
    res = generate(opts, exporters={tenant: exporter}, max_rate=True)
    if res.emitted.failed:
        raise RuntimeError(f"{res.emitted.failed} spans were not produced")
    return res


class FileRows:
    """Rows landed in the tenant's call files so far, reading each new file's footer
    once: a cheap "is everything there yet?" (a DuckDB count over hundreds of small
    files every 0.2 s would take a CPU from the worker on a 2-core machine)."""

    def __init__(self, lake: Path, tenant: str) -> None:
        # The dataset and tenant levels of the lake's own partition directory.
        self.root = lake.joinpath(*Path(L.partition_dir(L.CALLS, tenant, dt.date.min,
                                                        0)).parts[:2])
        self.rows: dict[Path, int] = {}

    def total(self) -> int:
        import pyarrow.parquet as pq

        for f in self.root.rglob("*.parquet") if self.root.exists() else ():
            if f not in self.rows:
                try:
                    self.rows[f] = pq.ParquetFile(f).metadata.num_rows
                except OSError:               # removed by a job meanwhile
                    continue
        return sum(self.rows.values())


def lake_totals(lake: Path, tenant: str):
    try:
        return connect(lake).execute("SELECT count(*), sum(cost_usd) FROM calls WHERE "
                                     "tenant = ?", [tenant]).fetchone()
    except Exception:  # noqa: BLE001 - nothing landed yet
        return 0, None


def end_to_end(worker: Worker, lake: Path, tenant: str, calls: int, gc_freeze: bool
               ) -> tuple[float, float, tuple, dict[tuple[str, str], float],
                          dict[str, float]]:
    """(e): start the worker on the backlog; (wall seconds, worker CPU seconds) until the
    lake holds every call, the lake's (count, cost), and the CPU seconds of each stage
    step and of each thread meanwhile."""
    t0 = worker.start()
    proc0 = _proc(worker.proc.pid)
    cpu0 = proc0[0] + proc0[1]
    steps0, threads0 = worker.step_cpu()
    gc0 = gc_clock.parse(worker.metrics())
    deadline = t0 + 1800
    got: tuple = (0, None)
    files = FileRows(lake, tenant)
    while time.monotonic() < deadline:
        if files.total() >= calls:
            got = lake_totals(lake, tenant)   # the views' count (twins once)
            if got[0] >= calls:
                break
        time.sleep(0.2)
    wall, proc1 = time.monotonic() - t0, _proc(worker.proc.pid)
    cpu = proc1[0] + proc1[1] - cpu0
    system, faults = proc1[1] - proc0[1], proc1[2] - proc0[2]
    steps1, threads1 = worker.step_cpu()
    text = worker.metrics()
    print(f"handoff bodies (parsed again when missed): {worker.handoffs(text)}")
    flushes = _sample(text, "llmspend_lake_flushes_total", "?")
    partials = _sample(text, 'llmspend_aggregate_events_total{kind="partials_emitted"}', "0")
    gc1 = gc_clock.parse(text)
    runs = [int(b - a) for a, b in zip(gc0["collections"], gc1["collections"], strict=True)]
    gc_s = sum(gc1["seconds"]) - sum(gc0["seconds"])
    frozen = int(_sample(text, "llmspend_gc_frozen_objects", "0"))
    print(f"garbage collections (young, middle, full): {runs[0]}, {runs[1]}, {runs[2]}, "
          f"{gc_s:.3f} CPU s ({gc_s / calls * 1e6:.2f} us a call, counted in the lines "
          f"below); {frozen:,} objects frozen out of them at start")
    print(f"in the kernel (system CPU, counted in the lines below): {system:.2f} s "
          f"({system / cpu:.0%} of the worker's, {system / calls * 1e6:.2f} us a call); "
          f"minor page faults: {faults / calls:.2f} a call")
    if gc_freeze and not frozen:
        sys.exit("FAILED: the worker froze no objects (stream.gc_freeze is on)")
    print(f"lake flushes (a file per hive partition each): {flushes}; aggregate partials "
          f"emitted (one llm_agg_1m record each): {partials} ({int(partials) / calls:.3f} "
          "a call)")
    worker.stop()
    return (wall, cpu, got, {k: v - steps0.get(k, 0.0) for k, v in steps1.items()},
            {k: v - threads0.get(k, 0.0) for k, v in threads1.items()})


def _sample(text: str, series: str, missing: str) -> str:
    """The value of one series (name and labels, as written) in a /metrics text."""
    return next((line.rsplit(" ", 1)[1] for line in text.splitlines()
                 if line.rsplit(" ", 1)[0] == series), missing)


#: The thread each stage's steps run on (the others run on Faust's event loop).
STEP_THREADS = {"lake": lake_stage.THREAD_NAME}


def print_steps(steps: dict[tuple[str, str], float], threads: dict[str, float],
                cpu: float, calls: int) -> None:
    """Where the worker's CPU went during the drain, step by step, then thread by
    thread (each thread's CPU outside the steps it runs: Faust, the Kafka clients)."""
    def us(secs: float) -> str:
        return f"{secs / calls * 1e6:7.2f} us a call, {secs / cpu:6.1%}"

    print(f"where the worker's CPU went ({cpu:.2f} s, {cpu / calls * 1e6:.1f} us a call):")
    for (stage, step), secs in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"    {stage + ' ' + step:36s}: {us(secs)}")
    rest = cpu - sum(steps.values())
    print(f"    {'outside the steps':36s}: {us(rest)}, of which by thread:")
    in_steps: dict[str, float] = {}
    for (stage, _step), secs in steps.items():
        name = STEP_THREADS.get(stage, "MainThread")
        in_steps[name] = in_steps.get(name, 0.0) + secs
    for name, secs in sorted(threads.items(), key=lambda kv: -kv[1]):
        if secs - in_steps.get(name, 0.0) > 0.0005 * cpu:
            print(f"        {name:32s}: {us(secs - in_steps.get(name, 0.0))}")
    print(f"        {'threads Python does not know':32s}: "
          f"{us(max(cpu - sum(threads.values()), 0.0))}")


def check_steps(steps: dict[tuple[str, str], float], cpu: float, stages: str) -> None:
    """Short mode: every running stage clocked its steps, within the worker's CPU."""
    clocked = {stage for stage, _ in steps}
    expected = {"normalise", "aggregate", "lake"} & set(stages.split(","))
    if not expected <= clocked or not 0 < sum(steps.values()) <= cpu * 1.05:
        sys.exit(f"FAILED: stage clocks {sorted(steps)} sum to {sum(steps.values()):.3f} "
                 f"s of a worker CPU of {cpu:.3f} s")


def raw_loop(settings, start: dict, end: dict) -> tuple[float, int]:
    """(r): aiokafka, no consumer group, the same offsets; ParseFromString each record."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    async def run() -> tuple[float, int]:
        c = AIOKafkaConsumer(**clients.aiokafka_config(settings), enable_auto_commit=False,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
        await c.start()
        try:
            tps = [TopicPartition(OTLP_SPANS, p) for p in start]
            c.assign(tps)
            for tp in tps:
                c.seek(tp, start[tp.partition])
            left = {p for p in start if end[p] > start[p]}
            spans, t0 = 0, time.perf_counter()
            while left:
                batch = await c.getmany(timeout_ms=1000, max_records=10_000)
                for tp, recs in batch.items():
                    for r in recs:
                        if r.offset >= end[tp.partition]:
                            continue
                        req = ExportTraceServiceRequest()
                        req.ParseFromString(r.value)
                        spans += sum(len(ss.spans) for rs in req.resource_spans
                                     for ss in rs.scope_spans)
                        if r.offset == end[tp.partition] - 1:
                            left.discard(tp.partition)
            return time.perf_counter() - t0, spans
        finally:
            await c.stop()

    return asyncio.run(run())


def main() -> None:
    short = "--short" in sys.argv
    # --all-stages: what `llmspend worker` runs by default (the detectors too).
    stages = StreamSettings().stages if "--all-stages" in sys.argv \
        else "normalise,aggregate,lake"
    args = [a for i, a in enumerate(sys.argv[1:], 1) if sys.argv[i - 1] != "--flush-s"]
    n_calls = int(next((a for a in args if a.isdigit()), 2_000 if short else 200_000))
    settings = load_settings()
    run_id = uuid.uuid4().hex[:8]
    tenant, app_id = f"bench-{run_id}", f"llmspend-bench-e2e-{run_id}"
    with tempfile.TemporaryDirectory(prefix="llmspend-bench-e2e-") as tmp:
        state = Path(tmp)
        flush_s = sys.argv[sys.argv.index("--flush-s") + 1] if "--flush-s" in sys.argv \
            else "1"
        worker = Worker(state, app_id, stages, flush_s)
        worker.start()            # the groups pin where they start ...
        worker.stop()             # ... so the backlog below waits for the next start
        start = {tp.partition: o for tp, o in clients.end_offsets(settings,
                                                                  OTLP_SPANS).items()}
        t = time.perf_counter()
        res = produce(settings, tenant, n_calls)
        end = {tp.partition: o for tp, o in clients.end_offsets(settings,
                                                                OTLP_SPANS).items()}
        truth = res.truth
        records = sum(end[p] - start[p] for p in start)
        print(f"traffic: {truth.calls:,} calls ({truth.spans_emitted:,} spans) in {records:,} "
              f"otlp_spans records, produced in {time.perf_counter() - t:.0f} s "
              f"(batches compressed: {settings.kafka.compression})")
        wall, cpu, (n, cost), steps, threads = end_to_end(
            worker, state / "data", tenant, truth.calls, settings.stream.gc_freeze)
        if (n, cost) != (truth.calls, truth.list_cost_usd):
            sys.exit(f"FAILED: the lake holds {n} calls costing {cost} USD; the truth is "
                     f"{truth.calls} calls costing {truth.list_cost_usd} USD")
        print(f"lake   : {n:,} calls, {cost} USD, equal to the truth")
        raw_s, raw_spans = raw_loop(settings, start, end)
        if raw_spans < truth.spans_emitted:
            sys.exit(f"FAILED: the raw loop read {raw_spans} spans of {truth.spans_emitted}")
        check_steps(steps, cpu, stages)
        if short:
            print("short mode: correctness only, no figures")
            return
        e, r = truth.calls / wall, truth.calls / raw_s
        print(f"(e) one worker, otlp_spans -> Parquet: {e:10,.0f} calls/s wall, "
              f"{truth.calls / cpu:,.0f} calls per worker CPU-second (target >= 50,000)")
        print(f"(r) raw aiokafka + ParseFromString   : {r:10,.0f} calls/s "
              f"({raw_spans / raw_s:,.0f} spans/s)")
        print(f"ratio (e)/(r): {e / r:.3f} (target >= 0.5)")
        print_steps(steps, threads, cpu, truth.calls)


if __name__ == "__main__":
    main()
