"""The lake jobs' invariants on a lake of generated traffic landed in many small files:
what the views answer never changes under compaction and rollups, interrupted runs
leave a valid lake, second runs change nothing, erasure leaves no row of the user,
reprice changes exactly the affected calls and aggregates."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pyarrow.compute as pc
import pytest

from jobs import journal, run_scheduled
from jobs.compact import compact
from jobs.erase import erase, erasure_log, log_subject, pseudonym
from jobs.partitions import partitions, read
from jobs.reprice import reprice
from jobs.retention import retention
from jobs.rollup import rollup
from pipeline import pricing
from pipeline.analytics import connect
from pipeline.config import load_settings
from pipeline.lake_fs import LocalFS
from pipeline.traffic.offline import corrected_catalog, land_lake, llm_calls_records
from pipeline.traffic.plan import Options
from schemas import lake as L

KEY = "jobs-test-key-0123456789abcdef"
START = dt.datetime(2026, 11, 10, 23, 40, tzinfo=dt.UTC)   # spans midnight: two days
LATER = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)           # every partition closed
TWINS = 5


def _settings(**env: str):
    return load_settings(env={"LLMSPEND_HASH_KEY": KEY, **env})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Forty minutes of traffic around midnight, landed 40 records per flush (so each
    partition has many files), with a few client-retry twins of calls records."""
    opts = Options(seed=7, calls=2500, rate=0.15, start_time_ns=int(START.timestamp()) * 10**9,
                   tenants=("acme", "globex"), scenarios=("runaway-loop",))
    calls = llm_calls_records(opts, _settings(), 4)
    step = len(calls) // TWINS            # a few records sent twice (a client retry)
    calls = [r for i, rec in enumerate(calls) for r in ([rec, rec] if i % step == 0 else [rec])]
    d = tmp_path_factory.mktemp("lake")
    land_lake(d, calls, 4, flush_records=40)
    return d


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    d = tmp_path / "lake"
    shutil.copytree(pristine, d)
    return d


def answers(d: Path) -> dict:
    """What the views say: the facts no job may change."""
    con = connect(d)
    q = {
        "calls": "SELECT count(*), count(DISTINCT call_id), sum(cost_usd), "
                 "sum(list_cost_usd), sum(input_tokens) FROM calls",
        "by_model": "SELECT model, count(*), sum(cost_usd) FROM calls GROUP BY ALL ORDER BY ALL",
        "agg": "SELECT view, sum(calls), sum(cost_usd), sum(errors), sum(fallbacks), "
               "sum(unpriced_calls), count(*) FROM agg_1m GROUP BY view ORDER BY view",
        "p95": "SELECT model, llmspend_p95(llmspend_sketch_merge(flatten(list(latency_buckets))))"
               " FROM agg_1m WHERE view = 'group' GROUP BY model ORDER BY model",
        "alerts": "SELECT count(*), count(DISTINCT dedup_key) FROM alerts",
        "events": "SELECT count(*) FROM alert_events",
    }
    return {k: con.execute(v).fetchall() for k, v in q.items()}


def files(d: Path, dataset: str) -> dict[str, str]:
    fs = LocalFS(d)
    return {f: fs.version(f) for f in fs.list(dataset, ".parquet")}


# ------------------------------------------------------------------ compaction


def test_compaction_merges_closed_partitions_and_the_views_answer_the_same(data):
    before = answers(data)
    n_before = {ds: len(files(data, ds)) for ds in L.DATASETS}
    res = compact(LocalFS(data), LATER, 3600, 2)
    assert res.partitions > 0 and res.files_in > res.files_out
    assert res.twins_dropped >= TWINS
    fs = LocalFS(data)
    for ds in L.DATASETS.values():
        parts = partitions(fs, ds)
        assert all(len(p.files) == 1 for p in parts), ds.name
        assert len(files(data, ds.name)) < n_before[ds.name] or n_before[ds.name] == len(parts)
    assert answers(data) == before
    # Each call is in the compacted files once: no twin left to dedup.
    calls = read(fs, L.CALLS, [f for p in partitions(fs, L.CALLS) for f in p.files])
    assert pc.count_distinct(calls.column("call_id")).as_py() == calls.num_rows


