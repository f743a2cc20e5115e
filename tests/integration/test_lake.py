"""The lake end to end through the real broker: generator traffic -> ingest -> a real
worker (normalise, aggregate, lake) -> Parquet -> DuckDB views. The worker is killed
with SIGKILL in the middle of a flush (at a protocol step) and at an observed lake
offset, restarted, and the lake's calls (count, cost) equal the generator's truth and
its merged agg_1m equals the partials in llm_agg_1m; while it runs, the views never
show more rows than exist (no temporary file, no double) and never lose rows.

(The aggregates are compared with the topic, not the truth: a test worker starts at
"latest" and has no aggregate checkpoint before its first minute, so a kill that early
may lose an open window's partial upstream of the lake, which is not what is tested.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal

import pytest

from pipeline import lake
from pipeline.aggregate import merge_partials
from pipeline.analytics import connect
from pipeline.lake_fs import LocalFS
from pipeline.stream.lake_stage import KILL_AT_ENV
from pipeline.traffic.generator import Options, generate
from schemas import lake as L
from schemas.topics import LLM_AGG_1M
from tests.integration.kafka_helpers import end_offsets, read_records, receiver, worker_process

pytestmark = pytest.mark.integration
HASH_KEY = "lake-e2e-hash-key-0123456789abcdef"


def env_for(app_id: str) -> dict[str, str]:
    return {"LLMSPEND_HASH_KEY": HASH_KEY, "LLMSPEND_STREAM_APP_ID": app_id,
            "LLMSPEND_STREAM_STAGES": "normalise,aggregate,lake",
            "LLMSPEND_STREAM_SESSION_TIMEOUT_S": "10", "LLMSPEND_LAKE_FLUSH_S": "1",
            # Short windows, so every partial is out (and landed) soon after the calls.
            "LLMSPEND_AGGREGATE_WINDOW_S": "10", "LLMSPEND_AGGREGATE_ALLOWED_LATENESS_S": "5",
            "LLMSPEND_AGGREGATE_CLOSE_GRACE_S": "5", "LLMSPEND_AGGREGATE_DEDUP_HORIZON_S": "60",
            "LLMSPEND_AGGREGATE_SESSION_RULE_WINDOW_S": "30"}


class Watch:
    """Polls the calls view while the pipeline runs: its count must never go down (rows
    lost) nor past the truth (a temporary file or a double; the files themselves may
    hold twins: the normalise stage re-processes spans after a kill, and the view
    drops twins by call_id)."""

    def __init__(self, data_dir, tenant: str, truth_calls: int) -> None:
        self.data_dir, self.tenant, self.truth = data_dir, tenant, truth_calls
        self.seen: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.3):
            try:
                con = connect(self.data_dir)
                (n,) = con.execute("SELECT count(*) FROM calls WHERE tenant = ?",
                                   [self.tenant]).fetchone()
                self.seen.append(n)
            except Exception:  # noqa: BLE001 - no file yet
                continue

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def lake_totals(data_dir, tenant: str) -> tuple[int, Decimal | None, int, Decimal | None]:
    con = connect(data_dir)
    n, cost = con.execute("SELECT count(*), sum(cost_usd) FROM calls WHERE tenant = ?",
                          [tenant]).fetchone()
    agg_n, agg_cost = con.execute("SELECT sum(calls), sum(cost_usd) FROM agg_1m "
                                  "WHERE view = 'group' AND tenant = ?", [tenant]).fetchone()
    return n, cost, agg_n, agg_cost


def topic_totals(settings, start, tenant: str) -> tuple[int, Decimal]:
    """(calls, cost) of the tenant's group-view partials in llm_agg_1m since ``start``."""
    import json

    recs = read_records(settings, start, lambda _r: False, 3)
    parts = [p for p in (json.loads(r.value) for r in recs if r.value)
             if p.get("tenant") == tenant]
    tot = [t for k, t in merge_partials(parts).items() if k[0] == "group"]
    return sum(t["calls"] for t in tot), sum((t["cost_usd"] for t in tot), Decimal(0))


def wait_for(settings, start, data_dir, tenant: str, truth, timeout_s: float = 120
             ) -> tuple:
    """The lake's totals once its calls equal the truth and its agg_1m the topic."""
    deadline = time.monotonic() + timeout_s
    got: tuple = ()
    while time.monotonic() < deadline:
        got = lake_totals(data_dir, tenant)
        if got[0] == truth.calls and got[2:] == topic_totals(settings, start, tenant):
            return got
        time.sleep(2)
    return got


