"""The traffic generator: determinism, exact truth, scenario signatures as the pipeline
sees them (real OTel SDK -> OTLP encoding -> ingest sanitising -> normalise)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import math
import threading
import time
import tomllib
from collections import Counter
from decimal import Decimal

import pytest
from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import otlp, pricing
from pipeline.config import load_settings
from pipeline.normalise import normalise
from pipeline.traffic import azure_trace, emit, generator, plan, truth
from pipeline.traffic.cli import generate_command
from pipeline.traffic.generator import generate
from pipeline.traffic.plan import SCENARIOS, Options, PlanError, parse_mix
from pipeline.traffic.profiles import RUNAWAY_STEPS, UNKNOWN_MODEL
from schemas import SCHEMAS_DIR

START = int(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC).timestamp()) * 10**9
KEY = b"generator-test-hash-key-0123456789"
CATALOG = pricing.load_catalog()


def _opts(**kw) -> Options:
    base = {"seed": 11, "start_time_ns": START, "calls": 400}
    return Options(**{**base, **kw})


@pytest.fixture(scope="module")
def everything():
    """One run with every scenario and two tenants, passed through the pipeline's core."""
    exporters = {"acme": InMemorySpanExporter(), "globex": InMemorySpanExporter()}
    res = generate(_opts(calls=900, scenarios=SCENARIOS), exporters=exporters)
    spans = [s for e in exporters.values() for s in e.get_finished_spans()]
    return res, spans, _normalised(exporters)


def _normalised(exporters) -> list[dict]:
    """Each tenant's spans as the pipeline gets them: OTLP, content hashed, normalised."""
    rows = []
    settings = load_settings(env={})
    for tenant, exp in exporters.items():
        req = encode_spans(exp.get_finished_spans())
        otlp.sanitise_request(req, hash_key=KEY)
        # Round-trip through bytes like the topic does.
        batch = otlp.decode_record(req.SerializeToString(),
                                   [(otlp.TENANT_HEADER, tenant.encode())])
        rows += normalise(batch, settings, CATALOG, KEY).calls.to_pylist()
    return rows


def _ns(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def _dedup(rows: list[dict]) -> list[dict]:
    return list({r["call_id"]: r for r in rows}.values())


# ------------------------------------------------------------------ the trace


def test_trace_timestamps_keep_all_seven_digits():
    assert azure_trace.parse_timestamp("2023-11-16 18:17:03.9799600") == \
        1700158623_979960000
    assert azure_trace.parse_timestamp("2023-11-16 18:17:03.0000001") - \
        azure_trace.parse_timestamp("2023-11-16 18:17:03") == 100
    with pytest.raises(azure_trace.TraceError):
        azure_trace.parse_timestamp("2023-11-16T18:17:03")


def test_shipped_trace_loads_every_row_in_time_order():
    rows = azure_trace.load()
    kinds = Counter(r.kind for r in rows)
    assert kinds == {"code": 8819, "conv": 19366}
    assert rows[0].offset_ns == rows[1].offset_ns == 0     # each file from its start
    assert all(a.offset_ns <= b.offset_ns for a, b in itertools.pairwise(rows))
    assert 3400 < rows[-1].offset_ns / 1e9 < 3600     # one hour
    assert (azure_trace.DATA_DIR / "ATTRIBUTION.md").read_text().count("Splitwise") == 1


def test_csv_parser_handles_crlf_and_no_final_newline_and_rejects_garbage():
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.9799600,48,10"
            "\r\n2023-11-16 18:17:04.0000000,31,8")
    assert [r[2:] for r in azure_trace.parse_csv(text, "code")] == [(48, 10), (31, 8)]
    with pytest.raises(azure_trace.TraceError, match=":4:"):
        azure_trace.parse_csv(text + "\r\n2023-11-16 18:17:05.0,x,1", "code")


# ------------------------------------------------------------------ determinism


def test_same_seed_same_plan_and_truth_different_seed_differs():
    a = plan.plan(_opts(scenarios=SCENARIOS))
    b = plan.plan(_opts(scenarios=SCENARIOS))
    assert a.spans == b.spans and a.events == b.events
    assert truth.compute(a, CATALOG).to_json() == truth.compute(b, CATALOG).to_json()
    c = plan.plan(_opts(seed=12, scenarios=SCENARIOS))
    assert [s.span_id for s in c.spans] != [s.span_id for s in a.spans]
    assert truth.compute(c, CATALOG).to_json() != truth.compute(a, CATALOG).to_json()


