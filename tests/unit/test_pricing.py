"""Every price rule against costs computed by hand (Decimal literals, USD)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from pipeline import pricing
from pipeline.pricing import CatalogError, Usage, parse_catalog, parse_overrides, quote

CATALOG = pricing.load_catalog()


def ns(y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    return int(dt.datetime(y, m, d, h, mi, s, tzinfo=dt.UTC).timestamp()) * 10**9


NOW = ns(2025, 10, 20)


def q(model, usage, provider=None, start=NOW, **kw) -> pricing.Quote:
    models = model if isinstance(model, tuple) else (model,)
    return quote(CATALOG, models, provider, usage, start, **kw)


def test_shipped_catalog_has_the_popular_models_with_sources() -> None:
    wanted = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3",
              "o4-mini", "gpt-5", "gpt-5-mini", "text-embedding-3-small",
              "text-embedding-3-large", "claude-opus-4-1", "claude-sonnet-4-5",
              "claude-haiku-4-5", "claude-3-5-haiku", "gemini-2.5-pro", "gemini-2.5-flash",
              "gemini-2.0-flash", "mistral-large", "mistral-small", "codestral",
              "llama-3.1-70b"}
    assert wanted <= {e.model for e in CATALOG.entries}
    for e in CATALOG.entries:
        assert e.source and e.as_of, e.model
        if e.provider != "self-hosted":
            assert e.source.startswith("https://"), e.model


def test_alias_patterns_resolve_dated_snapshots() -> None:
    u = Usage(input_tokens=1000, output_tokens=500)
    # gpt-4o: 1000*2.50 + 500*10 = 7500 per million
    assert q("gpt-4o-2024-08-06", u, "openai").cost == Decimal("0.007500000000")
    assert q("gpt-4o-2024-08-06", u).price_version == "openai/gpt-4o@2024-08-06"
    snap = q("claude-sonnet-4-5-20250929", u, "anthropic")
    assert snap.model == "claude-sonnet-4-5"
    assert snap.cost == Decimal("0.010500000000")  # 1000*3 + 500*15
    bedrock = q("us.anthropic.claude-sonnet-4-5-20250929-v1:0", u, "aws.bedrock")
    assert bedrock.model == "claude-sonnet-4-5" and "provider_fallback" in bedrock.issues
    assert q("models/gemini-2.5-flash", u, "google").model == "gemini-2.5-flash"


def test_settings_aliases_name_deployments() -> None:
    u = Usage(input_tokens=1000, output_tokens=500)
    got = q("prod-chat-deployment", u, "azure", aliases={"prod-chat-deployment": "gpt-4o"})
    assert got.model == "gpt-4o" and got.cost == Decimal("0.007500000000")
    assert not q("prod-chat-deployment", u, "azure").priced


def test_response_model_is_priced_before_request_model() -> None:
    u = Usage(input_tokens=1000, output_tokens=500)
    got = q(("gpt-4o-mini-2024-07-18", "gpt-4o"), u, "openai")
    assert got.model == "gpt-4o-mini"
    assert got.cost == Decimal("0.000450000000")  # 1000*0.15 + 500*0.60
    fallback = q(("my-finetune-xyz", "gpt-4o"), u, "openai")
    assert fallback.model == "gpt-4o" and "response_model_not_in_catalog" in fallback.issues


def test_effective_from_dates_choose_the_price_version() -> None:
    u = Usage(input_tokens=1000, output_tokens=1000)
    before = q("o3", u, "openai", start=ns(2025, 6, 9, 23, 59, 59))
    after = q("o3", u, "openai", start=ns(2025, 6, 10))
    assert before.cost == Decimal("0.050000000000")  # 1000*10 + 1000*40
    assert before.price_version == "openai/o3@2025-04-16"
    assert after.cost == Decimal("0.010000000000")   # 1000*2 + 1000*8
    assert after.price_version == "openai/o3@2025-06-10"
    old = q("o3", u, "openai", start=ns(2024, 1, 1))
    assert not old.priced and old.model == "o3" and "before_first_price" in old.issues


def test_cached_tokens_each_at_their_own_rate() -> None:
    u = Usage(input_tokens=10000, cache_read=8000, cache_write=1000, output_tokens=200)
    # 1000*3 + 8000*0.30 + 1000*3.75 + 200*15 = 12150
    assert q("claude-sonnet-4-5", u, "anthropic").cost == Decimal("0.012150000000")
    # OpenAI has no cache-write price: cache writes cost the input price.
    u2 = Usage(input_tokens=5000, cache_read=4096, output_tokens=400)
    assert q("gpt-4o", u2, "openai").cost == Decimal("0.011380000000")


def test_one_cached_token_is_exact_to_twelve_digits() -> None:
    cat = parse_catalog('format = 1\n[[model]]\nprovider = "x"\nmodel = "m"\nsource = "s"\n'
                        'as_of = "2025-01-01"\n[[model.price]]\neffective_from = 2025-01-01\n'
                        'input = "0.075"\ncache_read = "0.01875"\noutput = "0.30"\n')
    got = quote(cat, ("m",), "x", Usage(input_tokens=1, cache_read=1), NOW)
    assert got.cost == Decimal("0.000000018750")
    assert str(got.cost) == "1.8750E-8" and format(got.cost, "f") == "0.000000018750"


def test_reasoning_price_defaults_to_output_and_can_differ() -> None:
    text = ('format = 1\n[[model]]\nprovider = "x"\nmodel = "r"\nsource = "s"\n'
            'as_of = "2025-01-01"\n[[model.price]]\neffective_from = "2025-01-01"\n'
            'input = "1"\noutput = "4"\n%s')
    u = Usage(input_tokens=100, output_tokens=1000, reasoning=600)
    same = quote(parse_catalog(text % ""), ("r",), "x", u, NOW)
    assert same.cost == Decimal("0.004100000000")      # 100*1 + 1000*4
    dear = quote(parse_catalog(text % 'reasoning = "20"\n'), ("r",), "x", u, NOW)
    assert dear.cost == Decimal("0.013700000000")      # 100*1 + 400*4 + 600*20


def test_long_context_tier_prices_the_whole_call() -> None:
    at = Usage(input_tokens=200_000, output_tokens=1000)
    above = Usage(input_tokens=250_000, output_tokens=1000)
    assert q("claude-sonnet-4-5", at, "anthropic").cost == Decimal("0.615000000000")
    assert q("claude-sonnet-4-5", above, "anthropic").cost == Decimal("1.522500000000")
    g = Usage(input_tokens=300_000, cache_read=100_000, output_tokens=2000, reasoning=1500)
    # 200000*2.50 + 100000*0.25 + 2000*15 = 555000 per million
    assert q("gemini-2.5-pro", g, "google").cost == Decimal("0.555000000000")


def test_batch_discount_and_unknown_batch_multiplier() -> None:
    u = Usage(input_tokens=1000, output_tokens=500, batch=True)
    assert q("gpt-4o", u, "openai").cost == Decimal("0.003750000000")
    mistral = q("mistral-large", u, "mistral")
    assert mistral.cost == Decimal("0.005000000000")   # 1000*2 + 500*6, no discount
    assert "batch_discount_unknown" in mistral.issues


def test_per_request_fees() -> None:
    u = Usage(input_tokens=1000, output_tokens=100, fee_counts={"web_search": 3})
    # 1000*3 + 100*15 = 4500 per million, plus 3 * 0.01
    assert q("claude-sonnet-4-5", u, "anthropic").cost == Decimal("0.034500000000")
    odd = q("claude-sonnet-4-5", Usage(input_tokens=1, fee_counts={"code_exec": 1}))
    assert "fee_unpriced_code_exec" in odd.issues


def test_self_hosted_gpu_seconds() -> None:
    u = Usage(input_tokens=5000, output_tokens=500, latency_ns=2_500_000_000)
    got = q("meta-llama/Llama-3.1-70B-Instruct", u, "self-hosted")
    # 0.000833333333 USD/GPU-s * 2 GPUs * 2.5 s
    assert got.cost == Decimal("0.004166666665")
    no_latency = q("llama-3.1-70b", Usage(input_tokens=5), "self-hosted")
    assert not no_latency.priced and "gpu_pricing_needs_latency" in no_latency.issues


def test_tenant_discount_and_negotiated_model_prices() -> None:
    u = Usage(input_tokens=1000, output_tokens=500)
    terms = parse_overrides({"acme": {"discount": "0.20"},
                             "globex": {"models": {"gpt-4o": {"input": "2.00",
                                                              "output": "8.00"}}}})
    acme = q("gpt-4o", u, "openai", tenant="acme", overrides=terms)
    assert acme.list_cost == Decimal("0.007500000000")
    assert acme.cost == Decimal("0.006000000000")      # 0.0075 * 0.8
    globex = q("gpt-4o-2024-08-06", u, "openai", tenant="globex", overrides=terms)
    assert globex.cost == Decimal("0.006000000000")    # 1000*2 + 500*8
    assert globex.list_cost == Decimal("0.007500000000")
    other = q("gpt-4o-mini", u, "openai", tenant="globex", overrides=terms)
    assert other.cost == other.list_cost == Decimal("0.000450000000")


def test_unknown_model_is_unpriced_not_zero() -> None:
    got = q("totally-new-model", Usage(input_tokens=10, output_tokens=10), "openai")
    assert (got.priced, got.cost, got.list_cost, got.model) == (False, None, None, None)
    assert got.issues == ("model_not_in_catalog",)


@pytest.mark.parametrize("bad, message", [
    ('input = 2.5', "decimal strings"),
    ('input = 2', "decimal strings"),
    ('input = "abc"', "not a decimal"),
    ('input = "-1"', "non-negative"),
    ('input = "1"\ncache_reads = "1"', "unknown key"),
])
def test_catalog_rejects_floats_and_typos(bad: str, message: str) -> None:
    text = ('format = 1\n[[model]]\nprovider = "x"\nmodel = "m"\nsource = "s"\n'
            f'as_of = "2025-01-01"\n[[model.price]]\neffective_from = "2025-01-01"\n'
            f'output = "1"\n{bad}\n')
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text)


def test_catalog_rejects_structural_errors() -> None:
    head = 'format = 1\n[[model]]\nprovider = "x"\nmodel = "m"\nsource = "s"\n' \
           'as_of = "2025-01-01"\n'
    price = '[[model.price]]\neffective_from = "2025-01-01"\ninput = "1"\noutput = "1"\n'
    with pytest.raises(CatalogError, match="same effective_from"):
        parse_catalog(head + price + price)
    with pytest.raises(CatalogError, match="listed twice"):
        parse_catalog(head + price + head.removeprefix("format = 1\n") + price)
    with pytest.raises(CatalogError, match="format"):
        parse_catalog(head.replace("format = 1", "format = 2") + price)
    with pytest.raises(CatalogError, match="gpu_second"):
        parse_catalog(head + 'unit = "gpu_second"\n' + price)


def test_overrides_are_validated() -> None:
    with pytest.raises(CatalogError, match="decimal strings"):
        parse_overrides({"t": {"discount": 0.2}})
    with pytest.raises(CatalogError, match="between 0 and 1"):
        parse_overrides({"t": {"discount": "1.5"}})
    with pytest.raises(CatalogError, match="unknown key"):
        parse_overrides({"t": {"models": {"gpt-4o": {"inptu": "1"}}}})
