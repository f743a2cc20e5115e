"""The FinOps FOCUS 1.2 export: exact totals, FOCUS rules, files, and hand-checked rows.

The lake holds real generated traffic (OTel SDK -> normaliser -> lake, as in
test_readme_sql) at fixed times: a busy morning on 2026-11-10, and the two month
boundaries (calls from 2026-10-31 23:59:55 into November, from 2026-11-30 23:59:55 into
December). On 2026-11-15 a few hand-made spans go through the same normaliser: a batch call
with web-search fees, a long-context call, a reasoning model and a GPU-second model, for a
tenant without terms (golden rows) and one with a many-decimal discount (rounding).
Tenants: acme has a 20 % discount, globex its own per-model prices.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import focus, lake, pricing
from pipeline import normalise as N
from pipeline.analytics import connect
from pipeline.config import load_settings
from pipeline.lake_fs import LocalFS
from pipeline.traffic.offline import llm_calls_records, with_offsets
from pipeline.traffic.plan import Options
from schemas import focus as F
from schemas import lake as L
from tests.unit.test_conventions import request

HASH_KEY = "focus-test-key-0123456789abcdef"
OVERRIDES = {
    "acme": {"discount": "0.20"},
    "globex": {"models": {"gpt-4o-mini": {"input": "0.1", "cache_read": "0.05",
                                          "output": "0.5"},
                          "claude-haiku-4-5": {"input": "0.9"}}},
    "initech": {"discount": "0.123456789"},
}
SETTINGS = load_settings(env={"LLMSPEND_HASH_KEY": HASH_KEY,
                              "LLMSPEND_PRICING_OVERRIDES": json.dumps(OVERRIDES)})
NOV, DEC, OCT = dt.date(2026, 11, 1), dt.date(2026, 12, 1), dt.date(2026, 10, 1)
TENANTS = ("acme", "globex", "initech")
EDGE_DAY = dt.date(2026, 11, 15)
EDGE_NS = int(dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC).timestamp()) * 10**9
PLAIN, ODD = "umbrella", "initech"       # edge spans: no terms / many-decimal discount
Q = Decimal("1E-12")


def _ns(d: dt.datetime) -> int:
    return int(d.timestamp()) * 10**9


def _edge_spans() -> list[dict]:
    res = {"llmspend.team": "research", "llmspend.use_case": "eval"}
    return [
        # gpt-4o through the batch API with two web searches.
        {"attrs": {**res, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                   "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
                   "gen_ai.usage.output_tokens": 500, "llmspend.batch": True,
                   "llmspend.web_search_calls": 2}},
        # claude-sonnet-4-5 above 200k input tokens: the whole call at the long-context tier.
        {"attrs": {**res, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                   "gen_ai.request.model": "claude-sonnet-4-5",
                   "gen_ai.usage.input_tokens": 250_000,
                   "gen_ai.usage.cache_read.input_tokens": 100_000,
                   "gen_ai.usage.cache_creation.input_tokens": 50_000,
                   "gen_ai.usage.output_tokens": 1000}},
        # o3: 2000 output tokens of which 1500 reasoning.
        {"attrs": {**res, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                   "gen_ai.request.model": "o3", "gen_ai.usage.input_tokens": 1000,
                   "gen_ai.usage.output_tokens": 2000,
                   "gen_ai.usage.reasoning.output_tokens": 1500}},
        # A self-hosted GPU-second model for 1.234567891 s (priced at ns, stored at us).
        {"attrs": {**res, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "vllm",
                   "gen_ai.request.model": "llama-3.1-70b", "gen_ai.usage.input_tokens": 100,
                   "gen_ai.usage.output_tokens": 50},
         "end": EDGE_NS + 1_234_567_891},
    ]


def _edge_record(tenant: str) -> tuple[int, int, bytes]:
    from pipeline import otlp

    specs = [{"start": EDGE_NS, "end": EDGE_NS + 2 * 10**9, **s} for s in _edge_spans()]
    req = request(*specs, resource={"service.name": "batch-jobs",
                                    "deployment.environment.name": "staging"})
    calls = N.normalise(otlp.request_to_batch(req, tenant), SETTINGS, pricing.load_catalog(),
                        HASH_KEY.encode(), now=dt.datetime(2026, 11, 15, 13, tzinfo=dt.UTC)).calls
    assert calls.num_rows == 4 and all(calls.column("priced").to_pylist())
    return 0, EDGE_NS // 10**6 + 5000, b"\n".join(N.calls_to_ndjson(calls))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    plans = ((11, dt.datetime(2026, 11, 10, 10, 0, tzinfo=dt.UTC), 1500, ("unknown-model",)),
             (12, dt.datetime(2026, 10, 31, 23, 59, 55, tzinfo=dt.UTC), 300, ()),
             (13, dt.datetime(2026, 11, 30, 23, 59, 55, tzinfo=dt.UTC), 300, ()))
    records = []
    for seed, start, calls, scenarios in plans:
        opts = Options(seed=seed, calls=calls, start_time_ns=_ns(start), tenants=TENANTS,
                       scenarios=scenarios)
        records += llm_calls_records(opts, SETTINGS, 4)
    records += [_edge_record(PLAIN), _edge_record(ODD)]
    records.sort(key=lambda r: r[1])
    d = tmp_path_factory.mktemp("focus-lake")
    lake.land(LocalFS(d), L.CALLS, with_offsets(records))
    return d


@pytest.fixture(scope="module")
def con(data_dir):
    return connect(data_dir)


@pytest.fixture(scope="module")
def nov(con) -> pa.Table:
    return focus.charges(con, NOV, SETTINGS)


def _calls_sums(con, month: dt.date, by: str | None = None) -> dict:
    start, end = focus.month_bounds(month)
    group = f"{by}, " if by else ""
    rows = con.execute(
        f"SELECT {group}sum(cost_usd), sum(list_cost_usd) FROM calls "
        f"WHERE kind = 'llm' AND priced AND start_time >= ? AND start_time < ? "
        f"{'GROUP BY ALL' if by else ''}", [start, end]).fetchall()
    return {(r[0] if by else None): tuple(r[-2:]) for r in rows}


def _export_sums(table: pa.Table, by: str | None = None) -> dict:
    out: dict = {}
    for r in table.to_pylist():
        k = r[by] if by else None
        eff, lst, billed = out.get(k, (Decimal(0), Decimal(0), Decimal(0)))
        out[k] = (eff + r[F.EFFECTIVE_COST], lst + r[F.LIST_COST], billed + r[F.BILLED_COST])
    return out


def _rows(table: pa.Table, **where) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("month", [NOV, DEC, OCT])
def test_totals_equal_the_calls_sums_exactly(con, month):
    table = focus.charges(con, month, SETTINGS)
    cost, list_cost = _calls_sums(con, month)[None]
    assert cost > 0
    (eff, lst, billed), = _export_sums(table).values()
    assert eff == billed == cost and lst == list_cost
    assert pc.sum(table[F.CONTRACTED_COST]).as_py() == cost


def test_totals_are_exact_per_tenant_and_per_day(con, nov):
    calls = _calls_sums(con, NOV, "tenant")
    export = _export_sums(nov, F.BILLING_ACCOUNT_ID)
    assert set(calls) == set(export) == {*TENANTS, PLAIN}
    for tenant, (cost, list_cost) in calls.items():
        assert export[tenant][:2] == (cost, list_cost), tenant
    by_day = _calls_sums(con, NOV, "dt")
    export_days = _export_sums(nov, F.CHARGE_PERIOD_START)
    assert {d.date(): v[:2] for d, v in export_days.items()} == by_day


def test_token_quantities_are_the_calls_tokens(con, nov):
    start, end = focus.month_bounds(NOV)
    want = con.execute(
        "SELECT sum(input_tokens - coalesce(cached_input_tokens, 0) "
        "  - coalesce(cache_write_tokens, 0)), sum(cached_input_tokens), "
        "  sum(cache_write_tokens), sum(output_tokens - coalesce(reasoning_tokens, 0)), "
        "  sum(reasoning_tokens) "
        "FROM calls WHERE kind = 'llm' AND priced AND model <> 'llama-3.1-70b' "
        "AND start_time >= ? AND start_time < ?", [start, end]).fetchone()
    got = {t: sum((r[F.CONSUMED_QUANTITY] for r in _rows(nov, x_TokenType=t)), Decimal(0))
           for t in F.TOKEN_TYPES}
    assert [got[t] for t in F.TOKEN_TYPES] == [Decimal(int(w)) for w in want]
    for r in _rows(nov, PricingUnit="1000000 Tokens"):
        assert r[F.PRICING_QUANTITY] * 1_000_000 == r[F.CONSUMED_QUANTITY]


# ------------------------------------------------------------------ FOCUS rules


def test_the_export_is_valid_focus_1_2(nov):
    assert nov.num_rows > 100
    assert focus.validate(nov) == []
    assert nov.schema == F.FOCUS
    assert len(F.MANDATORY_COLUMNS) == 21         # every FOCUS 1.2 Mandatory column
    custom = [i for i, n in enumerate(nov.schema.names) if n.startswith("x_")]
    assert custom == list(range(custom[0], len(nov.schema.names)))   # x_ columns last
    assert set(nov[F.CHARGE_CATEGORY].to_pylist()) == {"Usage", "Adjustment"}
    assert set(nov[F.BILLING_CURRENCY].to_pylist()) == {"USD"}
    for r in _rows(nov, ChargeCategory="Usage"):     # unit price x quantity, to 12 decimals
        assert (r[F.LIST_UNIT_PRICE] * r[F.PRICING_QUANTITY]).quantize(Q) == r[F.LIST_COST]
        assert (r[F.CONTRACTED_UNIT_PRICE] * r[F.PRICING_QUANTITY]).quantize(Q) == \
            r[F.CONTRACTED_COST] == r[F.EFFECTIVE_COST] == r[F.BILLED_COST]
        assert r[F.CHARGE_PERIOD_END] - r[F.CHARGE_PERIOD_START] == dt.timedelta(days=1)


def test_one_row_per_day_tenant_attribution_model_price_and_meter(nov):
    keys = [(r[F.CHARGE_PERIOD_START], r[F.X_TENANT], r[F.X_SERVICE], r[F.X_TEAM],
             r[F.X_USE_CASE], r[F.X_ENVIRONMENT], r[F.X_PROVIDER], r[F.X_MODEL],
             r[F.X_PRICE_VERSION], r[F.X_BATCH], r[F.X_TIER], r[F.CHARGE_CATEGORY],
             r[F.SKU_PRICE_ID]) for r in nov.to_pylist()]
    assert len(keys) == len(set(keys))


def _break(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None
           ) -> pa.Table:
    i = table.schema.get_field_index(name)
    field = pa.field(name, type_ or table.schema.field(name).type, nullable=True)
    return table.set_column(i, field, pa.array(values, type=field.type))


def test_validate_catches_a_null_mandatory_column(nov):
    ids = nov[F.BILLING_ACCOUNT_ID].to_pylist()
    errors = focus.validate(_break(nov, F.BILLING_ACCOUNT_ID, [None, *ids[1:]]))
    assert errors == ["BillingAccountId: null in a column that must not be null: "
                      "1 row(s), first at row 0"]


def test_validate_catches_a_wrong_type(nov):
    as_float = [float(v) for v in nov[F.BILLED_COST].to_pylist()]
    errors = focus.validate(_break(nov, F.BILLED_COST, as_float, pa.float64()))
    assert errors == ["BilledCost: type double, expected decimal128(38, 12)"]
    as_text = [v.isoformat() for v in nov[F.CHARGE_PERIOD_START].to_pylist()]
    assert focus.validate(_break(nov, F.CHARGE_PERIOD_START, as_text, pa.string())) == [
        "ChargePeriodStart: type string, expected timestamp[us, tz=UTC]"]


def test_validate_catches_a_bad_charge_category(nov):
    cats = nov[F.CHARGE_CATEGORY].to_pylist()
    errors = focus.validate(_break(nov, F.CHARGE_CATEGORY, ["Fee", *cats[1:]]))
    assert errors[0] == ("ChargeCategory: not one of Usage, Purchase, Tax, Credit, "
                         "Adjustment: 1 row(s), first at row 0")
    # ...and a row that is no longer Usage must not carry a consumed quantity.
    assert "ConsumedQuantity: not null on a row that is not Usage: 1 row(s), first at row 0" \
        in errors


def test_validate_catches_missing_and_unprefixed_columns(nov):
    errors = focus.validate(nov.drop_columns([F.PUBLISHER_NAME]).append_column(
        "Team", pa.array(["x"] * nov.num_rows)))
    assert "PublisherName: missing (mandatory in FOCUS 1.2)" in errors
    assert "Team: not a FOCUS 1.2 column and not prefixed 'x_'" in errors


def test_validate_catches_conditional_rules_and_arithmetic(nov):
    i = next(i for i, c in enumerate(nov[F.CHARGE_CATEGORY].to_pylist()) if c == "Usage")
    units = nov[F.PRICING_UNIT].to_pylist()
    units[i] = None
    assert focus.validate(_break(nov, F.PRICING_UNIT, units)) == [
        f"PricingUnit: null on a Usage/Purchase row: 1 row(s), first at row {i}"]
    costs = nov[F.LIST_COST].to_pylist()
    costs[i] += Q
    assert focus.validate(_break(nov, F.LIST_COST, costs)) == [
        f"ListUnitPrice x PricingQuantity != ListCost: 1 row(s), first at row {i}"]
    starts = nov[F.CHARGE_PERIOD_START].to_pylist()
    starts[i] = nov[F.CHARGE_PERIOD_END][i].as_py()
    assert f"ChargePeriodStart not before ChargePeriodEnd: 1 row(s), first at row {i}" in \
        focus.validate(_break(nov, F.CHARGE_PERIOD_START, starts))
    tags = nov[F.TAGS].to_pylist()
    tags[i] = '{"team": ["a", "b"]}'
    assert focus.validate(_break(nov, F.TAGS, tags)) == [
        f"Tags: not a KeyValueFormat JSON object: 1 row(s), first at row {i}"]


# ------------------------------------------------------------------ golden rows


def _one(table: pa.Table, **where) -> dict:
    rows = _rows(table, **where)
    assert len(rows) == 1, (where, len(rows))
    return rows[0]


def test_golden_batch_fees_tier_reasoning_and_gpu_rows(nov):
    edge = {F.BILLING_ACCOUNT_ID: PLAIN}
    # gpt-4o batch (0.5 x list): 1000 input at 1.25, 500 output at 5.00; 2 web searches.
    r = _one(nov, **edge, SkuPriceId="openai/gpt-4o@2024-08-06/input/batch")
    assert (r[F.LIST_UNIT_PRICE], r[F.PRICING_QUANTITY], r[F.LIST_COST]) == (
        Decimal("1.25"), Decimal("0.001"), Decimal("0.00125"))
    assert (r[F.CONSUMED_QUANTITY], r[F.CONSUMED_UNIT], r[F.PRICING_UNIT]) == (
        1000, "Tokens", "1000000 Tokens")
    assert json.loads(r[F.SKU_PRICE_DETAILS]) == {
        "x_BatchApi": True, "x_PriceEffectiveFrom": "2024-08-06", "x_TokenType": "Input"}
    assert _one(nov, **edge, SkuPriceId="openai/gpt-4o@2024-08-06/output/batch")[
        F.LIST_COST] == Decimal("0.0025")
    fee = _one(nov, **edge, SkuPriceId="openai/gpt-4o@2024-08-06/web-search")
    assert (fee[F.SKU_METER], fee[F.PRICING_UNIT], fee[F.PRICING_QUANTITY],
            fee[F.LIST_UNIT_PRICE], fee[F.LIST_COST], fee[F.X_TOKEN_TYPE]) == (
        "Web Search Requests", "Requests", 2, Decimal("0.025"), Decimal("0.05"), None)
    # claude-sonnet-4-5 above 200k: 100k uncached at 6.00, 100k read at 0.60, 50k written
    # at 7.50, 1000 out at 22.50 = 1.0575 USD.
    tier = _rows(nov, **edge, x_Model="claude-sonnet-4-5")
    assert {r[F.SKU_PRICE_ID]: (r[F.LIST_UNIT_PRICE], r[F.LIST_COST]) for r in tier} == {
        "anthropic/claude-sonnet-4-5@2025-09-29/input/above-200000-input-tokens":
            (Decimal("6"), Decimal("0.6")),
        "anthropic/claude-sonnet-4-5@2025-09-29/cache-read/above-200000-input-tokens":
            (Decimal("0.6"), Decimal("0.06")),
        "anthropic/claude-sonnet-4-5@2025-09-29/cache-write/above-200000-input-tokens":
            (Decimal("7.5"), Decimal("0.375")),
        "anthropic/claude-sonnet-4-5@2025-09-29/output/above-200000-input-tokens":
            (Decimal("22.5"), Decimal("0.0225")),
    }
    assert {r[F.X_TIER] for r in tier} == {200_000}
    # o3: 1000 in at 2.00, 500 visible out and 1500 reasoning at 8.00.
    o3 = {r[F.X_TOKEN_TYPE]: (r[F.CONSUMED_QUANTITY], r[F.LIST_COST])
          for r in _rows(nov, **edge, x_Model="o3")}
    assert o3 == {"Input": (1000, Decimal("0.002")), "Output": (500, Decimal("0.004")),
                  "Reasoning": (1500, Decimal("0.012"))}
    # llama-3.1-70b: 2 GPUs x 1.234567 s (the lake's microseconds) at 0.000833333333; the
    # call was priced on 1.234567891 s: 0.001666666666 x 1.234567891 = 0.002057613151.
    gpu = _rows(nov, **edge, x_Model="llama-3.1-70b")
    usage = _one(nov, **edge, x_Model="llama-3.1-70b", ChargeCategory="Usage")
    assert (usage[F.PRICING_UNIT], usage[F.PRICING_QUANTITY], usage[F.LIST_UNIT_PRICE],
            usage[F.LIST_COST], usage[F.X_TIER]) == (
        "GPU-Seconds", Decimal("2.469134"), Decimal("0.000833333333"),
        Decimal("0.002057611666"), None)
    adj = _one(nov, **edge, x_Model="llama-3.1-70b", ChargeCategory="Adjustment")
    assert adj[F.LIST_COST] == adj[F.EFFECTIVE_COST] == Decimal("0.000000001485")
    assert adj[F.PRICING_QUANTITY] is adj[F.LIST_UNIT_PRICE] is adj[F.SKU_PRICE_ID] is None
    assert adj[F.CHARGE_DESCRIPTION].startswith("Rounding of 1 llama-3.1-70b call(s)")
    assert sum(r[F.LIST_COST] for r in gpu) == Decimal("0.002057613151")
    # Without terms the tenant pays list; every edge row carries its attribution.
    for r in _rows(nov, **edge):
        assert r[F.EFFECTIVE_COST] == r[F.LIST_COST]
        assert json.loads(r[F.TAGS]) == {"environment": "staging", "service": "batch-jobs",
                                         "team": "research", "use_case": "eval"}
        assert (r[F.SUB_ACCOUNT_ID], r[F.CHARGE_PERIOD_START].date()) == (
            "batch-jobs", EDGE_DAY)
    assert sum(r[F.LIST_COST] for r in _rows(nov, **edge)) == (
        Decimal("0.05375") + Decimal("1.0575") + Decimal("0.018") + Decimal("0.002057613151"))


def test_golden_provider_names_and_skus(nov):
    r = _one(nov, BillingAccountId=PLAIN, SkuPriceId="anthropic/claude-sonnet-4-5@2025-09-29/"
             "output/above-200000-input-tokens")
    assert (r[F.PROVIDER_NAME], r[F.PUBLISHER_NAME], r[F.INVOICE_ISSUER_NAME],
            r[F.SERVICE_NAME], r[F.SERVICE_CATEGORY], r[F.SERVICE_SUBCATEGORY]) == (
        "Anthropic", "Anthropic", "Anthropic", "Anthropic API", "AI and Machine Learning",
        "Generative AI")
    assert (r[F.RESOURCE_ID], r[F.SKU_ID], r[F.SKU_METER], r[F.PRICING_CATEGORY]) == (
        "anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5/output", "Output Tokens",
        "Standard")
    gpu = _one(nov, BillingAccountId=PLAIN, x_Model="llama-3.1-70b", ChargeCategory="Usage")
    assert (gpu[F.PROVIDER_NAME], gpu[F.X_PROVIDER], gpu[F.SKU_ID]) == (
        "Self-hosted", "self-hosted", "self-hosted/llama-3.1-70b/gpu-time")


def _token_rows(con, table: pa.Table, tenant: str, model: str) -> dict[str, tuple]:
    """(tokens from the calls, summed list cost, summed contracted cost) per token type."""
    start, end = focus.month_bounds(NOV)
    tokens = con.execute(
        "SELECT sum(input_tokens - coalesce(cached_input_tokens, 0) "
        "  - coalesce(cache_write_tokens, 0)), sum(cached_input_tokens), "
        "  sum(cache_write_tokens), sum(output_tokens - coalesce(reasoning_tokens, 0)) "
        "FROM calls WHERE kind = 'llm' AND priced AND tenant = ? AND model = ? "
        "AND start_time >= ? AND start_time < ?", [tenant, model, start, end]).fetchone()
    out = {}
    for t, n in zip(("Input", "CacheRead", "CacheWrite", "Output"), tokens, strict=True):
        rows = _rows(table, x_Tenant=tenant, x_Model=model, x_TokenType=t)
        out[t] = (int(n or 0), sum((r[F.LIST_COST] for r in rows), Decimal(0)),
                  sum((r[F.CONTRACTED_COST] for r in rows), Decimal(0)),
                  {(r[F.LIST_UNIT_PRICE], r[F.CONTRACTED_UNIT_PRICE]) for r in rows})
    return out


@pytest.mark.parametrize("tenant, model, prices", [
    # acme: 20 % off claude-haiku-4-5's list (1.00 / 0.10 / 1.25 / 5.00 per million).
    ("acme", "claude-haiku-4-5", {"Input": ("1.00", "0.80"), "CacheRead": ("0.10", "0.08"),
                                  "CacheWrite": ("1.25", "1.00"),
                                  "Output": ("5.00", "4.00")}),
    # globex: its own gpt-4o-mini prices replace list.
    ("globex", "gpt-4o-mini", {"Input": ("0.15", "0.1"), "CacheRead": ("0.075", "0.05"),
                               "Output": ("0.60", "0.5")}),
    # globex: only haiku's input price is negotiated; the rest stays list.
    ("globex", "claude-haiku-4-5", {"Input": ("1.00", "0.9"), "CacheRead": ("0.10", "0.10"),
                                    "CacheWrite": ("1.25", "1.25"),
                                    "Output": ("5.00", "5.00")}),
])
def test_golden_tenant_terms(con, nov, tenant, model, prices):
    got = _token_rows(con, nov, tenant, model)
    for token_type, (list_price, contracted) in prices.items():
        n, list_cost, contracted_cost, unit_prices = got[token_type]
        assert n > 0, token_type
        assert unit_prices == {(Decimal(list_price), Decimal(contracted))}, token_type
        assert list_cost == n * Decimal(list_price) / 1_000_000, token_type
        assert contracted_cost == n * Decimal(contracted) / 1_000_000, token_type
    assert not _rows(nov, x_Tenant=tenant, x_Model=model, ChargeCategory="Adjustment")


def test_rounding_lands_on_one_adjustment_row(con, nov):
    # initech pays 0.876543211 of list. Its batch gpt-4o call: list 0.05375, so the call
    # cost 0.047114197591 (0.04711419759125 rounded). Rows: 1.25 x 0.876543211 x 0.001 ->
    # 0.001095679014, 5 x 0.876543211 x 0.0005 -> 0.002191358028, 2 x 0.025 x 0.876543211
    # = 0.04382716055: 0.047114197592, one 1E-12 too much.
    rows = _rows(nov, x_Tenant=ODD, x_Model="gpt-4o", x_Service="batch-jobs")
    assert [r[F.CONTRACTED_COST] for r in rows if r[F.CHARGE_CATEGORY] == "Usage"] == [
        Decimal("0.001095679014"), Decimal("0.002191358028"), Decimal("0.04382716055")]
    adj = _one(nov, x_Tenant=ODD, x_Model="gpt-4o", x_Service="batch-jobs",
               ChargeCategory="Adjustment")
    assert (adj[F.EFFECTIVE_COST], adj[F.LIST_COST], adj[F.X_CALLS]) == (
        Decimal("-0.000000000001"), 0, 1)
    assert sum(r[F.EFFECTIVE_COST] for r in rows) == Decimal("0.047114197591")
    assert adj[F.CONSUMED_QUANTITY] is adj[F.PRICING_UNIT] is adj[F.SKU_ID] is None


def test_calls_priced_under_other_terms_still_add_up(con, data_dir):
    # Export with no tenant terms at all: unit prices are list, the negotiated savings the
    # calls were priced with become Adjustment rows, and the totals stay exact.
    bare = load_settings(env={"LLMSPEND_HASH_KEY": HASH_KEY})
    table = focus.charges(con, NOV, bare)
    assert focus.validate(table) == []
    cost, list_cost = _calls_sums(con, NOV)[None]
    (eff, lst, _), = _export_sums(table).values()
    assert (eff, lst) == (cost, list_cost)
    adj = _rows(table, x_Tenant="acme", ChargeCategory="Adjustment")
    assert adj and all(r[F.EFFECTIVE_COST] < 0 and r[F.LIST_COST] == 0 for r in adj)
    assert all("priced under other prices" in r[F.CHARGE_DESCRIPTION] for r in adj)


# ------------------------------------------------------------------ what is exported


def test_the_month_filter_excludes_other_months(con, nov):
    days = sorted({r[F.CHARGE_PERIOD_START].date() for r in nov.to_pylist()})
    assert days == [dt.date(2026, 11, 1), dt.date(2026, 11, 10), EDGE_DAY,
                    dt.date(2026, 11, 30)]
    assert {(r[F.BILLING_PERIOD_START], r[F.BILLING_PERIOD_END]) for r in nov.to_pylist()} \
        == {(dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC))}
    dec = focus.charges(con, DEC, SETTINGS)
    assert {r[F.CHARGE_PERIOD_START].date() for r in dec.to_pylist()} == {DEC}
    oct_ = focus.charges(con, OCT, SETTINGS)
    assert {r[F.CHARGE_PERIOD_START].date() for r in oct_.to_pylist()} == {
        dt.date(2026, 10, 31)}
    assert focus.validate(dec) == focus.validate(oct_) == []


def test_tool_and_unpriced_calls_are_not_charges(con, nov):
    kinds = dict(con.sql("SELECT kind || CASE WHEN priced THEN '' ELSE '-unpriced' END, "
                         "count(*) FROM calls GROUP BY 1").fetchall())
    assert kinds["tool"] > 0 and kinds["llm-unpriced"] > 0
    unknown = {m for (m,) in con.sql(
        "SELECT DISTINCT request_model FROM calls WHERE kind = 'llm' AND NOT priced "
        "AND issues LIKE '%model_not_in_catalog%'").fetchall()}
    assert unknown == {"acme-support-ft-7b"}
    assert not set(nov[F.X_MODEL].to_pylist()) & unknown
    # Tool executions (priced at 0) would show up as rows without a price version.
    assert None not in set(nov[F.X_PRICE_VERSION].to_pylist())


def test_an_empty_month_is_an_empty_valid_table(con):
    table = focus.charges(con, dt.date(2026, 1, 1), SETTINGS)
    assert table.num_rows == 0 and table.schema == F.FOCUS
    assert focus.validate(table) == []


def test_months_are_first_days():
    assert focus.parse_month("2026-11") == NOV
    assert focus.month_bounds(dt.date(2026, 12, 1))[1] == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="first day"):
        focus.month_bounds(dt.date(2026, 11, 10))
    with pytest.raises(ValueError, match="YYYY-MM"):
        focus.parse_month("November")


# ------------------------------------------------------------------ files


def test_parquet_and_csv_round_trip_exactly(nov, tmp_path):
    parquet, csv_path = focus.write(nov, tmp_path)
    assert (parquet.name, csv_path.name) == ("focus-2026-11.parquet", "focus-2026-11.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == [csv_path.name, parquet.name]
    back = pq.read_table(parquet)
    assert back.equals(nov) and back.schema.metadata[b"focus_version"] == b"1.2"
    assert pq.ParquetFile(parquet).metadata.row_group(0).column(0).compression == "ZSTD"
    assert focus.read_csv(csv_path).equals(nov)
    with open(csv_path, newline="") as f:
        header, first = next(csv.reader(f)), next(csv.reader(f))
    row = dict(zip(header, first, strict=True))
    assert header == list(F.NAMES)
    assert row[F.CHARGE_PERIOD_START] == "2026-11-01T00:00:00Z"
    assert row[F.BILLING_PERIOD_END] == "2026-12-01T00:00:00Z"
    assert row[F.CHARGE_CLASS] == "" and "E" not in row[F.LIST_COST]
    assert json.loads(row[F.TAGS])["team"] == row[F.X_TEAM]
    again, _ = focus.write(nov.slice(0, 3), tmp_path / "focus-2026-11.csv")
    assert again == parquet and pq.read_table(parquet).num_rows == 3   # replaced whole