def test_scenario_order_does_not_matter():
    a = plan.plan(_opts(scenarios=("budget-burn", "runaway-loop")))
    b = plan.plan(_opts(scenarios=("runaway-loop", "budget-burn")))
    assert a.spans == b.spans


def test_same_seed_emits_identical_spans_with_the_planned_ids():
    def run():
        exp = InMemorySpanExporter()
        res = generate(_opts(calls=150), exporters={"default": exp})
        return res, exp.get_finished_spans()

    (r1, s1), (_r2, s2) = run(), run()
    key = lambda s: (s.context.trace_id, s.context.span_id,  # noqa: E731
                     s.parent.span_id if s.parent else 0, s.name, s.start_time, s.end_time,
                     s.status.status_code, dict(s.attributes))
    assert [key(s) for s in s1] == [key(s) for s in s2]
    planned = {(p.trace_id, p.span_id, p.parent_id, p.name, p.start_ns, p.end_ns)
               for p in r1.plan.spans}
    assert {k[:6] for k in map(key, s1)} == planned
    assert all(s.resource.attributes["service.name"] for s in s1)


def test_dry_run_cli_writes_the_same_truth_as_the_library(tmp_path):
    out = tmp_path / "truth.json"
    start = "2026-03-02T09:00:00Z"
    r = CliRunner().invoke(generate_command, [
        "--dry-run", "--calls", "400", "--seed", "11", "--start-time", start,
        "--scenario", "runaway-loop", "--truth", str(out)])
    assert r.exit_code == 0, r.output
    assert "calls" in r.output and "runaway-loop" in r.output and "p95" in r.output
    lib = truth.compute(plan.plan(_opts(scenarios=("runaway-loop",))), CATALOG)
    assert json.loads(out.read_text()) == json.loads(lib.to_json())
    back = truth.Truth.from_json(out.read_text())
    assert back.list_cost_usd == lib.list_cost_usd and back.calls == lib.calls


def test_cli_rejects_bad_options():
    runner = CliRunner()
    assert runner.invoke(generate_command, ["--dry-run", "--rate", "0"]).exit_code == 2
    assert runner.invoke(generate_command, ["--dry-run", "--mix", "otel=1"]).exit_code == 2
    assert runner.invoke(generate_command, ["--dry-run", "--tenant-token", "x"]).exit_code == 2
    assert runner.invoke(generate_command, ["--dry-run", "--scenario", "nope"]).exit_code == 2


def test_options_validation_and_mix_parsing():
    assert parse_mix("semconv=2, openinference=1") == (("semconv", 2.0), ("openinference", 1.0))
    for bad in (Options(rate=-1), Options(mix=(("semconv", 0.0),)), Options(calls=0),
                Options(tenants=("a", "a")), Options(scenarios=("x",))):
        with pytest.raises(PlanError):
            bad.validate()
    with pytest.raises(PlanError):
        plan.plan(Options())          # no start time


# ------------------------------------------------------------------ truth


def _hand_cost(catalog: dict, model: str, provider: str, start_ns: int, inp: int, out: int,
               cr: int, cw: int) -> Decimal | None:
    """Cost straight from the catalog TOML's per-million prices, no pricing module."""
    entry = next((m for m in catalog["model"] if m["model"] == model
                  and m["provider"] == provider), None)
    if entry is None:
        return None
    day = dt.datetime.fromtimestamp(start_ns / 1e9, dt.UTC).date()
    versions = [p for p in entry["price"]
                if dt.date.fromisoformat(str(p["effective_from"])) <= day]
    p = max(versions, key=lambda v: str(v["effective_from"]))
    assert inp <= 200_000     # no long-context tier in these samples
    price = {k: Decimal(p[k]) for k in ("input", "output")}
    price["cache_read"] = Decimal(p.get("cache_read", p["input"]))
    price["cache_write"] = Decimal(p.get("cache_write", p["input"]))
    total = ((inp - cr - cw) * price["input"] + cr * price["cache_read"]
             + cw * price["cache_write"] + out * price["output"])
    return (total / Decimal(1_000_000)).quantize(Decimal("1e-12"))