def test_a_second_compaction_changes_nothing(data):
    fs = LocalFS(data)
    compact(fs, LATER, 3600, 2)
    snapshot = {ds: files(data, ds) for ds in L.DATASETS}
    again = compact(fs, LATER, 3600, 2)
    assert again.partitions == 0
    assert {ds: files(data, ds) for ds in L.DATASETS} == snapshot


def test_open_partitions_are_not_compacted(data):
    res = compact(LocalFS(data), START + dt.timedelta(minutes=30), 3600, 2)
    assert res.partitions == 0


def test_a_compaction_whose_file_does_not_verify_leaves_the_partition(data, monkeypatch):
    from jobs import compact as compact_mod

    before = files(data, "calls")
    real = compact_mod.summary
    calls_seen = {"n": 0}

    def lying_summary(ds, table):
        out = real(ds, table)
        calls_seen["n"] += 1
        if calls_seen["n"] % 3 == 0:     # the read-back of the new file
            out["rows"] += 1
        return out
    monkeypatch.setattr(compact_mod, "summary", lying_summary)
    res = compact(LocalFS(data), LATER, 3600, 2, (L.CALLS,))
    assert res.skipped and res.partitions == 0
    assert files(data, "calls") == before
    assert not list(LocalFS(data).list("calls", ".tmp"))


