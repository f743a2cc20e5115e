"""The columnar normaliser equals the row-by-row reference: on random batches full of odd
values, on generator traffic through the real OpenTelemetry SDK, and (through the
``columnar_agrees`` fixture) on every batch of the normaliser's and conventions' tests."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import conventions as cv
from pipeline import normalise as N
from pipeline import normalise_columnar as NC
from pipeline import otlp, pricing, privacy
from pipeline.config import PricingSettings, PrivacySettings, Settings, load_settings
from schemas import calls as C
from tests.unit.test_conventions import CATALOG, KEY, NOW, T0, batch

REFERENCE = N.normalise


def assert_agree(spans: pa.Table, settings: Settings, catalog: pricing.Catalog = CATALOG,
                 key: bytes = KEY, now: dt.datetime | None = NOW) -> N.NormaliseResult:
    """Both normalisers on one batch: same table (column by column) and same counters."""
    want = REFERENCE(spans, settings, catalog, key, now=now)
    got = NC.normalise(spans, settings, catalog, key, now=now)
    for name in C.NAMES:
        w, g = want.calls.column(name).to_pylist(), got.calls.column(name).to_pylist()
        assert g == w, f"column {name}: columnar {g} != reference {w}"
    assert got.calls.schema == want.calls.schema
    assert +got.stats == +want.stats
    return want


# ------------------------------------------------------------------ random batches

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro", "o3", "my-deploy",
          "unknown-model", "models/gemini-2.5-flash", ""]
TOKEN_KEYS = [s.key for f in ("input_tokens", "output_tokens", "cache_read_tokens",
                              "cache_write_tokens", "reasoning_tokens", "total_tokens")
              for s in cv.FIELDS[f]]
MODEL_KEYS = [s.key for f in ("request_model", "response_model") for s in cv.FIELDS[f]]
KIND_VALUES = [v for _, v, _ in cv.KIND_MARKERS] + ["CHAT", "Agent", "rerank", ""]
STRING_KEYS = sorted({s.key for srcs in cv.FIELDS.values() for s in srcs} - set(TOKEN_KEYS)
                     - set(MODEL_KEYS) | {"team", "app.team", "user.id", "enduser.id",
                                          "use_case", "gen_ai.system", "traceloop.span.kind",
                                          "traceloop.entity.name"})
ODD_KEYS = ["gen_ai.prompt.0.content", "gen_ai.input.messages", "llmspend.web_search_calls",
            "sampling.rate", privacy.PROMPT_HASH, privacy.TOOL_ARGS_HASH, cv.BATCH_ATTRIBUTE,
            "http.method"]

tokens = st.one_of(st.integers(0, 50_000), st.integers(0, 50_000), st.integers(-5, 2**40),
                   st.floats(0, 1e4), st.sampled_from(["12", "x", ""]), st.booleans())
clean_tokens = st.one_of(st.integers(0, 50_000), st.integers(150_000, 400_000))  # tiers too
texts = st.one_of(st.sampled_from(["openai", "anthropic", "azure.ai.openai", "strands-agents",
                                   "weird", "", "a\"b\\c\n", "é"]), st.integers(0, 3))
clean_texts = st.sampled_from(["openai", "anthropic", "azure.ai.openai", "strands-agents",
                               "weird", "", "a\"b\\c\n", "é", "google", "Bedrock"])
NUMBER_KEYS = {s.key for f in ("app_reported_cost", "ttft_s") for s in cv.FIELDS[f]}
CLEAN_STRING_KEYS = sorted(set(STRING_KEYS) - NUMBER_KEYS)
CLEAN_ODD_KEYS = [privacy.PROMPT_HASH, privacy.TOOL_ARGS_HASH, "http.method"]


def _keys(field: str) -> list[str]:
    return [s.key for s in cv.FIELDS[field] if s.when is None]


@st.composite
def coherent_call(draw: Any) -> dict[str, Any]:
    """An LLM or tool call as instrumentations send them: a marker, a model, token
    counts that add up (cache within input, reasoning within output)."""
    marker = draw(st.sampled_from([m for m in cv.KIND_MARKERS if m[2] in ("llm", "tool")]))
    out: dict[str, Any] = {marker[0]: draw(st.sampled_from([marker[1], marker[1].upper()]))}
    if marker[2] == "tool":
        out[draw(st.sampled_from(_keys("tool_name")))] = draw(st.sampled_from(["search", ""]))
        return out
    out[draw(st.sampled_from(MODEL_KEYS))] = draw(st.sampled_from(MODELS[:-1]))
    inp, outp = draw(clean_tokens), draw(st.integers(0, 5_000))
    out[draw(st.sampled_from(_keys("input_tokens")))] = inp
    out[draw(st.sampled_from(_keys("output_tokens")))] = outp
    if draw(st.booleans()):
        out[draw(st.sampled_from(_keys("cache_read_tokens")))] = draw(st.integers(0, inp // 2))
    if draw(st.booleans()):
        out[draw(st.sampled_from(_keys("cache_write_tokens")))] = draw(st.integers(0, inp // 4))
    if draw(st.booleans()):
        out[draw(st.sampled_from(_keys("reasoning_tokens")))] = draw(st.integers(0, outp))
    return out


@st.composite
def attrs(draw: Any, clean: bool) -> dict[str, Any]:
    """Span attributes; ``clean`` ones keep to what the columnar path models (so the
    test compares it, not only the reference against itself), the others go wild."""
    if clean and draw(st.integers(0, 9)) < 7:
        out = draw(coherent_call())
        for k in draw(st.lists(st.sampled_from(CLEAN_STRING_KEYS), max_size=3)):
            out.setdefault(k, draw(clean_texts))
        if draw(st.booleans()):
            out[cv.BATCH_ATTRIBUTE] = draw(st.booleans())
        return out
    out = {}
    kind_key = draw(st.sampled_from([*cv.KIND_KEYS, None]))
    if kind_key:
        out[kind_key] = draw(st.sampled_from(KIND_VALUES) if clean else
                             st.one_of(st.sampled_from(KIND_VALUES), st.integers(0, 2)))
    for k in draw(st.lists(st.sampled_from(MODEL_KEYS), max_size=2)):
        out[k] = draw(st.sampled_from(MODELS) if clean else
                      st.one_of(st.sampled_from(MODELS), st.integers(0, 2)))
    for k in draw(st.lists(st.sampled_from(TOKEN_KEYS), max_size=5)):
        out[k] = draw(clean_tokens if clean else tokens)
    for k in draw(st.lists(st.sampled_from(CLEAN_STRING_KEYS if clean else STRING_KEYS),
                           max_size=4)):
        out[k] = draw(clean_texts if clean else texts)
    for k in draw(st.lists(st.sampled_from(CLEAN_ODD_KEYS if clean else ODD_KEYS),
                           max_size=2)):
        out[k] = draw(clean_texts if clean else
                      st.one_of(texts, st.booleans(), st.integers(-1, 3),
                                st.floats(allow_nan=True)))
    if clean and draw(st.booleans()):
        out[cv.BATCH_ATTRIBUTE] = draw(st.booleans())
    for k in ("gen_ai.usage.cost", "gen_ai.server.time_to_first_token"):
        if draw(st.booleans()):
            out[k] = draw(st.one_of(st.floats(0, 10), st.integers(0, 5)) if clean else
                          st.one_of(st.floats(-1, 10), st.integers(-1, 5),
                                    st.sampled_from(["0.4", "x", -0.0, 0.0, 1e300, 2**62,
                                                     float("nan"), float("inf")])))
    return out


@st.composite
def batches(draw: Any) -> tuple[pa.Table, Settings]:
    n = draw(st.integers(1, 10))
    odd_share = draw(st.sampled_from([0, 0, 1, 4]))      # in tenths
    specs = []
    for i in range(n):
        clean = draw(st.integers(0, 9)) >= odd_share
        start = draw(st.sampled_from([T0, T0 + i * 10**9] if clean else
                                     [T0, T0 + i * 10**9, 0, T0 - 10**18 // 2]))
        spec: dict[str, Any] = {
            "attrs": draw(attrs(clean)),
            "trace": draw(st.sampled_from([b"\x01" * 16, b"\x02" * 16])),
            "span": (draw(st.sampled_from([i, i, i, i if clean else 0])) + 1).to_bytes(8, "big"),
            "parent": draw(st.sampled_from([b"", (draw(st.integers(1, n))).to_bytes(8, "big")])),
            "name": draw(st.sampled_from(["chat", "invoke_agent planner", "tool"])),
            "start": start,
            "end": start + draw(st.sampled_from([1_500_000_000, 1] if clean else
                                                [1_500_000_000, -5, 4000 * 10**9, 1])),
            "status": draw(st.sampled_from([0, 1, 2])),
            "status_message": draw(st.sampled_from(["", "boom"])),
            "trace_state": "" if clean else draw(st.sampled_from(["", "ot=th:8"])),
        }
        if spec["end"] < 0:
            spec["end"] = 0
        if not clean and draw(st.booleans()):
            spec["events"] = [("gen_ai.user.message", {"content": "hi"})]
        specs.append(spec)
    resource = draw(st.sampled_from([{"service.name": "svc"}, {"service.name": "svc",
                                                               "team": "core"},
                                     {"telemetry.sdk.name": "openlit"}, {}]))
    tenant = draw(st.sampled_from(["acme", "globex"]))
    settings = Settings(
        pricing=PricingSettings(aliases={"my-deploy": "gpt-4o"},
                                overrides=draw(st.sampled_from([
                                    {}, {"acme": {"discount": "0.2"}},
                                    {"acme": {"discount": "0.333333333333333"}},
                                    {"acme": {"models": {"gpt-4o": {"input": "1.00"}}}}]))),
        privacy=PrivacySettings(keep_content_tenants=draw(st.sampled_from(["", "", "acme"])),
                                pseudonymise_users=draw(st.booleans())))
    return batch(*specs, tenant=tenant, resource=resource), settings


@given(batches())
@hsettings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_random_batches_with_odd_values_normalise_the_same(case) -> None:
    spans, settings = case
    assert_agree(spans, settings)


@given(st.lists(batches(), min_size=1, max_size=4))
@hsettings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_records_normalised_together_equal_each_record_normalised_alone(cases) -> None:
    """The stage normalises several records per call: the same trace and span ids in two
    records must neither link (ancestor agents) nor dedupe across them."""
    settings = cases[0][1]
    records = [spans for spans, _ in cases]
    want = [REFERENCE(spans, settings, CATALOG, KEY, now=NOW) for spans in records]
    got = NC.normalise(pa.concat_tables(records), settings, CATALOG, KEY, now=NOW,
                       records=[r.num_rows for r in records])
    for name in C.NAMES:
        w = [v for res in want for v in res.calls.column(name).to_pylist()]
        assert got.calls.column(name).to_pylist() == w, name
    total = sum((res.stats for res in want), Counter())
    assert +got.stats == +total


def test_an_agent_in_another_record_is_not_the_calls_agent() -> None:
    """Records are scoped even when their ids do not repeat (they would then link)."""
    trace = b"\x07" * 16
    agent = batch({"attrs": {"gen_ai.operation.name": "invoke_agent",
                             "gen_ai.agent.name": "planner"}, "trace": trace,
                   "span": (1).to_bytes(8, "big"), "name": "invoke_agent planner"})
    call = batch({"attrs": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                            "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
                            "gen_ai.usage.output_tokens": 5},
                  "trace": trace, "span": (2).to_bytes(8, "big"),
                  "parent": (1).to_bytes(8, "big"), "name": "chat"})
    both = pa.concat_tables([agent, call])
    linked = NC.normalise(both, Settings(), CATALOG, KEY, now=NOW)
    assert linked.calls.column(C.AGENT).to_pylist() == ["planner"]
    apart = NC.normalise(both, Settings(), CATALOG, KEY, now=NOW, records=[1, 1])
    assert apart.calls.column(C.AGENT).to_pylist() == [None]


def test_a_span_sent_twice_leaves_the_batch_to_the_reference(monkeypatch) -> None:
    """Repeated (trace, span) ids: the columnar path does not guess which span is the
    parent; the reference takes the batch (and its result is the columnar result)."""
    trace = b"\x09" * 16
    chat = {"attrs": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                      "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
                      "gen_ai.usage.output_tokens": 5},
            "trace": trace, "span": (2).to_bytes(8, "big"), "name": "chat"}
    spans = batch(chat, dict(chat), {**chat, "span": (3).to_bytes(8, "big")})
    calls = []
    monkeypatch.setattr(NC, "_reference", lambda *a, **k: calls.append(1) or REFERENCE(*a, **k))
    assert_agree(spans, Settings())
    assert calls, "the repeated ids went the columnar way"
    calls.clear()
    assert_agree(spans.slice(1), Settings())       # ids unique: the columnar way
    assert not calls


def test_records_must_add_up_to_the_batch() -> None:
    spans, settings = _example()
    with pytest.raises(ValueError, match="do not add up"):
        NC.normalise(spans, settings, CATALOG, KEY, now=NOW, records=[spans.num_rows + 1])


def test_random_batches_mostly_take_the_columnar_path(monkeypatch) -> None:
    """The property above compares two paths only if the columnar one is taken."""
    built = []
    real_row = N._row
    monkeypatch.setattr(N, "_row", lambda *a, **k: built.append(1) or real_row(*a, **k))
    calls = 0
    for _ in range(25):
        spans, settings = _example()
        calls += NC.normalise(spans, settings, CATALOG, KEY, now=NOW).calls.num_rows
    assert calls > 40 and len(built) < calls * 0.6, (len(built), calls)


def _example() -> tuple[pa.Table, Settings]:
    """One drawn batch (``example()`` is meant for shells: its warning is silenced)."""
    import warnings

    from hypothesis.errors import NonInteractiveExampleWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return batches().example()


# ------------------------------------------------------------------ realistic traffic


def test_generator_traffic_through_the_sdk_normalises_the_same() -> None:
    from pipeline.traffic.generator import generate
    from tests.unit.test_generate import SCENARIOS, _opts

    exporters = {"acme": InMemorySpanExporter(), "globex": InMemorySpanExporter()}
    generate(_opts(calls=600, scenarios=SCENARIOS), exporters=exporters)
    settings = load_settings(env={})
    seen = 0
    for tenant, exp in exporters.items():
        req = encode_spans(exp.get_finished_spans())
        otlp.sanitise_request(req, hash_key=KEY)
        spans = otlp.decode_record(req.SerializeToString(),
                                   [(otlp.TENANT_HEADER, tenant.encode())])
        for lo in range(0, spans.num_rows, 512):
            seen += assert_agree(spans.slice(lo, 512), settings, now=None).calls.num_rows
    assert seen > 500


def test_most_generator_calls_take_the_columnar_path(monkeypatch) -> None:
    """The fast path is the common path: the reference builds no row of generator
    traffic (errors and timeouts without usage included)."""
    from pipeline.traffic.generator import generate
    from tests.unit.test_generate import _opts

    built = []
    real_row = N._row
    monkeypatch.setattr(N, "_row", lambda *a, **k: built.append(1) or real_row(*a, **k))
    exp = InMemorySpanExporter()
    generate(_opts(calls=300), exporters={"acme": exp})
    req = encode_spans(exp.get_finished_spans())
    otlp.sanitise_request(req, hash_key=KEY)
    spans = otlp.decode_record(req.SerializeToString(), [(otlp.TENANT_HEADER, b"acme")])
    calls = NC.normalise(spans, load_settings(env={}), CATALOG, KEY).calls.num_rows
    assert calls >= 300 and not built, (len(built), calls)


def test_bench_corpus_of_four_conventions_normalises_the_same() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import bench_normalise

    rng = random.Random(5)
    for _ in range(3):
        spans = otlp.decode_record(bench_normalise.build_request(rng, 256))
        assert_agree(spans, Settings(), now=None)


# ------------------------------------------------------------------ exact money helpers


@pytest.mark.parametrize("price, want", [(Decimal("2.50"), 2_500_000),
                                         (Decimal("0.0375"), 37_500),
                                         (Decimal("0.0000001"), None),
                                         (Decimal("3"), 3_000_000)])
def test_a_per_million_price_is_whole_pico_dollars_per_token_or_refused(price, want) -> None:
    assert NC.pico(price) == want


def test_scaling_rounds_half_even_exactly_like_decimal() -> None:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 10**6, 2000)
    raw[:4] = [5, 15, 25, 35]                # ties at factor 0.1
    for factor in (Decimal("0.5"), Decimal("0.1"), Decimal("0.8"), Decimal("0.333333333333"),
                   Decimal("2"), Decimal("1"), Decimal("0.125")):
        got = NC.scale_half_even(raw, factor)
        want = [int((Decimal(int(x)) * factor).quantize(Decimal(1),
                                                         rounding="ROUND_HALF_EVEN"))
                for x in raw]
        assert got is not None and got.tolist() == want


def test_scaling_that_could_overflow_is_refused() -> None:
    assert NC.scale_half_even(np.array([2**60]), Decimal("7")) is None
    assert NC.scale_half_even(np.array([1]), Decimal("-0.5")) is None


@given(st.lists(st.tuples(st.sampled_from([e for e in CATALOG.entries
                                            if e.unit == pricing.UNIT_TOKEN]),
                          st.integers(0, 400_000), st.integers(0, 20_000),
                          st.integers(0, 100), st.integers(0, 100), st.integers(0, 100),
                          st.booleans(), st.sampled_from([None, "0.2", "0.15", "1"])),
                min_size=1, max_size=20))
def test_integer_costs_equal_the_reference_quote_without_its_self_check(calls) -> None:
    """The integer path alone (the normaliser also checks one call per group against
    the reference, which would hide a wrong formula behind the slow path)."""
    from types import SimpleNamespace

    n = len(calls)
    tok = {k: np.zeros(n, np.int64) for k in ("input", "output", "cache_read",
                                              "cache_write", "reasoning")}
    plans, plan_of, quotes = [], np.full(n, -1, np.int64), []
    for i, (entry, inp, out, cr_pct, cw_pct, rs_pct, is_batch, discount) in enumerate(
            calls):
        cr = inp * cr_pct // 200
        cw = (inp - cr) * cw_pct // 200
        rs = out * rs_pct // 100
        for k, v in zip(tok, (inp, out, cr, cw, rs), strict=True):
            tok[k][i] = v
        v = entry.versions[-1]
        term = None if discount is None else pricing.TenantOverride(Decimal(discount))
        plan = NC._plan(entry, v, is_batch, term)
        if plan is None:
            continue
        plan_of[i] = len(plans)
        plans.append(plan)
        usage = pricing.Usage(inp, out, cr, cw, rs, None, is_batch)
        quotes.append((i, pricing.quote(CATALOG, (entry.model,), entry.provider, usage,
                                        v.start_ns, tenant="t",
                                        overrides={"t": term} if term else {})))
    out_arrays = {"list": np.zeros(n, np.int64), "cost": np.zeros(n, np.int64),
                  "valid": np.zeros(n, bool)}
    NC._integer_costs(out_arrays, plans, plan_of, tok, SimpleNamespace(slow=np.zeros(n, bool)))
    for i, q in quotes:
        if q.priced and out_arrays["valid"][i]:
            assert Decimal(int(out_arrays["list"][i])).scaleb(-12) == q.list_cost
            assert Decimal(int(out_arrays["cost"][i])).scaleb(-12) == q.cost
    assert any(out_arrays["valid"][i] for i, _ in quotes) or not quotes


def test_calls_are_grouped_by_their_values_nulls_included_in_order_of_appearance() -> None:
    rows = np.array([3, 5, 8, 9, 12])
    model = pa.array([None] * 3 + ["a", "b", None, None, None, "a", "a", None, None, "b"])
    tenant = pa.array(["t"] * 13)
    groups = NC._groups(rows, [model, tenant], np.array([False, False, False, True, False]))
    assert [(key, members.tolist()) for key, members in groups] == [
        (("a", "t", False), [3, 8]), ((None, "t", False), [5]), (("a", "t", True), [9]),
        (("b", "t", False), [12])]


def test_a_key_named_twice_on_a_span_is_read_as_the_reference_reads_it(monkeypatch) -> None:
    """Protobuf allows a key twice in one attribute list; the reference keeps the last.
    Such spans (and only they) take the reference path."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i, models in enumerate([("gpt-4o", "o3"), ("o3",), ("gpt-4o-mini", "gpt-4o-mini")]):
        s = spans.add(trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8, name="chat",
                      start_time_unix_nano=T0, end_time_unix_nano=T0 + 10**9)
        s.attributes.append(KeyValue(key="gen_ai.operation.name",
                                     value=AnyValue(string_value="chat")))
        for m in models:
            s.attributes.append(KeyValue(key="gen_ai.request.model",
                                         value=AnyValue(string_value=m)))
        s.attributes.append(KeyValue(key="gen_ai.usage.input_tokens",
                                     value=AnyValue(int_value=100 * (i + 1))))
    batch_ = otlp.decode_record(req.SerializeToString())
    want = assert_agree(batch_, Settings())
    assert want.calls.column(C.MODEL).to_pylist()[:2] == ["o3", "o3"]
    built = []
    real_row = N._row
    monkeypatch.setattr(N, "_row", lambda *a, **k: built.append(a[0]) or real_row(*a, **k))
    NC.normalise(batch_, Settings(), CATALOG, KEY, now=NOW)
    assert len(built) == 2          # the first and third spans, each alone in its subset