def test_truth_costs_equal_a_hand_computation_from_the_catalog():
    p = plan.plan(_opts(calls=2500))
    t = truth.compute(p, CATALOG)
    raw = tomllib.loads((SCHEMAS_DIR / "pricing" / "catalog.toml").read_text())
    priced = [s for s in p.spans if s.call and s.call.kind == "llm" and not s.call.error_type]
    kinds = {(s.call.provider, s.call.cache_read > 0, s.call.cache_write > 0) for s in priced}
    assert {k[0] for k in kinds} >= {"openai", "anthropic", "google", "mistral"}
    assert any(k[1] for k in kinds) and any(k[2] for k in kinds)   # cache reads and writes
    total = Decimal(0)
    for s in priced:
        c = s.call
        hand = _hand_cost(raw, c.model, c.provider, s.start_ns, c.input_tokens,
                          c.output_tokens, c.cache_read, c.cache_write)
        assert truth.price_call(CATALOG, s)[0] == hand, (c, hand)
        total += hand
    assert t.list_cost_usd == total
    # One call worked through completely: gpt-4o-mini at 0.15 / 0.075 / 0.60 per 1M.
    mini = next(s for s in priced if s.call.model == "gpt-4o-mini" and s.call.cache_read)
    c = mini.call
    assert truth.price_call(CATALOG, mini)[0] == (
        (c.input_tokens - c.cache_read) * Decimal("0.15") + c.cache_read * Decimal("0.075")
        + c.output_tokens * Decimal("0.60")) / 1_000_000


def test_truth_tallies_add_up_and_p95_is_nearest_rank():
    p = plan.plan(_opts(calls=600, tenants=("a", "b")))
    t = truth.compute(p, CATALOG)
    for group in (t.by_model, t.by_team, t.by_use_case, t.by_tenant, t.by_service):
        assert sum(g.calls for g in group.values()) == t.calls
        assert sum(g.list_cost_usd for g in group.values()) == t.list_cost_usd
    assert set(t.by_tenant) == {"a", "b"}
    assert t.calls == sum(1 for s in p.spans if s.call)
    assert truth.p95([5.0, 1.0, 3.0]) == 5.0
    assert truth.p95(list(range(1, 101))) == 95
    assert truth.p95(list(range(1, 21))) == 19
    lat = sorted(s.latency_ms for s in p.spans if s.call and s.call.model == "gpt-4o-mini")
    assert t.latency_p95_ms["gpt-4o-mini"] == lat[math.ceil(0.95 * len(lat)) - 1]


def test_traffic_has_the_promised_shape():
    p = plan.plan(_opts(calls=None, duration_s=900, tenants=("a", "b", "c")))
    calls = [s for s in p.spans if s.call]
    llm = [s for s in calls if s.call.kind == "llm"]
    errors = Counter(s.call.error_type for s in llm if s.call.error_type)
    assert set(errors) == {"rate_limit_exceeded", "server_error", "timeout"}
    assert 0.005 < sum(errors.values()) / len(llm) < 0.05
    assert {s.tenant for s in p.spans} == {"a", "b", "c"}
    assert len({s.service for s in p.spans}) == 7 and len({s.team for s in p.spans}) >= 6
    units = {s.attributes.get("llmspend.unit_type") for s in calls}
    assert {"ticket", "document"} <= units
    # Escalation within a session: the cheap model then the larger one, same session.
    by_session: dict[str, list[str]] = {}
    for s in llm:
        by_session.setdefault(s.session_id, []).append(s.call.model)
    assert any(m[0] == "gpt-4o-mini" and "gpt-4o" in m for m in by_session.values())
    # Retries then a fallback to another provider after repeated errors, in one trace.
    by_trace: dict[int, list] = {}
    for s in llm:
        by_trace.setdefault(s.trace_id, []).append(s.call)
    assert any(len({c.provider for c in cs}) > 1 and sum(bool(c.error_type) for c in cs) >= 3
               for cs in by_trace.values())
    # Cache reads grow with the conversation.
    growing = [m for m in (
        [s.call.cache_read for s in llm if s.session_id == sid and not s.call.error_type]
        for sid in by_session) if len(m) >= 4]
    assert any(m[-1] > m[1] > 0 for m in growing)
    # Agents: invoke_agent roots with chat and execute_tool children.
    roots = {s.span_id for s in p.spans if s.name.startswith("invoke_agent")}
    kids = Counter(s.call.kind for s in calls if s.parent_id in roots)
    assert kids["llm"] and kids["tool"]
    # Times are whole microseconds and spans stay inside their parents.
    assert all(s.start_ns % 1000 == 0 and s.end_ns % 1000 == 0 for s in p.spans)
    parent = {(s.trace_id, s.span_id): s for s in p.spans}
    for s in p.spans:
        if s.parent_id:
            up = parent[(s.trace_id, s.parent_id)]
            assert up.start_ns <= s.start_ns and s.end_ns <= up.end_ns


