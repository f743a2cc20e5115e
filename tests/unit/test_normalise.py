"""The normaliser: calls, bad input, privacy, hashes, the NDJSON codec and partitioning."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import time
from decimal import Decimal

import pytest
from kafka.partitioner.default import murmur2

from pipeline import normalise as N
from pipeline import otlp, pricing, privacy
from pipeline.config import PricingSettings, PrivacySettings, Settings
from schemas import SCHEMAS_DIR
from schemas import calls as C
from tests.unit.test_conventions import KEY, T0, batch, one, request, run

pytestmark = pytest.mark.usefixtures("columnar_agrees")

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500}
GPT4O_COST = Decimal("0.007500000000")  # 1000*2.50 + 500*10 per million


def chat(**changes) -> dict:
    attrs = {**CHAT, **changes}
    return {"attrs": {k: v for k, v in attrs.items() if v is not None}}


def flags(row: dict) -> set[str]:
    return set((row["issues"] or "").split(",")) - {""}


# ------------------------------------------------------------------ rows and ids


def test_call_row_has_every_column_and_a_stable_tenant_scoped_id() -> None:
    res = run(batch(chat()))
    assert res.calls.schema == C.CALLS
    row = res.calls.to_pylist()[0]
    assert row["cost_usd"] == row["list_cost_usd"] == GPT4O_COST
    assert row["trace_id"] == "01" * 16 and row["span_id"] == "0000000000000001"
    assert row["session_id"] == row["trace_id"] and row["parent_span_id"] is None
    assert row["start_time"] == dt.datetime(2025, 10, 20, 12, 0, tzinfo=dt.UTC)
    assert row["latency_ms"] == 1500.0 and row["status"] == "ok"
    again = run(batch(chat())).calls.to_pylist()[0]
    other_tenant = run(batch(chat(), tenant="globex")).calls.to_pylist()[0]
    assert again["call_id"] == row["call_id"] != other_tenant["call_id"]
    assert res.stats == {"spans_seen": 1, "llm_calls": 1}


def test_tool_spans_cost_zero_and_are_priced() -> None:
    row = one({"attrs": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "sql",
                         "gen_ai.tool.call.arguments": '{"q": 1}'}})
    assert row["kind"] == "tool" and row["priced"] is True
    assert row["cost_usd"] == Decimal("0E-12") and row["tool_args_hash"] is not None


def test_agent_spans_are_not_calls_but_name_their_descendants() -> None:
    root, step, call = b"\x00" * 7 + b"\x01", b"\x00" * 7 + b"\x02", b"\x00" * 7 + b"\x03"
    res = run(batch(
        {"span": root, "name": "invoke_agent Planner",
         "attrs": {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "a-1",
                   "gen_ai.usage.input_tokens": 99999, "gen_ai.request.model": "gpt-4o"}},
        {"span": step, "parent": root, "attrs": {"gen_ai.operation.name": "invoke_workflow"}},
        {"span": call, "parent": step, **chat()},
        {"span": b"\x00" * 7 + b"\x04", "attrs": {"http.method": "GET"}}))
    rows = res.calls.to_pylist()
    assert len(rows) == 1 and (rows[0]["agent"], rows[0]["agent_id"]) == ("Planner", "a-1")
    assert rows[0]["cost_usd"] == GPT4O_COST
    assert res.stats["agent_spans_skipped"] == res.stats["chain_spans_skipped"] == 1
    assert res.stats["other_spans_skipped"] == 1


def test_parent_cycles_do_not_hang() -> None:
    a, b = b"\x00" * 7 + b"\x01", b"\x00" * 7 + b"\x02"
    res = run(batch({"span": a, "parent": b, **chat()}, {"span": b, "parent": a, **chat()}))
    assert res.calls.num_rows == 2


def test_errors_from_status_or_error_type() -> None:
    by_status = one({**chat(), "status": 2, "status_message": "rate limited"})
    assert (by_status["status"], by_status["error_type"]) == ("error", "rate limited")
    by_attr = one(chat(**{"error.type": "timeout"}))
    assert (by_attr["status"], by_attr["error_type"]) == ("error", "timeout")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("value, flag", [(-5, "negative_tokens"), ("12.5", "non_integer_tokens"),
                                         (12.5, "non_integer_tokens"),
                                         ("lots", "non_integer_tokens"),
                                         (True, "non_integer_tokens")])
def test_bad_token_counts_are_nulled_and_flagged(value, flag) -> None:
    res = run(batch(chat(**{"gen_ai.usage.input_tokens": value})))
    row = res.calls.to_pylist()[0]
    assert row["input_tokens"] is None and flag in flags(row)
    assert row["cost_usd"] == Decimal("0.005000000000")   # output only: 500*10
    assert res.stats[flag] == 1


def test_integral_floats_and_digit_strings_are_token_counts() -> None:
    row = one(chat(**{"gen_ai.usage.input_tokens": 1000.0,
                      "gen_ai.usage.output_tokens": "500"}))
    assert (row["input_tokens"], row["output_tokens"], row["issues"]) == (1000, 500, None)


def test_cached_tokens_above_input_are_clamped() -> None:
    res = run(batch(chat(**{"gen_ai.usage.cache_read.input_tokens": 1500})))
    row = res.calls.to_pylist()[0]
    assert row["cached_input_tokens"] == 1000 and "cached_above_input" in flags(row)
    assert row["cost_usd"] == Decimal("0.006250000000")   # 1000*1.25 + 500*10
    assert res.stats["cached_above_input"] == 1


def test_reasoning_above_output_is_clamped() -> None:
    row = one(chat(**{"gen_ai.usage.reasoning.output_tokens": 900}))
    assert row["reasoning_tokens"] == 500 and "reasoning_above_output" in flags(row)


def test_missing_model_and_missing_usage_are_kept_unpriced() -> None:
    res = run(batch(chat(**{"gen_ai.request.model": None}),
                    chat(**{"gen_ai.usage.input_tokens": None,
                            "gen_ai.usage.output_tokens": None})))
    a, b = res.calls.to_pylist()
    assert a["priced"] is False and a["cost_usd"] is None and "missing_model" in flags(a)
    assert b["priced"] is False and b["cost_usd"] is None and "no_usage" in flags(b)
    assert res.stats["unpriced"] == 2 and res.stats["missing_model"] == 1


def test_unknown_model_is_unpriced_never_zero() -> None:
    row = one(chat(**{"gen_ai.request.model": "brand-new-model"}))
    assert (row["priced"], row["cost_usd"], row["list_cost_usd"], row["model"]) == (
        False, None, None, None)
    assert "model_not_in_catalog" in flags(row)


def test_unknown_provider_is_priced_by_model_alone() -> None:
    res = run(batch(chat(**{"gen_ai.provider.name": None}),
                    chat(**{"gen_ai.provider.name": "acme-cloud"})))
    for row in res.calls.to_pylist():
        assert row["cost_usd"] == GPT4O_COST and "unknown_provider" in flags(row)
    assert res.stats["unknown_provider"] == 2


def test_times_missing_end_end_before_start_absurd_latency_and_clock_skew() -> None:
    res = run(batch({**chat(), "span": b"\x00" * 7 + b"\x01", "end": 0},
                    {**chat(), "span": b"\x00" * 7 + b"\x02", "end": T0 - 1},
                    {**chat(), "span": b"\x00" * 7 + b"\x03", "end": T0 + 7200 * 10**9},
                    {**chat(), "span": b"\x00" * 7 + b"\x04", "start": T0 + 86400 * 10**9,
                     "end": T0 + 86401 * 10**9}))
    missing, backwards, absurd, future = res.calls.to_pylist()
    assert missing["end_time"] is None and missing["latency_ms"] is None
    assert "missing_end_time" in flags(missing)
    assert backwards["latency_ms"] is None and "end_before_start" in flags(backwards)
    assert absurd["latency_ms"] == 7_200_000.0 and "absurd_latency" in flags(absurd)
    assert "clock_skew_future" in flags(future) and future["latency_ms"] == 1000.0
    for key in ("missing_end_time", "end_before_start", "absurd_latency",
                "clock_skew_future"):
        assert res.stats[key] == 1


def test_duplicate_spans_keep_one_row() -> None:
    twin = {**chat(), "span": b"\x00" * 7 + b"\x09"}
    res = run(batch(twin, twin))
    assert res.calls.num_rows == 1 and res.stats["duplicate_spans"] == 1


def test_bad_ttft_app_cost_and_sampling_are_nulled() -> None:
    row = one({**chat(**{"gen_ai.response.time_to_first_chunk": -1.0,
                         "gen_ai.usage.cost": "n/a"}), "trace_state": "ot=th:zz"})
    assert row["ttft_ms"] is None and row["app_reported_cost_usd"] is None
    assert row["sampling_ratio"] is None
    assert {"bad_ttft", "bad_app_cost", "bad_sampling"} <= flags(row)


@pytest.mark.parametrize("cost, kept", [(1e17, Decimal("100000000000000000.000000000000")),
                                        (1e20, None), (-2.5, Decimal("-2.500000000000"))])
def test_huge_app_reported_costs_are_kept_or_flagged_never_fail_the_batch(cost, kept) -> None:
    res = run(batch(chat(**{"gen_ai.usage.cost": cost}), chat()))
    rows = res.calls.to_pylist()
    assert len(rows) == 2 and rows[0]["app_reported_cost_usd"] == kept
    assert ("bad_app_cost" in flags(rows[0])) == (kept is None)


def test_every_flag_is_a_documented_stats_key() -> None:
    res = run(batch({**chat(**{"gen_ai.usage.input_tokens": -1,
                               "gen_ai.provider.name": "zz"}), "end": 0}))
    for key in res.stats:
        assert key in N.STATS, key


# ------------------------------------------------------------------ sampling, attribution


@pytest.mark.parametrize("state, attrs, ratio", [
    ("ot=th:8", {}, 0.5), ("ot=th:c;rv:abcdef01234567", {}, 0.25), ("ot=th:0", {}, 1.0),
    ("vendor=x,ot=th:fd70a4", {}, 0.01), ("", {"SampleRate": 10}, 0.1),
    ("", {"sampling.ratio": 0.25}, 0.25), ("", {}, None)])
def test_sampling_ratio(state, attrs, ratio) -> None:
    row = one({**chat(**attrs), "trace_state": state})
    assert row["sampling_ratio"] == pytest.approx(ratio, rel=1e-6) if ratio else \
        row["sampling_ratio"] is None


def test_attribution_span_first_then_resource_and_pseudonymised_users() -> None:
    spec = chat(**{"team": "search", "user.id": "alice@example.com"})
    res = {"service.name": "bot", "team.name": "platform", "llmspend.use_case": "faq",
           "deployment.environment.name": "prod", "llmspend.unit_type": "ticket",
           "llmspend.unit_id": "T-1"}
    row = one(spec, resource=res)
    assert (row["team"], row["use_case"], row["environment"], row["service"]) == (
        "search", "faq", "prod", "bot")
    assert (row["unit_type"], row["unit_id"], row["user_id"]) == ("ticket", "T-1",
                                                                 "alice@example.com")
    hidden = one(spec, resource=res, settings=Settings(
        privacy=PrivacySettings(pseudonymise_users=True)))
    assert hidden["user_id"] == privacy.keyed_hash(KEY, "alice@example.com")


def test_settings_overrides_and_aliases_reach_the_row() -> None:
    s = Settings(pricing=PricingSettings(aliases={"my-deploy": "gpt-4o"},
                                         overrides={"acme": {"discount": "0.20"}}))
    row = one(chat(**{"gen_ai.request.model": "my-deploy", "gen_ai.provider.name":
                      "azure.ai.openai", "llmspend.batch": True,
                      "llmspend.web_search_calls": 2}), settings=s, tenant="acme")
    # batch: 0.0075 * 0.5 + 2 web searches * 0.025 = 0.05375 list; tenant pays 80 %
    assert row["list_cost_usd"] == Decimal("0.053750000000")
    assert row["cost_usd"] == Decimal("0.043000000000")
    assert row["batch"] is True and row["price_version"] == "openai/gpt-4o@2024-08-06"
    assert "provider_fallback" in flags(row)


# ------------------------------------------------------------------ privacy and hashes

SECRET = "my card number is 4111 1111 1111 1111"
CONTENT = {"gen_ai.input.messages": json.dumps([
    {"role": "user", "parts": [{"type": "text", "content": SECRET}]}]),
    "gen_ai.output.messages": json.dumps([
        {"role": "assistant", "parts": [{"type": "text", "content": "noted"}]}])}


def test_content_never_reaches_the_calls_table() -> None:
    res = run(batch(chat(**CONTENT), {"attrs": {
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o",
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": SECRET, "input.value": SECRET,
        "output.value": SECRET}}))
    text = b"".join(N.calls_to_ndjson(res.calls)).decode()
    assert SECRET not in text and "4111" not in text
    assert all(r["prompt_hash"] for r in res.calls.to_pylist())


def test_content_kept_only_for_opted_in_tenants() -> None:
    s = Settings(privacy=PrivacySettings(keep_content_tenants="acme"))
    kept = one(chat(**CONTENT), settings=s, tenant="acme")
    assert SECRET in kept["input_messages"] and "noted" in kept["output_messages"]
    other = one(chat(**CONTENT), settings=s, tenant="globex")
    assert other["input_messages"] is None and other["output_messages"] is None


@pytest.mark.parametrize("spec", [
    chat(**CONTENT),
    chat(**{"gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "be brief",
            "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": SECRET}),
    {"attrs": {"openinference.span.kind": "TOOL", "tool.name": "t",
               "input.value": '{"b": 2, "a": [1, "x"]}'}},
    {"attrs": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t",
               "gen_ai.tool.call.arguments": '{"city": "Paris", "days": [1, 2]}'}},
    {"attrs": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t",
               "gen_ai.tool.call.arguments": ["an", "array", "value"]}},
    {**chat(), "events": [("gen_ai.user.message", {"content": SECRET}),
                          ("gen_ai.choice", {"index": 0})]},
    {**chat(), "events": [("gen_ai.content.prompt", {"gen_ai.prompt": SECRET})]},
])
def test_hashes_equal_on_ingest_and_collector_paths(spec) -> None:
    """Ingest hashes then drops content; the collector path brings it raw. Same hashes."""
    raw = request(spec)
    scrubbed = copy.deepcopy(raw)
    otlp.sanitise_request(scrubbed, hash_key=KEY)
    collector = run(otlp.request_to_batch(raw)).calls.to_pylist()[0]
    ingest = run(otlp.request_to_batch(scrubbed)).calls.to_pylist()[0]
    keys = ("prompt_hash", "last_message_hash", "tool_args_hash")
    assert [collector[k] for k in keys] == [ingest[k] for k in keys]
    assert any(collector[k] for k in keys)


# ------------------------------------------------------------------ NDJSON, schema, keys


def test_ndjson_round_trip_is_exact_and_well_formed() -> None:
    s = Settings(privacy=PrivacySettings(keep_content_tenants="default"))
    res = run(batch(chat(**{"gen_ai.usage.cost": 0.0075, **CONTENT}),
                    {**chat(**{"gen_ai.request.model": "nope"}), "span": b"\x00" * 7 + b"\x07",
                     "end": 0, "parent": b"\x00" * 7 + b"\x01", "start": T0 + 123_456_789},
                    {"attrs": {"gen_ai.operation.name": "execute_tool"},
                     "span": b"\x00" * 7 + b"\x08"}), s)
    lines = N.calls_to_ndjson(res.calls)
    assert len(lines) == 3 and all(b"\n" not in line for line in lines)
    first = json.loads(lines[0])
    assert first["cost_usd"] == "0.007500000000" and first["start_time"].endswith("Z")
    assert first["app_reported_cost_usd"] == "0.007500000000"
    tool = json.loads(lines[2])
    assert tool["cost_usd"] == "0.000000000000"        # no exponent (Decimal 0E-12)
    back = N.ndjson_to_calls(lines)
    assert back.equals(res.calls)
    assert N.ndjson_to_calls([b"\n".join(lines) + b"\n"]).equals(res.calls)
    assert N.ndjson_to_calls([]).num_rows == 0
    with pytest.raises(ValueError):
        N.ndjson_to_calls([b'{"call_id": "x"}'])


def test_ndjson_lines_match_the_json_schema() -> None:
    schema = json.loads((SCHEMAS_DIR / "llm_calls.schema.json").read_text())
    assert (SCHEMAS_DIR / "llm_calls.schema.json").read_text() == C.json_schema_text()
    line = json.loads(N.calls_to_ndjson(run(batch(chat())).calls)[0])
    assert set(line) == set(schema["properties"]) == set(schema["required"])
    for name, prop in schema["properties"].items():
        if line[name] is not None and "pattern" in prop:
            assert re.fullmatch(prop["pattern"].strip("^$"), line[name]), name


def test_empty_batch_gives_an_empty_table() -> None:
    res = run(batch({"attrs": {"http.method": "GET"}}))
    assert res.calls.num_rows == 0 and res.calls.schema == C.CALLS
    assert N.calls_to_ndjson(res.calls) == []


# Kafka's own vectors: Java UtilsTest.testMurmur2 and kafka-python's partitioner test.
@pytest.mark.parametrize("key, java", [
    (b"21", -973932308), (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), (b"abc", 479470107)])
def test_murmur2_matches_kafka(key, java) -> None:
    assert murmur2(key) == java & 0xFFFFFFFF        # kafka-python returns it unsigned
    assert N.murmur2_partition(key, 1 << 31) == java & 0x7FFFFFFF


@pytest.mark.parametrize("key, partition", [(b"", 681), (b"a", 524), (b"ab", 434),
                                            (b"abc", 107), (b"123456789", 566),
                                            (b"\x00 ", 742)])
def test_partition_matches_the_java_client(key, partition) -> None:
    assert N.murmur2_partition(key, 1000) == partition


def test_partition_key() -> None:
    assert N.partition_key("acme", "s-1") == b"acme|s-1"
    assert N.partition_key("é", "x") == "é|x".encode()


def test_now_defaults_to_the_clock() -> None:
    """Without ``now`` the wall clock is the reference: a span from 2025 is no skew."""
    res = N.normalise(batch(chat()), Settings(), pricing.load_catalog(), KEY)
    assert res.calls.column("issues").to_pylist() == [None]
    future = batch({**chat(), "start": time.time_ns() + 3600 * 10**9, "end": 0})
    issues = N.normalise(future, Settings(), pricing.load_catalog(), KEY).calls
    assert "clock_skew_future" in issues.column("issues").to_pylist()[0]