def test_llm_calls_without_model_or_usage_are_left_unpriced_by_the_columnar_path(
        monkeypatch) -> None:
    """Errors and timeouts often end without a model or any token count: the reference
    leaves them unpriced (``missing_model``, ``no_usage``) before quoting. The columnar
    path does the same itself; only a GPU-priced model without usage (priced by its
    latency) still goes to the reference."""
    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
    spans = batch(
        {"attrs": {**chat, "gen_ai.usage.input_tokens": 10}, "status": 2},     # no model
        {"attrs": {**chat, "gen_ai.request.model": "gpt-4o"}, "status": 2},    # no usage
        {"attrs": {**chat, "gen_ai.request.model": "gpt-4o",
                   "gen_ai.usage.output_tokens": 7}},                          # priced
        {"attrs": {**chat, "gen_ai.request.model": "mystery-model"}},          # no usage
        {"attrs": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "self-hosted",
                   "gen_ai.request.model": "llama-3.1-70b"}},                  # GPU-priced
    )
    want = assert_agree(spans, Settings())
    assert want.calls.column(C.ISSUES).to_pylist()[:2] == ["missing_model", "no_usage"]
    assert want.calls.column(C.PRICED).to_pylist()[:4] == [False, False, True, False]
    assert want.calls.column(C.COST_USD).to_pylist()[:2] == [None, None]
    built = []
    real_row = N._row
    monkeypatch.setattr(N, "_row", lambda *a, **k: built.append(a[0]) or real_row(*a, **k))
    NC.normalise(spans, Settings(), CATALOG, KEY, now=NOW)
    assert len(built) == 1          # the GPU-priced call only
