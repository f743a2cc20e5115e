"""The FinOps FOCUS 1.2 export of a month of priced LLM calls (``llmspend export focus``).

Functions without side effects (but :func:`write`): :func:`charges` reads the ``calls``
view of a DuckDB connection (``pipeline.analytics.connect``) and returns a table of the
FOCUS schema (``schemas/focus.py``), :func:`validate` checks a table against the FOCUS
rules the export promises, :func:`write` writes Parquet and CSV atomically and
:func:`read_csv` reads the CSV back exactly.

What is a charge
----------------
Every LLM call (``kind = 'llm'``) that is ``priced`` and started in the month (UTC). Tool
executions cost 0 and are not exported; unpriced calls have no cost to export (question 5
of the README lists them).

Granularity
-----------
One Usage row per (UTC day, tenant, service, team, use case, environment, serving provider,
catalog model, price version, batch API or not, long-context tier, meter). The meters of a
token-priced model are its token types, each priced at its own rate: uncached input
(``input - cache_read - cache_write``), cache read, cache write, visible output
(``output - reasoning``) and reasoning; then one meter per per-request fee (e.g. web
search). A GPU-second model has one meter, GPU time. A meter with nothing consumed has no
row. Batch and the tier are part of the key because they change the unit price: a FOCUS
row has one price (SkuPriceId, ListUnitPrice).

Units
-----
Token meters: PricingUnit ``1000000 Tokens`` (FOCUS UnitFormat ``<unit-quantity>
<plural-units>``; the FOCUS AI billing examples use the same), PricingQuantity = tokens /
1000000, ListUnitPrice = the catalog's USD per million tokens (times the batch multiplier
for batch calls), so the unit price is the one the provider publishes. ConsumedUnit
``Tokens``, ConsumedQuantity = tokens. Fees: ``Requests``, the fee per request. GPU
models: ``GPU-Seconds`` (span duration x GPUs), the catalog's ``gpu_second``.

Exactness and the allocation rule
---------------------------------
Money is ``Decimal`` throughout. On a Usage row, ListCost = ListUnitPrice x
PricingQuantity and ContractedCost = ContractedUnitPrice x PricingQuantity, each rounded
once to 12 decimals (the column scale). The calls were priced one by one and each call's
cost rounded to 12 decimals (``pipeline.pricing``); the meter products are not, and GPU
time is stored in microseconds where pricing used nanoseconds. So per group (the key
without the meter) the difference between the calls' ``sum(list_cost_usd)`` /
``sum(cost_usd)`` and the Usage rows' ListCost / EffectiveCost goes to one extra row of
ChargeCategory ``Adjustment`` (no quantity, unit or unit price, as FOCUS allows for
Adjustment), emitted only when the difference is not zero. Sums over the export therefore
equal the calls' sums exactly, and every Usage row keeps unit price x quantity = cost (to
the 12th decimal; a negotiated unit price with more decimals is rounded to 12 first). With
the shipped catalog and a plain discount the difference is zero (prices have few decimals);
it appears for GPU-second models, for batch or discounts with many decimals, and, with a
different description, when the calls were priced under other prices or tenant terms than
the current settings (or by a price version the catalog no longer has).

Costs
-----
ListCost: catalog list prices (``list_cost_usd``). ContractedUnitPrice: the tenant's
negotiated price from ``pricing.overrides`` (its per-model prices, or the list price less
its discount; the list price when it has no terms), the same rule ``pricing.quote`` uses.
FOCUS defines ContractedCost as ContractedUnitPrice x PricingQuantity; llmspend has no
commitment discounts and no amortized purchases, so EffectiveCost = BilledCost =
ContractedCost on every row (``cost_usd``), and PricingCategory is ``Standard``.

Columns and why
---------------
BillingAccountId/Name = tenant (the account that pays); SubAccountId/Name = the calling
service, the container of spend inside a tenant like a cloud project (a service has its
keys and deployments; teams may share one, so the team is a tag and ``x_Team``).
ProviderName and InvoiceIssuerName = the provider that served the call (Microsoft for
Azure OpenAI), PublisherName = the model's maker (the catalog entry's provider),
ServiceName = the provider's API, ServiceCategory ``AI and Machine Learning``,
ServiceSubcategory ``Generative AI``. ResourceId = ``<serving provider>/<model>``
(not the price version: a price change does not make a new resource), ResourceName =
model. SkuId = ``<publisher>/<model>/<meter>``, SkuPriceId = the catalog price
``<price_version>/<meter>`` plus ``/batch`` and ``/above-<n>-input-tokens`` where they
apply. Tags = the attribution that is set (environment, service, team, use_case), one
user-defined scheme, so unprefixed.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline import pricing
from pipeline.config import Settings
from schemas import focus as F
from schemas import lake as L

QUANTUM = pricing.QUANTUM
_CTX = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN,
                       traps=[decimal.InvalidOperation, decimal.Overflow])
_ZERO = Decimal(0)
_UTC = dt.UTC
CURRENCY = "USD"
USAGE, ADJUSTMENT = "Usage", "Adjustment"
UNIT_MTOK, UNIT_TOKENS, UNIT_REQUESTS, UNIT_GPU_SECONDS = (
    "1000000 Tokens", "Tokens", "Requests", "GPU-Seconds")

#: Display names of the canonical providers (``pipeline.conventions.PROVIDERS``).
PROVIDER_NAMES: dict[str, str] = {
    "openai": "OpenAI", "anthropic": "Anthropic", "google": "Google", "mistral": "Mistral AI",
    "azure": "Microsoft", "aws.bedrock": "Amazon Web Services", "cohere": "Cohere",
    "groq": "Groq", "deepseek": "DeepSeek", "xai": "xAI", "perplexity": "Perplexity",
    "ibm": "IBM", "together": "Together AI", "self-hosted": "Self-hosted"}
#: The offering each provider sells model calls through (FOCUS ServiceName).
SERVICE_NAMES: dict[str, str] = {
    "openai": "OpenAI API", "anthropic": "Anthropic API", "google": "Gemini API",
    "mistral": "Mistral AI API", "azure": "Azure OpenAI", "aws.bedrock": "Amazon Bedrock",
    "ibm": "IBM watsonx.ai", "self-hosted": "Self-hosted models"}


@dataclass(frozen=True)
class _Meter:
    key: str                # SkuId / SkuPriceId suffix
    token_type: str         # x_TokenType
    meter: str              # SkuMeter
    price: str              # pricing.Prices attribute


TOKEN_METERS = (
    _Meter("input", "Input", "Input Tokens", "input"),
    _Meter("cache-read", "CacheRead", "Cache Read Input Tokens", "cache_read"),
    _Meter("cache-write", "CacheWrite", "Cache Write Input Tokens", "cache_write"),
    _Meter("output", "Output", "Output Tokens", "output"),
    _Meter("reasoning", "Reasoning", "Reasoning Output Tokens", "reasoning"),
)


# ------------------------------------------------------------------ months


def parse_month(text: str) -> dt.date:
    """``YYYY-MM`` (the CLI's ``--month``) as the first day of that month."""
    try:
        return dt.datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise ValueError(f"month {text!r}: expected YYYY-MM") from None


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a UTC month given its first day: the FOCUS billing period."""
    if month.day != 1:
        raise ValueError(f"month {month}: pass the first day of the month")
    start = dt.datetime(month.year, month.month, 1, tzinfo=_UTC)
    end = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=_UTC)
    return start, end


# ------------------------------------------------------------------ reading the lake


@dataclass
class _Group:
    """What the calls of one row group consumed and cost (summed over its SQL rows)."""

    calls: int = 0
    tokens: Counter = field(default_factory=Counter)        # meter key -> tokens
    token_calls: Counter = field(default_factory=Counter)   # meter key -> calls with > 0
    fees: Counter = field(default_factory=Counter)          # fee -> requests
    fee_calls: Counter = field(default_factory=Counter)
    duration_us: int = 0
    cost: Decimal = _ZERO
    list_cost: Decimal = _ZERO


#: (day, tenant, service, team, use_case, environment, provider, price_version, model,
#: batch, tier): the row key without the meter.
_Key = tuple[dt.date, str, str | None, str | None, str | None, str | None, str,
             str | None, str, bool, int]

_TOKEN_SQL = {
    "input": "coalesce(input_tokens, 0) - coalesce(cached_input_tokens, 0)"
             " - coalesce(cache_write_tokens, 0)",
    "cache-read": "coalesce(cached_input_tokens, 0)",
    "cache-write": "coalesce(cache_write_tokens, 0)",
    "output": "coalesce(output_tokens, 0) - coalesce(reasoning_tokens, 0)",
    "reasoning": "coalesce(reasoning_tokens, 0)",
}


def _sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _groups_sql(catalog: pricing.Catalog) -> str:
    """The month's priced LLM calls summed per group and fee string, with each call's
    long-context tier found the way ``PriceVersion.prices_for`` finds it."""
    tiers = [(e.version_id(v), t.above_input_tokens)
             for e in catalog.entries for v in e.versions for t in v.tiers]
    if tiers:
        values = ", ".join(f"({_sql_text(pv)}, {above})" for pv, above in tiers)
        with_tiers = f"WITH tiers(price_version, above) AS (VALUES {values}),\n"
        tier = ("coalesce((SELECT max(t.above) FROM tiers t WHERE t.price_version = "
                "calls.price_version AND coalesce(calls.input_tokens, 0) > t.above), 0)")
    else:
        with_tiers, tier = "WITH ", "0"
    sums = ",\n       ".join(
        f"sum({expr})::HUGEINT AS \"{k}\", count(*) FILTER (WHERE {expr} > 0) AS \"n_{k}\""
        for k, expr in _TOKEN_SQL.items())
    return f"""{with_tiers}month_calls AS (
  SELECT *, {tier} AS tier FROM calls
  WHERE kind = 'llm' AND priced AND cost_usd IS NOT NULL
    AND {L.DT} >= ? AND {L.DT} < ? AND start_time >= ? AND start_time < ?)
SELECT {L.DT} AS day, tenant, service, team, use_case, environment,
       coalesce(provider, split_part(price_version, '/', 1), 'unknown') AS provider,
       price_version, coalesce(model, response_model, request_model, 'unknown') AS model,
       batch, tier, fees,
       count(*) AS calls,
       {sums},
       coalesce(sum(epoch_us(end_time) - epoch_us(start_time)), 0)::HUGEINT AS duration_us,
       sum(cost_usd) AS cost, sum(list_cost_usd) AS list_cost
FROM month_calls
GROUP BY ALL"""


def _read_groups(con: duckdb.DuckDBPyConnection, month: dt.date,
                 catalog: pricing.Catalog) -> dict[_Key, _Group]:
    start, end = month_bounds(month)
    cur = con.execute(_groups_sql(catalog), [start.date(), end.date(), start, end])
    names = [d[0] for d in cur.description]
    groups: dict[_Key, _Group] = {}
    for values in cur.fetchall():
        r = dict(zip(names, values, strict=True))
        key: _Key = (r["day"], r["tenant"], r["service"], r["team"], r["use_case"],
                     r["environment"], r["provider"], r["price_version"], r["model"],
                     bool(r["batch"]), int(r["tier"]))
        g = groups.setdefault(key, _Group())
        g.calls += r["calls"]
        for k in _TOKEN_SQL:
            g.tokens[k] += int(r[k])
            g.token_calls[k] += r[f"n_{k}"]
        for fee, n in pricing.parse_fees(r["fees"]).items():
            g.fees[fee] += n
            g.fee_calls[fee] += r["calls"] if n else 0
        g.duration_us += int(r["duration_us"])
        g.cost += r["cost"]
        g.list_cost += r["list_cost"]
    return groups


# ------------------------------------------------------------------ pricing the meters


def _q(d: Decimal) -> Decimal:
    return d.quantize(QUANTUM, context=_CTX)


def _plain(d: Decimal) -> str:
    """A price as people write it: ``2.5``, ``0.000833333333``, ``10``."""
    return format(d.normalize(context=_CTX), "f")


def _terms(overrides: Mapping[str, pricing.TenantOverride], tenant: str,
           entry: pricing.ModelEntry) -> tuple[Mapping[str, Decimal] | None, Decimal]:
    """(per-model prices, factor on list prices) of a tenant for a model, as
    ``pricing.quote`` applies them: per-model prices win, else the discount, else list."""
    term = overrides.get(tenant)
    if term is None:
        return None, Decimal(1)
    mine = next((term.models[n.lower()] for n in (entry.model, *entry.aliases)
                 if n.lower() in term.models), None)
    if mine is not None:
        return mine, Decimal(1)
    return None, Decimal(1) - term.discount if term.discount is not None else Decimal(1)


@dataclass
class _Charge:
    """One Usage row before the common columns: a meter, its prices and quantities."""

    sku: str                  # meter part of SkuId
    price_id: str             # meter part of SkuPriceId (with /batch, /above-...)
    meter: str
    token_type: str | None
    unit: str
    consumed_unit: str
    quantity: Decimal         # PricingQuantity
    consumed: Decimal         # ConsumedQuantity
    list_price: Decimal       # exact, before rounding to the column scale
    contracted_price: Decimal
    calls: int
    details: dict[str, Any]
    description: str


def _meters(key: _Key, g: _Group, entry: pricing.ModelEntry, v: pricing.PriceVersion,
            overrides: Mapping[str, pricing.TenantOverride]) -> list[_Charge]:
    """The Usage charges of one group, priced like ``pricing.quote`` prices its calls."""
    tenant, model, batch, tier = key[1], key[8], key[9], key[10]
    mine, factor = _terms(overrides, tenant, entry)
    eff = v.effective_from.isoformat()
    base_details: dict[str, Any] = {"x_PriceEffectiveFrom": eff}
    out: list[_Charge] = []
    if entry.unit == pricing.UNIT_GPU_SECOND:
        gpu_s = Decimal(g.duration_us * v.gpus).scaleb(-6, context=_CTX)
        if gpu_s:
            rate = _CTX.multiply((mine or {}).get("gpu_second", v.gpu_second), factor)
            out.append(_Charge(
                "gpu-time", "gpu-time", "GPU Time", None, UNIT_GPU_SECONDS, UNIT_GPU_SECONDS,
                gpu_s, gpu_s, v.gpu_second, rate, g.calls,
                {**base_details, "x_GpusPerCall": str(v.gpus)},
                f"{model} GPU time ({v.gpus} GPU(s) per call) at {_plain(v.gpu_second)} USD "
                f"per GPU-second (list, price of {eff})"))
        return out
    prices = v.base if tier == 0 else next(
        (t for t in v.tiers if t.above_input_tokens == tier), None)
    if prices is None:
        return out
    mine_tokens = {k: p for k, p in (mine or {}).items() if k in pricing.TOKEN_PRICES}
    negotiated = prices.replace(**mine_tokens) if mine_tokens else prices
    mult = entry.batch_multiplier if batch and entry.batch_multiplier is not None else 1
    suffix = ("/batch" if batch else "") + (f"/above-{tier}-input-tokens" if tier else "")
    extra = ({"x_BatchApi": True} if batch else {}) | (
        {"x_LongContextTier": f"above {tier} input tokens"} if tier else {})
    how = ", ".join(filter(None, (f"price of {eff}", "batch API" if batch else "",
                                  f"above {tier:,} input tokens" if tier else "")))
    for m in TOKEN_METERS:
        n = g.tokens[m.key]
        if not n:
            continue
        lp = _CTX.multiply(getattr(prices, m.price), mult)
        cp = _CTX.multiply(_CTX.multiply(getattr(negotiated, m.price), mult), factor)
        out.append(_Charge(
            m.key, m.key + suffix, m.meter, m.token_type, UNIT_MTOK, UNIT_TOKENS,
            Decimal(n).scaleb(-6, context=_CTX), Decimal(n), lp, cp, g.token_calls[m.key],
            {"x_TokenType": m.token_type, **base_details, **extra},
            f"{model} {m.meter.lower()} at {_plain(lp)} USD per 1000000 tokens (list, "
            f"{how})"))
    for fee, n in sorted(g.fees.items()):
        if not n or fee not in v.fees:      # an unpriced fee was not charged either
            continue
        slug = fee.replace("_", "-")
        meter = f"{fee.replace('_', ' ').title()} Requests"
        fp = v.fees[fee]
        out.append(_Charge(
            slug, slug, meter, None, UNIT_REQUESTS, UNIT_REQUESTS, Decimal(n), Decimal(n),
            fp, _CTX.multiply(fp, factor), g.fee_calls[fee],
            {"x_Fee": fee, **base_details},
            f"{model} {meter.lower()} at {_plain(fp)} USD per request (list, price of "
            f"{eff})"))
    return out


# ------------------------------------------------------------------ rows


def _dt(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=_UTC)


def _json(obj: Mapping[str, Any]) -> str | None:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) if obj else None


def _common(key: _Key, publisher: str, period: tuple[dt.datetime, dt.datetime]
            ) -> dict[str, Any]:
    """The columns every row of a group shares."""
    day, tenant, service, team, use_case, env, provider, pv, model, batch, _tier = key
    provider_name = PROVIDER_NAMES.get(provider, provider)
    tags = {k: v for k, v in (("environment", env), ("service", service), ("team", team),
                              ("use_case", use_case)) if v is not None}
    return {
        F.BILLING_ACCOUNT_ID: tenant, F.BILLING_ACCOUNT_NAME: tenant,
        F.BILLING_CURRENCY: CURRENCY,
        F.BILLING_PERIOD_START: period[0], F.BILLING_PERIOD_END: period[1],
        F.CHARGE_CLASS: None, F.CHARGE_FREQUENCY: "Usage-Based",
        F.CHARGE_PERIOD_START: _dt(day), F.CHARGE_PERIOD_END: _dt(day + dt.timedelta(days=1)),
        F.INVOICE_ISSUER_NAME: provider_name, F.PROVIDER_NAME: provider_name,
        F.PUBLISHER_NAME: PROVIDER_NAMES.get(publisher, publisher),
        F.SERVICE_CATEGORY: "AI and Machine Learning",
        F.SERVICE_SUBCATEGORY: "Generative AI",
        F.SERVICE_NAME: SERVICE_NAMES.get(provider, f"{provider_name} API"),
        F.RESOURCE_ID: f"{provider}/{model}", F.RESOURCE_NAME: model,
        F.SUB_ACCOUNT_ID: service, F.SUB_ACCOUNT_NAME: service, F.TAGS: _json(tags),
        F.X_TENANT: tenant, F.X_SERVICE: service, F.X_TEAM: team, F.X_USE_CASE: use_case,
        F.X_ENVIRONMENT: env, F.X_PROVIDER: provider, F.X_MODEL: model,
        F.X_PRICE_VERSION: pv, F.X_BATCH: batch,
    }


def _usage_row(common: dict[str, Any], publisher: str, model: str, pv: str, tier: int | None,
               c: _Charge) -> dict[str, Any]:
    lp, cp = _q(c.list_price), _q(c.contracted_price)
    contracted = _q(_CTX.multiply(cp, c.quantity))
    return {**common,
            F.CHARGE_CATEGORY: USAGE, F.CHARGE_DESCRIPTION: c.description,
            F.PRICING_CATEGORY: "Standard",
            F.PRICING_QUANTITY: _q(c.quantity), F.PRICING_UNIT: c.unit,
            F.CONSUMED_QUANTITY: _q(c.consumed), F.CONSUMED_UNIT: c.consumed_unit,
            F.LIST_UNIT_PRICE: lp, F.LIST_COST: _q(_CTX.multiply(lp, c.quantity)),
            F.CONTRACTED_UNIT_PRICE: cp, F.CONTRACTED_COST: contracted,
            F.EFFECTIVE_COST: contracted, F.BILLED_COST: contracted,
            F.SKU_ID: f"{publisher}/{model}/{c.sku}", F.SKU_PRICE_ID: f"{pv}/{c.price_id}",
            F.SKU_METER: c.meter, F.SKU_PRICE_DETAILS: _json(c.details),
            F.X_TOKEN_TYPE: c.token_type, F.X_TIER: tier, F.X_CALLS: c.calls}


def _adjustment_row(common: dict[str, Any], tier: int | None, list_cost: Decimal,
                    cost: Decimal, calls: int, why: str) -> dict[str, Any]:
    return {**common,
            F.CHARGE_CATEGORY: ADJUSTMENT, F.CHARGE_DESCRIPTION: why,
            F.PRICING_CATEGORY: None, F.PRICING_QUANTITY: None, F.PRICING_UNIT: None,
            F.CONSUMED_QUANTITY: None, F.CONSUMED_UNIT: None,
            F.LIST_UNIT_PRICE: None, F.LIST_COST: list_cost,
            F.CONTRACTED_UNIT_PRICE: None, F.CONTRACTED_COST: cost,
            F.EFFECTIVE_COST: cost, F.BILLED_COST: cost,
            F.SKU_ID: None, F.SKU_PRICE_ID: None, F.SKU_METER: None, F.SKU_PRICE_DETAILS: None,
            F.X_TOKEN_TYPE: None, F.X_TIER: tier, F.X_CALLS: calls}


def _group_rows(key: _Key, g: _Group, versions: Mapping[str, tuple],
                overrides: Mapping[str, pricing.TenantOverride],
                period: tuple[dt.datetime, dt.datetime]) -> list[dict[str, Any]]:
    """A group's Usage rows, plus the Adjustment row that makes its costs exact."""
    pv, model = key[7], key[8]
    found = versions.get(pv) if pv else None
    publisher = found[0].provider if found else (pv.split("/", 1)[0] if pv else key[6])
    common = _common(key, publisher, period)
    if found is None:
        why = (f"{g.calls} {model} call(s) priced by {pv or 'no price version'}, which the "
               f"pricing catalog does not have: their cost as priced")
        return [_adjustment_row(common, None, g.list_cost, g.cost, g.calls, why)]
    entry, v = found
    tier = key[10] if entry.unit == pricing.UNIT_TOKEN else None
    charges = _meters(key, g, entry, v, overrides)
    rows = [_usage_row(common, entry.provider, entry.model, pv, tier, c) for c in charges]
    list_left = g.list_cost - sum((r[F.LIST_COST] for r in rows), _ZERO)
    cost_left = g.cost - sum((r[F.EFFECTIVE_COST] for r in rows), _ZERO)
    if not (list_left or cost_left):
        return rows
    # What rounding can explain: half a unit of the 12th decimal per call (each call's
    # cost) and per row (each product), the unit prices' own rounding, and for GPU time
    # the microseconds the lake keeps of nanosecond spans.
    slack = QUANTUM * (g.calls + len(rows))
    for c in charges:
        slack += c.quantity * max(abs(c.list_price - _q(c.list_price)),
                                  abs(c.contracted_price - _q(c.contracted_price)))
        if c.unit == UNIT_GPU_SECONDS:
            slack += max(c.list_price, c.contracted_price) * v.gpus * g.calls / 10**6
    if max(abs(list_left), abs(cost_left)) <= slack:
        why = (f"Rounding of {g.calls} {model} call(s): each call's cost is rounded to 12 "
               f"decimals (USD), the meter rows are unit price x quantity")
    else:
        why = (f"{g.calls} {model} call(s) were priced under other prices or tenant terms "
               f"than the current catalog and pricing.overrides: the difference to their "
               f"cost as priced")
    return [*rows, _adjustment_row(common, tier, list_left, cost_left, g.calls, why)]


def _sort_key(row: Mapping[str, Any]) -> tuple:
    def k(v: Any) -> tuple:
        return (v is None, "" if v is None else v)
    return tuple(k(row[n]) for n in (
        F.CHARGE_PERIOD_START, F.X_TENANT, F.X_SERVICE, F.X_TEAM, F.X_USE_CASE,
        F.X_ENVIRONMENT, F.X_PROVIDER, F.X_MODEL, F.X_PRICE_VERSION, F.X_BATCH, F.X_TIER,
        F.CHARGE_CATEGORY, F.SKU_PRICE_ID))


def charges(con: duckdb.DuckDBPyConnection, month: dt.date, settings: Settings,
            catalog: pricing.Catalog | None = None) -> pa.Table:
    """The FOCUS rows (schema ``schemas.focus.FOCUS``) of the priced LLM calls that started
    in ``month`` (its first day; UTC), from the ``calls`` view of ``con``.

    Unit prices and tenant terms come from ``settings.pricing`` (or ``catalog``); the
    costs always add up to the calls' own ``cost_usd`` and ``list_cost_usd``.
    """
    catalog = catalog or pricing.load_catalog(settings.pricing.catalog)
    overrides = pricing.parse_overrides(settings.pricing.overrides)
    versions = {e.version_id(v): (e, v) for e in catalog.entries for v in e.versions}
    period = month_bounds(month)
    rows: list[dict[str, Any]] = []
    with decimal.localcontext(_CTX):
        for key, g in _read_groups(con, month, catalog).items():
            rows += _group_rows(key, g, versions, overrides, period)
    rows.sort(key=_sort_key)
    return pa.Table.from_pylist(rows, schema=F.FOCUS)


# ------------------------------------------------------------------ validation


def _report(errors: list[str], what: str, mask: pa.Array | pa.ChunkedArray) -> None:
    """One message for the rows where ``mask`` is true (null counts as false)."""
    bad = pc.indices_nonzero(pc.fill_null(mask, False))
    if len(bad):
        errors.append(f"{what}: {len(bad)} row(s), first at row {bad[0].as_py()}")


def _key_value(text: str) -> str | None:
    """Why ``text`` is not FOCUS KeyValueFormat (a JSON object of unique keys whose values
    are strings, numbers, booleans or null), None when it is."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")
        return dict(pairs)
    try:
        obj = json.loads(text, object_pairs_hook=unique)
    except ValueError as exc:
        return str(exc)
    if not isinstance(obj, dict):
        return "not a JSON object"
    if any(isinstance(v, dict | list) for v in obj.values()):
        return "a value is an object or array"
    return None


def validate(table: pa.Table) -> list[str]:
    """The FOCUS 1.2 rules the export promises that ``table`` breaks, one message each
    (empty: conformant). The CLI refuses to write an export with any."""
    with decimal.localcontext(_CTX):
        return _validate(table)


def _validate(table: pa.Table) -> list[str]:
    errors: list[str] = []
    schema = table.schema
    if len(set(schema.names)) != len(schema.names):
        return ["duplicate column names"]
    for name in schema.names:
        if name not in F.SPEC_COLUMNS_1_2 and not name.startswith(F.CUSTOM_PREFIX):
            errors.append(f"{name}: not a FOCUS 1.2 column and not prefixed "
                          f"{F.CUSTOM_PREFIX!r}")
        typ = schema.field(name).type
        if pa.types.is_timestamp(typ) and typ.tz not in ("UTC", "+00:00", "Etc/UTC"):
            errors.append(f"{name}: date/time not in UTC")
    col: dict[str, pa.ChunkedArray] = {}
    for c in F.COLUMNS:
        if c.name not in schema.names:
            level = "mandatory in FOCUS 1.2" if c.level == F.MANDATORY else "of this export"
            errors.append(f"{c.name}: missing ({level})")
        elif schema.field(c.name).type != c.type:
            errors.append(f"{c.name}: type {schema.field(c.name).type}, expected {c.type}")
        else:
            col[c.name] = table.column(c.name)
    for name, values in col.items():
        c = F.BY_NAME[name]
        if not c.nullable:
            _report(errors, f"{name}: null in a column that must not be null",
                    pc.is_null(values))
        if c.allowed:
            _report(errors, f"{name}: not one of {', '.join(c.allowed)}", pc.and_(
                pc.is_valid(values), pc.invert(pc.is_in(values, value_set=pa.array(c.allowed)))))
    if F.BILLING_CURRENCY in col:
        _report(errors, f"{F.BILLING_CURRENCY}: not an ISO 4217 code", pc.invert(
            pc.match_substring_regex(col[F.BILLING_CURRENCY], "^[A-Z]{3}$")))
    for name in F.JSON_COLUMNS:
        if name in col:
            texts = col[name].cast(pa.string()).to_pylist()
            _report(errors, f"{name}: not a KeyValueFormat JSON object", pa.array(
                [t is not None and _key_value(t) is not None for t in texts], pa.bool_()))
    _check_periods(errors, col)
    _check_charge_rules(errors, col, table.num_rows)
    return errors


def _check_periods(errors: list[str], col: dict[str, pa.ChunkedArray]) -> None:
    for start, end in ((F.CHARGE_PERIOD_START, F.CHARGE_PERIOD_END),
                       (F.BILLING_PERIOD_START, F.BILLING_PERIOD_END)):
        if start in col and end in col:
            _report(errors, f"{start} not before {end}",
                    pc.greater_equal(col[start], col[end]))
    names = (F.CHARGE_PERIOD_START, F.CHARGE_PERIOD_END, F.BILLING_PERIOD_START,
             F.BILLING_PERIOD_END)
    if all(k in col for k in names):
        cs, ce, bs, be = (col[k] for k in names)
        _report(errors, "charge period outside the billing period",
                pc.or_(pc.less(cs, bs), pc.greater(ce, be)))


def _check_charge_rules(errors: list[str], col: dict[str, pa.ChunkedArray], n: int) -> None:
    """Nullability that depends on ChargeCategory/ChargeClass, signs, and unit price x
    quantity = cost (to the 12th decimal, the scale of the columns)."""
    if F.CHARGE_CATEGORY not in col:
        return
    cat = col[F.CHARGE_CATEGORY]
    correction = pc.fill_null(pc.equal(col[F.CHARGE_CLASS], "Correction"), False) \
        if F.CHARGE_CLASS in col else pa.array([False] * n, pa.bool_())
    not_correction = pc.invert(correction)
    usage = pc.fill_null(pc.equal(cat, USAGE), False)
    priced = pc.and_(pc.is_in(cat, value_set=pa.array(["Usage", "Purchase"])), not_correction)
    tax = pc.fill_null(pc.equal(cat, "Tax"), False)
    for name in (F.PRICING_QUANTITY, F.PRICING_UNIT, F.LIST_UNIT_PRICE,
                 F.CONTRACTED_UNIT_PRICE, F.PRICING_CATEGORY, F.SKU_ID, F.SKU_PRICE_ID):
        if name in col:
            _report(errors, f"{name}: null on a Usage/Purchase row",
                    pc.and_(priced, pc.is_null(col[name])))
            _report(errors, f"{name}: not null on a Tax row",
                    pc.and_(tax, pc.is_valid(col[name])))
    for name in (F.CONSUMED_QUANTITY, F.CONSUMED_UNIT):
        if name in col:
            _report(errors, f"{name}: null on a Usage row",
                    pc.and_(pc.and_(usage, not_correction), pc.is_null(col[name])))
            _report(errors, f"{name}: not null on a row that is not Usage",
                    pc.and_(pc.invert(usage), pc.is_valid(col[name])))
    if F.SKU_PRICE_DETAILS in col and F.SKU_PRICE_ID in col:
        _report(errors, f"{F.SKU_PRICE_DETAILS}: not null where {F.SKU_PRICE_ID} is null",
                pc.and_(pc.is_null(col[F.SKU_PRICE_ID]), pc.is_valid(col[F.SKU_PRICE_DETAILS])))
    zero = pa.scalar(_ZERO, F.DECIMAL)
    for name in (F.BILLED_COST, F.EFFECTIVE_COST, F.LIST_COST, F.CONTRACTED_COST,
                 F.PRICING_QUANTITY, F.CONSUMED_QUANTITY):
        if name in col:
            _report(errors, f"{name}: negative on a Usage row",
                    pc.and_(usage, pc.less(col[name], zero)))
    for name in (F.LIST_UNIT_PRICE, F.CONTRACTED_UNIT_PRICE):
        if name in col:
            _report(errors, f"{name}: negative", pc.less(col[name], zero))
    for price, cost in ((F.LIST_UNIT_PRICE, F.LIST_COST),
                        (F.CONTRACTED_UNIT_PRICE, F.CONTRACTED_COST)):
        if price in col and cost in col and F.PRICING_QUANTITY in col:
            p, q, c = (col[k].to_pylist() for k in (price, F.PRICING_QUANTITY, cost))
            _report(errors, f"{price} x {F.PRICING_QUANTITY} != {cost}", pc.and_(
                not_correction, pa.array(
                    [None not in (pi, qi, ci) and abs(pi * qi - ci) > QUANTUM / 2
                     for pi, qi, ci in zip(p, q, c, strict=True)], pa.bool_())))


# ------------------------------------------------------------------ files


def default_name(table: pa.Table) -> str:
    """``focus-YYYY-MM`` after the table's billing period (``focus`` when empty)."""
    if table.num_rows == 0:
        return "focus"
    start = table.column(F.BILLING_PERIOD_START)[0].as_py()
    return f"focus-{start:%Y-%m}"


def _csv_column(values: pa.ChunkedArray) -> list[str]:
    """A column as CSV text: decimals plain (no exponent), DateTimes ISO 8601 with ``Z``,
    booleans ``true``/``false``, null as an empty field."""
    t = values.type
    if t == F.DATETIME:
        # FOCUS DateTimes have whole seconds; the cast refuses to drop a fraction.
        values = pc.strftime(values.cast(pa.timestamp("s", tz="UTC")),
                             format=F.DATETIME_CSV_FORMAT)
    elif pa.types.is_decimal(t):
        return ["" if v is None else format(v, "f") for v in values.to_pylist()]
    elif t == F.JSON or t != pa.string():
        values = values.cast(pa.string())
    return ["" if v is None else v for v in values.to_pylist()]


def _atomic(path: Path, write_to: Callable[[Any], None], mode: str) -> None:
    """Write ``path`` through a temporary file in its directory, fsynced, then renamed
    over it: a reader sees the old file or the whole new one, never a half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({"newline": "", "encoding": "utf-8"} if "b" not in mode
                                else {})) as f:
            write_to(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:         # no directory handles (Windows): the rename is done anyway
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(table: pa.Table, out: str | Path) -> tuple[Path, Path]:
    """Write ``table`` as ``<out>.parquet`` (zstd) and ``<out>.csv``, each atomically;
    ``out`` may be an existing directory (files named :func:`default_name`) or carry
    either suffix. Returns (parquet path, csv path)."""
    out = Path(out)
    if out.is_dir():
        out = out / default_name(table)
    elif out.suffix in (".parquet", ".csv"):
        out = out.with_suffix("")
    parquet, csv_path = out.with_name(out.name + ".parquet"), out.with_name(out.name + ".csv")
    meta = {b"focus_version": F.FOCUS_VERSION.encode(), b"generator": b"llmspend"}
    stamped = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    _atomic(parquet, lambda f: pq.write_table(stamped, f, compression=L.COMPRESSION,
                                              compression_level=L.COMPRESSION_LEVEL), "wb")

    def rows(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(table.schema.names)
        for batch in table.to_batches(max_chunksize=65536):
            cols = [_csv_column(pa.chunked_array([c])) for c in batch.columns]
            w.writerows(zip(*cols, strict=True))
    _atomic(csv_path, rows, "w")
    return parquet, csv_path


def read_csv(path: str | Path, schema: pa.Schema = F.FOCUS) -> pa.Table:
    """A CSV written by :func:`write` back as a table of ``schema`` (exact: decimals from
    their text, times from ISO 8601 ``Z``, empty fields as null)."""
    opts = pcsv.ConvertOptions(column_types={n: pa.string() for n in schema.names},
                               strings_can_be_null=True, null_values=[""],
                               include_columns=schema.names)
    raw = pcsv.read_csv(path, convert_options=opts)
    if raw.schema.names != schema.names:
        raise ValueError(f"{path}: columns are not the FOCUS export's")
    arrays = []
    for fld in schema:
        text = raw.column(fld.name)
        if fld.type == F.DATETIME:
            arrays.append(pc.strptime(text, format=F.DATETIME_CSV_FORMAT, unit="us")
                          .cast(fld.type))
        elif fld.type == F.JSON:
            arrays.append(pa.chunked_array(
                [pa.ExtensionArray.from_storage(F.JSON, c) for c in text.chunks],
                type=F.JSON))
        else:
            arrays.append(text.cast(fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)