# Killed with its temporaries written; every other step of the protocol is killed in
# tests/unit/test_lake.py (cheaper than a worker restart per step).
@pytest.mark.parametrize("kill_at", ["temps:2"])
def test_a_worker_killed_mid_flush_restarts_and_the_lake_equals_the_truth(
        kafka_settings, tmp_path, kill_at):
    tenant = f"lake-{uuid.uuid4().hex[:8]}"
    token = f"tok-{uuid.uuid4().hex}"
    opts = Options(seed=5, calls=1500, service_prefix=f"{uuid.uuid4().hex[:6]}-")
    truth = generate(opts, dry_run=True, tenant_tokens={tenant: token}).truth
    app_id = f"llmspend-test-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    start = end_offsets(kafka_settings, LLM_AGG_1M)
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep, \
            Watch(data, tenant, truth.calls) as watch:
        with worker_process(tmp_path, {**env_for(app_id), KILL_AT_ENV: kill_at}) as proc:
            res = generate(opts, protocol="http", endpoint=ep["http"],
                           tenant_tokens={tenant: token}, max_rate=True)
            assert res.emitted.failed == 0
            assert proc.wait(timeout=120) == -signal.SIGKILL     # died in a flush
        with worker_process(tmp_path, env_for(app_id)):
            n, cost, agg_n, agg_cost = wait_for(kafka_settings, start, data, tenant, truth)
    assert (n, cost) == (truth.calls, truth.list_cost_usd)
    assert (agg_n, agg_cost) == topic_totals(kafka_settings, start, tenant)
    assert not list(LocalFS(data).list("calls", L.TMP_SUFFIX))
    assert watch.seen and max(watch.seen) <= truth.calls
    assert all(b >= a for a, b in zip(watch.seen, watch.seen[1:], strict=False)), \
        "the views lost rows they had shown"


def test_a_worker_killed_at_an_observed_lake_offset_loses_and_doubles_nothing(
        kafka_settings, tmp_path):
    tenant = f"lake-{uuid.uuid4().hex[:8]}"
    token = f"tok-{uuid.uuid4().hex}"
    # Paced (about 45 s of sending), so the kill lands while spans still arrive.
    opts = Options(seed=6, calls=3000, rate=5.0, service_prefix=f"{uuid.uuid4().hex[:6]}-")
    truth = generate(opts, dry_run=True, tenant_tokens={tenant: token}).truth
    app_id = f"llmspend-test-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    start = end_offsets(kafka_settings, LLM_AGG_1M)
    fs = LocalFS(data)
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep:
        with worker_process(tmp_path, env_for(app_id)) as proc:
            sender = threading.Thread(target=generate, args=(opts,), kwargs=dict(
                protocol="http", endpoint=ep["http"], tenant_tokens={tenant: token},
                max_rate=False))
            sender.start()
            deadline = time.monotonic() + 120
            while lake_totals(data, tenant)[0] < 300:   # observed: our calls are landing
                assert time.monotonic() < deadline, "the lake never advanced"
                time.sleep(0.05)
            observed = lake.committed(fs, L.CALLS)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            sender.join(timeout=180)
        assert lake_totals(data, tenant)[0] < truth.calls      # it really died midway
        with worker_process(tmp_path, env_for(app_id)):
            n, cost, agg_n, agg_cost = wait_for(kafka_settings, start, data, tenant, truth)
    assert all(lake.committed(fs, L.CALLS)[p] >= o for p, o in observed.items())
    assert (n, cost) == (truth.calls, truth.list_cost_usd)
    assert (agg_n, agg_cost) == topic_totals(kafka_settings, start, tenant)