@pytest.mark.parametrize("step", ["temps", "journal", "rename", "remove"])
def test_a_compaction_interrupted_at_any_step_leaves_a_valid_lake(data, step):
    """With the default grace the merged files stay (no "remove" step to crash at);
    with none they go in the swap itself."""
    before = answers(data)
    env = {**os.environ, "LLMSPEND_DATA_DIR": str(data), "LLMSPEND_HASH_KEY": KEY,
           "LLMSPEND_TEST_JOBS_KILL_AT": f"{step}:2", "LLMSPEND_JOBS_CLOSED_AFTER_S": "60",
           "LLMSPEND_JOBS_REPLACED_FILES_GRACE_S": "0" if step == "remove" else "600"}
    p = subprocess.run([sys.executable, "-m", "pipeline", "jobs", "compact"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 137, p.stderr
    assert answers(data) == before                 # views see the same through the crash
    del env["LLMSPEND_TEST_JOBS_KILL_AT"]
    p = subprocess.run([sys.executable, "-m", "pipeline", "jobs", "compact"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert answers(data) == before
    fs = LocalFS(data)
    assert not [f for ds in L.DATASETS for f in fs.list(ds, ".tmp")]
    assert all(len(p.files) == 1 for ds in L.DATASETS.values() for p in partitions(fs, ds))
    journal.recover(fs, force=True)           # the merged files kept for readers go
    assert not list(fs.list(L.JOBS_DIR, ".json"))
    assert answers(data) == before
    assert all(len(p.files) == 1 for ds in L.DATASETS.values() for p in partitions(fs, ds))
    assert sum(len(files(data, ds)) for ds in L.DATASETS) == \
        sum(len(p.files) for ds in L.DATASETS.values() for p in partitions(fs, ds))


def test_recovery_finishes_a_committed_swap_and_drops_an_uncommitted_one(data):
    fs = LocalFS(data)
    part = next(p for p in partitions(fs, L.CALLS) if len(p.files) > 2)
    table = read(fs, L.CALLS, part.files[:2])

    class Crash(Exception):
        pass

    def crash_at(step):
        def hook(s):
            if s == step:
                raise Crash
        return hook
    swap = journal.Swap("compact", {f"{part.rel_dir}/compact-x.parquet": table},
                        list(part.files[:2]))
    with pytest.raises(Crash):
        journal.apply(fs, swap, hook=crash_at("temps"))
    assert not fs.exists(f"{part.rel_dir}/compact-x.parquet.compact.tmp")   # cleaned
    swap2 = journal.Swap("compact", {f"{part.rel_dir}/compact-y.parquet": table},
                         list(part.files[:2]))
    with pytest.raises(Crash):
        journal.apply(fs, swap2, hook=crash_at("rename"))
    assert journal.recover(fs) == 1
    after = partitions(fs, L.CALLS)
    now_files = next(p for p in after if p.rel_dir == part.rel_dir).files
    assert f"{part.rel_dir}/compact-y.parquet" in now_files
    assert not set(part.files[:2]) & set(now_files)


def test_merged_files_stay_readable_for_the_grace_and_go_at_the_first_run_after(data):
    """A query lists its files before it opens them: compaction keeps the files it
    merged for jobs.replaced_files_grace_s, the views drop the twins meanwhile, and no
    job reads them again."""
    fs = LocalFS(data)
    before = answers(data)
    listed = sorted(fs.list("calls", ".parquet"))       # a query's glob, before the swap
    t0 = time.time()
    res = compact(fs, LATER, 3600, 2, grace_s=600)
    t1 = time.time()            # each swap's files are due 600 s after that swap
    assert res.partitions > 0
    for rel in listed:                                   # ... and its reads, after it
        assert fs.read_parquet(rel).num_rows > 0
    assert answers(data) == before
    kept = journal.pending_removals(fs)
    assert kept and kept <= set(listed) | {f for ds in L.DATASETS for f in files(data, ds)}
    assert all(len(p.files) == 1 for ds in L.DATASETS.values() for p in partitions(fs, ds))
    assert compact(fs, LATER, 3600, 2, grace_s=600).partitions == 0
    assert journal.recover(fs, now=t0 + 599) == 0 and journal.pending_removals(fs) == kept
    assert journal.recover(fs, now=t1 + 601) == 0          # due: not a crash, just done
    assert not journal.pending_removals(fs) and not list(fs.list(L.JOBS_DIR, ".json"))
    assert not any(fs.exists(rel) for rel in kept)
    assert answers(data) == before


def test_an_erasure_first_removes_the_merged_files_kept_for_readers(data):
    fs = LocalFS(data)
    user = connect(data).execute("SELECT user_id FROM calls WHERE user_id IS NOT NULL "
                                 "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
    compact(fs, LATER, 3600, 2, grace_s=600)
    kept = journal.pending_removals(fs)
    assert kept
    erase(fs, KEY.encode(), user_id=user, now=LATER)
    assert not journal.pending_removals(fs) and not any(fs.exists(rel) for rel in kept)
    assert _user_rows(data, user) == 0
    raw = connect(data).execute(
        f"SELECT count(*) FROM read_parquet('{data}/**/*.parquet', union_by_name = true) "
        "WHERE user_id = $u", {"u": user}).fetchone()[0]
    assert raw == 0


# ------------------------------------------------------------------ rollups


def test_rollups_sum_to_the_minutes_and_merge_their_sketches(data):
    res = rollup(LocalFS(data), LATER, 3600)
    assert res.days == 4 and res.rows_1h and res.rows_1d     # 2 tenants x 2 days
    con = connect(data)
    fields = "count(*) > 0, sum(calls), sum(cost_usd), sum(list_cost_usd), sum(errors), " \
             "sum(timeouts), sum(fallbacks), sum(input_tokens), sum(unpriced_calls)"
    for view in ("group", "user", "unit"):
        m = con.execute(f"SELECT {fields} FROM agg_1m WHERE view = '{view}'").fetchall()
        h = con.execute(f"SELECT {fields} FROM agg_1h WHERE view = '{view}'").fetchall()
        d = con.execute(f"SELECT {fields} FROM agg_1d WHERE view = '{view}'").fetchall()
        assert m == h == d, view
    p95 = "SELECT model, llmspend_p95(llmspend_sketch_merge(flatten(list(latency_buckets)))) " \
          "FROM {} WHERE view = 'group' GROUP BY model ORDER BY model"
    assert con.execute(p95.format("agg_1m")).fetchall() == \
        con.execute(p95.format("agg_1h")).fetchall()
    units = "SELECT tenant, use_case, unit_type, len(list_distinct(flatten(list(unit_hashes))))" \
            " FROM {} WHERE view = 'unit' GROUP BY ALL ORDER BY ALL"
    assert con.execute(units.format("agg_1m")).fetchall() == \
        con.execute(units.format("agg_1d")).fetchall()
    exact = con.execute("SELECT bool_and(units = len(unit_hashes)) FROM agg_1d "
                    "WHERE view = 'unit'").fetchone()[0]
    assert exact


def test_a_second_rollup_changes_nothing_and_a_late_file_redoes_its_day(data):
    fs = LocalFS(data)
    rollup(fs, LATER, 3600)
    snapshot = {ds: files(data, ds) for ds in L.ROLLUPS}
    again = rollup(fs, LATER, 3600)
    assert again.days == 0 and again.unchanged == 4
    assert {ds: files(data, ds) for ds in L.ROLLUPS} == snapshot
    compact(fs, LATER, 3600, 2, (L.AGG_1M,))       # rewrites every day's files
    assert rollup(fs, LATER, 3600).days == 4


# ------------------------------------------------------------------ retention


def test_retention_dry_run_lists_and_the_real_run_deletes_only_expired_partitions(data):
    fs = LocalFS(data)
    rollup(fs, LATER, 3600)
    s = _settings(LLMSPEND_JOBS_CALLS_DAYS="30",
                  LLMSPEND_JOBS_CALLS_DAYS_BY_TENANT='{"acme": 10}',
                  LLMSPEND_JOBS_AGG_1M_DAYS="10").jobs
    today = dt.date(2026, 11, 20)          # acme keeps 11-11.. (10 days): 11-10 goes
    before = {ds: files(data, ds) for ds in L.ALL_DATASETS}
    dry = retention(fs, today, s, dry_run=True)
    assert {ds: files(data, ds) for ds in L.ALL_DATASETS} == before
    gone = {(e.dataset, e.tenant, e.day.isoformat()) for e in dry.expired}
    assert ("calls", "acme", "2026-11-10") in gone
    assert ("calls", "acme", "2026-11-11") not in gone
    assert not any(e.dataset == "calls" and e.tenant == "globex" for e in dry.expired)
    assert ("agg_1m", "globex", "2026-11-10") in gone
    assert not any(e.dataset in ("agg_1h", "agg_1d") for e in dry.expired)
    real = retention(fs, today, s)
    assert [(e.dataset, e.rel_dir) for e in real.expired] == \
        [(e.dataset, e.rel_dir) for e in dry.expired]
    con = connect(data)
    assert con.execute("SELECT count(*) FROM calls WHERE tenant = 'acme' "
                   "AND dt = '2026-11-10'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM calls WHERE tenant = 'acme'").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM agg_1d WHERE dt = '2026-11-10'").fetchone()[0] > 0
    assert not (data / "calls" / "tenant=acme" / "dt=2026-11-10").exists()
    assert retention(fs, today, s).expired == []


def test_retention_keeps_minutes_that_are_not_rolled_up(data):
    s = _settings(LLMSPEND_JOBS_AGG_1M_DAYS="1").jobs
    res = retention(LocalFS(data), dt.date(2026, 11, 20), s)
    assert res.kept_not_rolled_up and not any(e.dataset == "agg_1m" for e in res.expired)


# ------------------------------------------------------------------ erasure


def _user_rows(d: Path, user: str) -> int:
    con = connect(d)
    n = 0
    for ds in ("calls", "agg_1m_partials", "agg_1h", "agg_1d"):
        n += con.execute(f"SELECT count(*) FROM {ds} WHERE user_id = $u", {"u": user}
                     ).fetchone()[0]
    n += con.execute("SELECT count(*) FROM alert_events WHERE subject = $u "
                 "OR contains(evidence::VARCHAR, '\"' || $u || '\"')",
                 {"u": user}).fetchone()[0]
    return n


def test_erasure_leaves_no_row_of_the_user_anywhere_and_logs_without_the_id(data):
    fs = LocalFS(data)
    rollup(fs, LATER, 3600)
    con = connect(data)
    user, n_calls = con.execute("SELECT user_id, count(*) FROM calls WHERE user_id IS NOT NULL "
                            "GROUP BY 1 ORDER BY 2 DESC LIMIT 1").fetchone()
    others = con.execute("SELECT count(*) FROM calls WHERE user_id IS DISTINCT FROM $u",
                     {"u": user}).fetchone()[0]
    assert _user_rows(data, user) > n_calls
    res = erase(fs, KEY.encode(), user_id=user, now=LATER)
    assert res.rows["calls"] >= n_calls and res.rows["agg_1m"] > 0 and res.rows["agg_1d"] > 0
    assert _user_rows(data, user) == 0
    raw = connect(data).execute(
        f"SELECT count(*) FROM read_parquet('{data}/**/*.parquet', union_by_name = true) "
        "WHERE user_id = $u", {"u": user}).fetchone()[0]
    assert raw == 0
    assert connect(data).execute("SELECT count(*) FROM calls").fetchone()[0] == others
    log = erasure_log(fs)
    assert len(log) == 1 and log[0]["rows_total"] == res.total
    text = (data / L.ERASURE_LOG).read_text()
    assert user not in text and pseudonym(KEY.encode(), user) not in text
    assert log[0]["subject"] == log_subject(KEY.encode(), pseudonym(KEY.encode(), user))
    again = erase(fs, KEY.encode(), user_id=user, now=LATER)
    assert again.total == 0 and erasure_log(fs)[1]["subject"] == log[0]["subject"]


def test_erasure_finds_pseudonymised_users_by_their_clear_id(tmp_path):
    s = _settings(LLMSPEND_PRIVACY_PSEUDONYMISE_USERS="true")
    opts = Options(seed=3, calls=400, start_time_ns=int(START.timestamp()) * 10**9)
    calls = llm_calls_records(opts, s, 2)
    fs = LocalFS(tmp_path)
    land_lake(tmp_path, calls, 2, ("calls", "agg_1m"))
    con = connect(tmp_path)
    stored = {r[0] for r in con.execute("SELECT DISTINCT user_id FROM calls").fetchall()} - {None}
    plain = {json.loads(line)["user_id"] for _p, _t, body in
             llm_calls_records(opts, _settings(), 2) for line in body.splitlines()}
    clear = sorted(u for u in plain if u and pseudonym(KEY.encode(), u) in stored)[0]
    assert clear not in stored
    res = erase(fs, KEY.encode(), user_id=clear)
    assert res.rows["calls"] > 0
    assert _user_rows(tmp_path, pseudonym(KEY.encode(), clear)) == 0


# ------------------------------------------------------------------ reprice


def test_reprice_changes_exactly_the_affected_calls_and_aggregates(data, tmp_path):
    fs = LocalFS(data)
    rollup(fs, LATER, 3600)
    con = connect(data)
    model = con.execute("SELECT model FROM calls WHERE priced AND kind = 'llm' AND model IS NOT "
                    "NULL GROUP BY model ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
    catalog_path = corrected_catalog(tmp_path / "catalog.toml", model)
    assert pricing.load_catalog(catalog_path).entries != pricing.load_catalog().entries
    before_calls = {r[0]: r[1:] for r in con.execute(
        "SELECT call_id, cost_usd, list_cost_usd, model, input_tokens, cached_input_tokens, "
        "cache_write_tokens FROM calls").fetchall()}
    before_agg = dict(((r[0], r[1]), r[2:]) for r in con.execute(
        "SELECT view, model, sum(cost_usd), sum(calls) FROM agg_1m GROUP BY ALL").fetchall())
    s = _settings(LLMSPEND_PRICING_CATALOG=str(catalog_path))
    res = reprice(fs, s, dt.date(2026, 11, 10), dt.date(2026, 11, 12), now=LATER)
    assert res.calls_changed > 0 and res.key_changed == 0 and res.aggregates_missing == 0
    con = connect(data)
    after = {r[0]: r[1:] for r in con.execute(
        "SELECT call_id, cost_usd, list_cost_usd FROM calls").fetchall()}
    changed = {c for c in after if after[c][:2] != before_calls[c][:2]}
    expect = {c for c, r in before_calls.items()
              if r[2] == model and (r[3] or 0) > (r[4] or 0) + (r[5] or 0)}
    assert changed == expect == res.changed_call_ids
    delta = sum((after[c][0] - before_calls[c][0] for c in changed), Decimal(0))
    assert delta == res.cost_delta_usd > 0
    # Aggregates: the repriced model's group rows moved by exactly the calls' change,
    # every other model's did not; calls counts never moved; rollups follow.
    agg = dict(((r[0], r[1]), r[2:]) for r in con.execute(
        "SELECT view, model, sum(cost_usd), sum(calls) FROM agg_1m GROUP BY ALL").fetchall())
    for k, (cost, n) in before_agg.items():
        assert agg[k][1] == n
        if k == ("group", model):
            assert agg[k][0] == cost + delta
        elif k[0] == "group":
            assert agg[k][0] == cost, k
    total = "SELECT sum(cost_usd) FROM {} WHERE view = 'user'"
    assert con.execute(total.format("agg_1m")).fetchone() == con.execute(total.format("agg_1d")
                                                                 ).fetchone()
    by_minute = con.execute(
        "SELECT time_bucket(INTERVAL 1 minute, start_time), sum(cost_usd) FROM calls "
        "WHERE coalesce(model, response_model, request_model) = $m GROUP BY 1 ORDER BY 1",
        {"m": model}).fetchall()
    assert by_minute == con.execute(
        "SELECT window_start, sum(cost_usd) FROM agg_1m WHERE view = 'group' AND model = $m "
        "GROUP BY 1 ORDER BY 1", {"m": model}).fetchall()
    again = reprice(fs, s, dt.date(2026, 11, 10), dt.date(2026, 11, 12), now=LATER)
    assert again.calls_changed == 0 and again.files == 0


def test_reprice_dry_run_reports_and_changes_nothing(data, tmp_path):
    model = connect(data).execute("SELECT model FROM calls WHERE priced AND kind = 'llm' AND "
                              "model IS NOT NULL LIMIT 1").fetchone()[0]
    s = _settings(LLMSPEND_PRICING_CATALOG=str(corrected_catalog(tmp_path / "catalog.toml", model)))
    before = files(data, "calls")
    res = reprice(LocalFS(data), s, dt.date(2026, 11, 10), dt.date(2026, 11, 12),
                  dry_run=True)
    assert res.calls_changed > 0 and files(data, "calls") == before


# ------------------------------------------------------------------ schedule


def test_the_scheduled_run_compacts_rolls_up_and_applies_retention(data):
    before = answers(data)
    s = _settings(LLMSPEND_DATA_DIR=str(data))
    res = run_scheduled(s, now=LATER)
    assert res.compact.partitions > 0 and res.rollup.days == 4
    assert answers(data) == before
    again = run_scheduled(s, now=LATER)
    assert again.compact.partitions == 0 and again.rollup.days == 0


def test_the_cli_runs_the_jobs_and_prints_json(data):
    env = {**os.environ, "LLMSPEND_DATA_DIR": str(data), "LLMSPEND_HASH_KEY": KEY,
           "LLMSPEND_JOBS_CLOSED_AFTER_S": "60", "LLMSPEND_JOBS_CALLS_DAYS": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "jobs", *args], env=env,
                              capture_output=True, text=True, timeout=300)
    dry = cli("retention", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert listed["dry_run"] and {e["dataset"] for e in listed["expired"]} == {"calls"}
    run = cli("run", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["compact"]["partitions"] > 0 and out["rollup"]["days"] == 4
    assert len(out["retention"]["expired"]) == len(listed["expired"])
    bad = cli("erase")
    assert bad.returncode == 2 and "exactly one of --user and --pseudonym" in bad.stderr
    bad = cli("reprice", "--since", "2026-11-12", "--until", "2026-11-10")
    assert bad.returncode == 2 and "--until must be after --since" in bad.stderr