def test_rate_compresses_arrivals_not_latencies():
    slow = plan.plan(_opts(calls=None, duration_s=120, rate=1.0))
    fast = plan.plan(_opts(calls=None, duration_s=120, rate=60.0))
    last = lambda p: max(s.start_ns for s in p.spans if not s.parent_id) - START  # noqa: E731
    assert 110e9 < last(slow) <= 120e9 and 110e9 / 60 < last(fast) <= 120e9 / 60
    med = lambda p: sorted(s.latency_ms for s in p.spans  # noqa: E731
                           if s.call and s.call.kind == "llm")[len(p.spans) // 4]
    assert 0.7 < med(slow) / med(fast) < 1.4


# ------------------------------------------------------------------ through the pipeline


def test_pipeline_counts_and_costs_equal_the_truth(everything):
    res, spans, rows = everything
    t = res.truth
    assert len(spans) == t.spans_emitted > t.spans       # retry-storm copies were sent
    calls = _dedup(rows)
    assert len(calls) == t.calls
    assert Counter(r["kind"] for r in calls) == {"llm": t.totals.llm_calls,
                                                 "tool": t.totals.tool_calls}
    assert sum(r["list_cost_usd"] for r in calls if r["priced"]) == t.list_cost_usd
    assert sum(r["cost_usd"] for r in calls if r["priced"]) == t.list_cost_usd
    assert sum(1 for r in calls if not r["priced"]) == t.totals.unpriced_calls
    for field, group in (("team", t.by_team), ("use_case", t.by_use_case),
                         ("tenant", t.by_tenant), ("service", t.by_service)):
        got: dict[str, Decimal] = {}
        for r in calls:
            if r["priced"]:
                got[r[field]] = got.get(r[field], Decimal(0)) + r["list_cost_usd"]
        assert got == {k: v.list_cost_usd for k, v in group.items()}, field
    for col, tot in (("input_tokens", t.totals.input_tokens),
                     ("cached_input_tokens", t.totals.cached_input_tokens),
                     ("cache_write_tokens", t.totals.cache_write_tokens),
                     ("output_tokens", t.totals.output_tokens)):
        assert sum(r[col] or 0 for r in calls if r["kind"] == "llm") == tot, col
    lat: dict[str, list[float]] = {}
    for r in calls:
        if r["kind"] == "llm":
            lat.setdefault(r["request_model"], []).append(r["latency_ms"])
    assert {m: truth.p95(v) for m, v in lat.items()} == t.latency_p95_ms
    # Every span was understood: no guessed kinds, unknown providers or missing models.
    issues = Counter(i for r in calls for i in (r["issues"] or "").split(",") if i)
    assert set(issues) <= {"no_usage", "model_not_in_catalog"}, issues
    assert {r["convention"] for r in calls} == {"semconv", "openllmetry", "openinference"}


def test_runaway_signature_survives_ingest(everything):
    res, _, rows = everything
    ev = next(e for e in res.truth.scenarios if e["scenario"] == "runaway-loop")
    sig = ev["signature"]
    assert sig["repeated_tool_calls"] == sig["repeated_last_message_calls"] == RUNAWAY_STEPS
    mine = [r for r in _dedup(rows) if r["session_id"] in ev["session_ids"]
            and r["tenant"] == ev["tenant"]]
    tools = [r for r in mine if r["kind"] == "tool"]
    assert len(tools) == RUNAWAY_STEPS and {r["tool_name"] for r in tools} == {"search_kb"}
    # One argument identity repeated, whichever convention carried the tool call.
    assert len({r["tool_args_hash"] for r in tools}) == 1 and tools[0]["tool_args_hash"]
    chats = sorted((r for r in mine if r["kind"] == "llm"), key=lambda r: r["start_time"])
    last = Counter(r["last_message_hash"] for r in chats)
    assert last.most_common(1)[0][1] == RUNAWAY_STEPS
    assert len({r["prompt_hash"] for r in chats}) == len(chats)     # the prompt grows
    assert chats[-1]["input_tokens"] > chats[0]["input_tokens"]


@pytest.mark.parametrize("convention", ["semconv", "openllmetry", "openinference"])
def test_runaway_signature_in_each_convention(convention):
    exp = InMemorySpanExporter()
    res = generate(_opts(calls=60, scenarios=("runaway-loop",), mix=((convention, 1.0),)),
                   exporters={"default": exp})
    ev = res.truth.scenarios[0]
    rows = [r for r in _normalised({"default": exp}) if r["session_id"] in ev["session_ids"]]
    assert {r["convention"] for r in rows} == {convention}
    assert {r["agent"] for r in rows} == {"triage-agent"}
    tools = [r for r in rows if r["kind"] == "tool"]
    assert len(tools) == RUNAWAY_STEPS
    if convention == "semconv":
        assert len({r["tool_args_hash"] for r in tools}) == 1 and tools[0]["tool_args_hash"]
    assert Counter(r["last_message_hash"] for r in rows if r["kind"] == "llm"
                   ).most_common(1)[0][1] == RUNAWAY_STEPS


def test_other_scenario_signatures_survive_ingest(everything):
    res, spans, rows = everything
    ev = {e["scenario"]: e for e in res.truth.scenarios}
    calls = _dedup(rows)
    # unknown-model: exactly the announced calls are unpriced for that reason.
    um = ev["unknown-model"]
    bad = [r for r in calls if r["request_model"] == UNKNOWN_MODEL]
    assert len(bad) == um["signature"]["calls"] > 0
    assert all(not r["priced"] and r["tenant"] == um["tenant"] for r in bad)
    assert sum(1 for r in calls if (r["issues"] or "") == "model_not_in_catalog") == \
        res.truth.unpriced["model_not_in_catalog"] == len([r for r in bad if r["input_tokens"]])
    # retry-storm: duplicates on the wire, one row each after dedup by call_id.
    rs = ev["retry-storm"]["signature"]
    assert len(spans) - len({(s.context.trace_id, s.context.span_id) for s in spans}) == \
        rs["extra_copies"] > 0
    assert len(rows) >= len(calls)
    # bad-deploy: the service's prompts double from the deploy on.
    bd = ev["bad-deploy"]
    before = [r["input_tokens"] for r in calls if r["service"] == bd["signature"]["service"]
              and r["status"] == "ok" and _ns(r["start_time"]) < bd["start_ns"]]
    after = [r["input_tokens"] for r in calls if r["service"] == bd["signature"]["service"]
             and r["status"] == "ok" and _ns(r["start_time"]) >= bd["start_ns"]]
    assert sum(after) / len(after) > 1.6 * sum(before) / len(before)
    assert round(sum(after) / len(after), 1) == bd["signature"]["mean_input_tokens_after"]
    # budget-burn: the team's spend rate in the window is far above its usual rate.
    bb = ev["budget-burn"]
    team = bb["signature"]["team"]
    inside = sum((r["list_cost_usd"] for r in calls if r["team"] == team and r["priced"]
                  and r["tenant"] == bb["tenant"]
                  and bb["start_ns"] <= _ns(r["start_time"]) < bb["end_ns"]), Decimal(0))
    assert inside == Decimal(bb["signature"]["list_cost_usd_in_window"]) > 0
    assert bb["signature"]["ratio"] is None or bb["signature"]["ratio"] > 5


def test_every_scenario_alone_has_its_event():
    for name in SCENARIOS:
        p = plan.plan(_opts(calls=200, scenarios=(name,)))
        (e,) = p.events
        assert e.scenario == name and e.session_ids and e.start_ns <= e.end_ns
        assert e.signature


# ------------------------------------------------------------------ emission


class _Slow(SpanExporter):
    def __init__(self, fail_every: int = 0) -> None:
        self.got = 0
        self.calls = 0
        self.fail_every = fail_every
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()

    def export(self, spans):
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(0.002)
        if self.fail_every and n % self.fail_every == 0:
            return SpanExportResult.FAILURE
        self.got += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def test_backpressure_never_drops_and_counts_failures():
    p = plan.plan(_opts(calls=300))
    ok = _Slow()
    st = emit.emit(p, {"default": ok}, max_batch=16, max_pending=1)
    assert ok.got == st.exported == st.spans == len(p.spans) and st.failed == 0
    bad = _Slow(fail_every=3)
    st = emit.emit(p, {"default": bad}, max_batch=16, max_pending=1)
    assert st.failed > 0 and st.exported + st.failed == st.spans == len(p.spans)


def test_each_tenant_goes_to_its_own_exporter():
    exps = {"t1": InMemorySpanExporter(), "t2": InMemorySpanExporter()}
    res = generate(_opts(calls=200), exporters=exps)
    for tenant, e in exps.items():
        ids = {(s.context.trace_id, s.context.span_id) for s in e.get_finished_spans()}
        assert ids == {(s.trace_id, s.span_id) for s in res.plan.spans if s.tenant == tenant}
        assert ids
    with pytest.raises(ValueError, match="no exporter"):
        emit.emit(res.plan, {"t1": InMemorySpanExporter()})


def test_paced_emission_follows_event_time():
    p = plan.plan(_opts(calls=40, rate=600.0))
    slept: list[float] = []
    st = emit.emit(p, {"default": InMemorySpanExporter()}, max_rate=False,
                   sleep=lambda s: (slept.append(s), time.sleep(s)))
    assert slept and st.spans == len(p.spans)
    assert st.seconds >= (p.end_ns - p.start_ns) / 1e9 * 0.9


def test_trim_drops_the_sessions_still_running_and_their_scenario_mentions():
    p = plan.plan(_opts(calls=400, scenarios=("runaway-loop", "budget-burn")))
    cut = p.start_ns + (p.end_ns - p.start_ns) * 2 // 3
    before = {sp.session_id for sp in p.spans}
    late = {sp.session_id for sp in p.spans if sp.end_ns > cut}
    n = len(p.spans)
    t = generator.trim(p, cut)
    kept = {sp.session_id for sp in t.spans}
    assert late and kept == before - late and len(t.spans) < n
    assert all(sp.end_ns <= cut for sp in t.spans) and t.end_ns <= cut
    assert t.sessions == len(kept) and t.traces == len({sp.trace_id for sp in t.spans})
    assert all(set(e.session_ids) <= kept for e in t.events)
    tr = truth.compute(t, CATALOG)                      # the truth of what is left
    assert tr.calls == sum(1 for sp in t.spans if sp.call is not None)


def test_max_rate_without_start_time_ends_now():
    before = time.time_ns()
    res = generate(Options(seed=3, calls=50), exporters={"default": InMemorySpanExporter()})
    assert res.plan.end_ns <= time.time_ns() and res.plan.start_ns < before
    assert res.truth.end_ns == res.plan.end_ns


def test_endpoint_helpers():
    assert emit.http_endpoint("http://h:4318") == "http://h:4318/v1/traces"
    assert emit.http_endpoint("h:4318/") == "http://h:4318/v1/traces"
    assert emit.http_endpoint("https://x.io/otlp/v1/traces") == "https://x.io/otlp/v1/traces"
    with pytest.raises(ValueError):
        emit.make_exporter("carrier-pigeon")


def test_truth_json_round_trip_keeps_decimals_exact():
    t = truth.compute(plan.plan(_opts(calls=100)), CATALOG)
    d = json.loads(t.to_json())
    assert isinstance(d["totals"]["list_cost_usd"], str)
    assert Decimal(d["totals"]["list_cost_usd"]) == t.list_cost_usd
    assert truth.Truth.from_dict(d) == dataclasses.replace(t)