def test_the_workers_scheduled_jobs_compact_while_the_sink_lands_and_lose_nothing(
        kafka_settings, tmp_path):
    """Traffic of three hours ago (closed partitions) lands while the worker runs the
    lake jobs every 2 s: compaction swaps files the sink keeps adding to, rollups
    follow, and the lake still equals the truth and the topic."""
    import datetime as dt

    from jobs import journal, run_scheduled
    from pipeline.config import load_settings

    tenant = f"jobs-{uuid.uuid4().hex[:8]}"
    token = f"tok-{uuid.uuid4().hex}"
    opts = Options(seed=8, calls=1200, rate=60.0, service_prefix=f"{uuid.uuid4().hex[:6]}-",
                   start_time_ns=(time.time_ns() // 10**9 - 3 * 3600) * 10**9)
    truth = generate(opts, dry_run=True, tenant_tokens={tenant: token}).truth
    app_id = f"llmspend-test-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    start = end_offsets(kafka_settings, LLM_AGG_1M)
    env = {**env_for(app_id), "LLMSPEND_JOBS_EVERY_S": "2", "LLMSPEND_JOBS_CLOSED_AFTER_S": "0"}
    with receiver({"LLMSPEND_HASH_KEY": HASH_KEY,
                   "LLMSPEND_INGEST_TOKENS": f"{token}={tenant}"}) as ep, \
            Watch(data, tenant, truth.calls) as watch, worker_process(tmp_path, env):
        res = generate(opts, protocol="http", endpoint=ep["http"],
                       tenant_tokens={tenant: token}, max_rate=False)
        assert res.emitted.failed == 0
        n, cost, agg_n, agg_cost = wait_for(kafka_settings, start, data, tenant, truth)
        time.sleep(5)                         # at least one more scheduled run
        log = (tmp_path / "worker.log").read_text() if (tmp_path / "worker.log").exists() \
                else ""
    assert (n, cost) == (truth.calls, truth.list_cost_usd)
    assert (agg_n, agg_cost) == topic_totals(kafka_settings, start, tenant)
    assert watch.seen and max(watch.seen) <= truth.calls
    assert all(b >= a for a, b in zip(watch.seen, watch.seen[1:], strict=False))
    fs = LocalFS(data)
    compacted = [f for f in fs.list("calls", ".parquet") if "/compact-" in f]
    assert compacted, f"the worker never compacted: {log[-2000:]}"
    settings = load_settings(env={"LLMSPEND_HASH_KEY": HASH_KEY, "LLMSPEND_DATA_DIR": str(data),
                                  "LLMSPEND_JOBS_CLOSED_AFTER_S": "0"})
    # The files the worker's compactions merged are kept for readers
    # (jobs.replaced_files_grace_s) until the first run after the grace (which may
    # merge, and keep, others: the files landed since).
    kept = journal.pending_removals(fs)
    assert kept
    run_scheduled(settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert not any(fs.exists(f) for f in kept)
    assert lake_totals(data, tenant) == (n, cost, agg_n, agg_cost)
    con = connect(data)
    rolled = con.execute("SELECT sum(calls), sum(cost_usd) FROM agg_1d WHERE view = 'group' "
                         "AND tenant = ?", [tenant]).fetchone()
    assert rolled == (agg_n, agg_cost)


def test_records_the_lake_cannot_land_go_to_lake_dlq_and_their_neighbours_land(
        kafka_settings, tmp_path):
    """A record of llm_calls or llm_agg_1m that does not decode is sent to lake.dlq,
    unchanged, with why and where from; the good records on either side land, and
    `llmspend dlq list --topic lake.dlq` shows it."""
    from pipeline import dlq
    from pipeline.clients import producer
    from pipeline.config import load_settings
    from pipeline.traffic.offline import llm_calls_records
    from schemas.topics import LAKE_DLQ, LLM_CALLS

    tenant = f"lakedlq-{uuid.uuid4().hex[:8]}"
    good = llm_calls_records(Options(seed=9, calls=30, tenants=(tenant,),
                                     start_time_ns=time.time_ns(),
                                     service_prefix=f"{uuid.uuid4().hex[:6]}-"),
                             load_settings(env={"LLMSPEND_HASH_KEY": HASH_KEY}), 1)
    lines = [line for _p, _ts, body in good for line in body.splitlines() if line]
    rows = len(lines)
    assert rows >= 4
    bodies = [b"\n".join(lines[: rows // 2]), b"\n".join(lines[rows // 2:])]
    bad_calls = b'{"call_id": "x", "cost_usd": "not money"} ' + uuid.uuid4().hex.encode()
    bad_agg = b"not json " + uuid.uuid4().hex.encode()
    app_id = f"llmspend-test-{uuid.uuid4().hex[:8]}"
    dlq_start = end_offsets(kafka_settings, LAKE_DLQ)
    env = {**env_for(app_id), "LLMSPEND_STREAM_STAGES": "normalise,lake"}
    with worker_process(tmp_path, env):
        p = producer(kafka_settings)
        # Same partition, in order: good records, the bad one, the rest.
        sent = [p.send(LLM_CALLS, b, partition=0).get(timeout=30) for b in bodies[:1]]
        bad = p.send(LLM_CALLS, bad_calls, partition=0).get(timeout=30)
        sent += [p.send(LLM_CALLS, b, partition=0).get(timeout=30) for b in bodies[1:]]
        bad_a = p.send(LLM_AGG_1M, bad_agg, key=b"agg-" + uuid.uuid4().hex.encode(),
                       partition=0).get(timeout=30)
        p.close()
        dead = read_records(kafka_settings, dlq_start, lambda rs: {
            bad_calls, bad_agg} <= {r.value for r in rs}, timeout_s=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and lake_totals(tmp_path / "data", tenant)[0] != rows:
            time.sleep(1)
        assert lake_totals(tmp_path / "data", tenant)[0] == rows
    by_value = {r.value: dict(r.headers) for r in dead}
    h = by_value[bad_calls]
    assert h[dlq.SOURCE_TOPIC_HEADER] == LLM_CALLS.encode()
    assert h[dlq.SOURCE_PARTITION_HEADER] == b"0"
    assert h[dlq.SOURCE_OFFSET_HEADER] == str(bad.offset).encode()
    assert b"does not decode" in h[dlq.ERROR_HEADER]
    h = by_value[bad_agg]
    assert h[dlq.SOURCE_TOPIC_HEADER] == LLM_AGG_1M.encode()
    assert h[dlq.SOURCE_OFFSET_HEADER] == str(bad_a.offset).encode()
    assert sum(r.value in (bad_calls, bad_agg) for r in dead) == 2   # each once

    listed = subprocess.run([sys.executable, "-m", "pipeline", "dlq", "list", "--topic",
                             LAKE_DLQ, "--limit", "1000"], capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"from {LLM_CALLS}[0]@{bad.offset}" in listed.stdout
    assert f"from {LLM_AGG_1M}[0]@{bad_a.offset}" in listed.stdout
