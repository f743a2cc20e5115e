"""The FinOps FOCUS export (``llmspend export focus``): its columns, one source of truth.

FOCUS is the FinOps Open Cost and Usage Specification; this export conforms to version
:data:`FOCUS_VERSION` (the Cost and Usage dataset). Every column the export writes is a
:class:`Column` of :data:`COLUMNS`: its FOCUS name, Arrow type, whether it may be null,
its feature level in FOCUS 1.2 (Mandatory / Conditional / Recommended, or ``Custom`` for
llmspend's own ``x_`` columns), the values FOCUS allows where it lists them, and a
one-line meaning. :data:`FOCUS` is the Arrow schema, in that order: FOCUS columns first,
then the custom ones (FOCUS "Column Handling": custom columns come after and carry the
``x_`` prefix). ``pipeline/focus.py`` builds, checks and writes tables of this shape.

Types, and how the CSV renders them (FOCUS attributes NumericFormat, DateTimeFormat,
KeyValueFormat, NullHandling):

* Decimal: ``decimal128(38, 12)`` (:data:`schemas.calls.MONEY`), money and quantities
  alike, never floats; CSV: plain decimal text, no exponent (``0.000002500000``).
* DateTime: ``timestamp[us, UTC]``; CSV: ISO 8601 UTC with ``Z``,
  ``YYYY-MM-DDTHH:mm:ssZ`` (:data:`DATETIME_CSV_FORMAT`). Every FOCUS time here is a whole
  second (day and month boundaries).
* JSON (key-value, ``Tags`` and ``SkuPriceDetails``): Arrow's ``json`` extension type
  (Parquet logical type JSON, DuckDB reads it as JSON); a serialized JSON object whose
  values are strings, numbers or booleans.
* String / Boolean / Integer as themselves; CSV ``true``/``false``.
* Null: Arrow null; CSV: an empty field. No placeholder strings or zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

from schemas.calls import MONEY

FOCUS_VERSION = "1.2"
#: Custom (non-FOCUS) columns must start with this (FOCUS Column Handling).
CUSTOM_PREFIX = "x_"
#: How the CSV writes a DateTime (FOCUS DateTimeFormat).
DATETIME_CSV_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

DECIMAL = MONEY
DATETIME = pa.timestamp("us", tz="UTC")
STRING = pa.string()
JSON = pa.json_()
BOOL = pa.bool_()
INT = pa.int64()

MANDATORY, CONDITIONAL, RECOMMENDED, CUSTOM = "Mandatory", "Conditional", "Recommended", "Custom"


class Column(NamedTuple):
    name: str
    type: pa.DataType
    nullable: bool
    level: str                    # MANDATORY / CONDITIONAL / RECOMMENDED / CUSTOM
    doc: str
    allowed: tuple[str, ...] = ()  # the values FOCUS allows, when it lists them


# ------------------------------------------------------------------ allowed values

CHARGE_CATEGORIES = ("Usage", "Purchase", "Tax", "Credit", "Adjustment")
CHARGE_CLASSES = ("Correction",)
CHARGE_FREQUENCIES = ("One-Time", "Recurring", "Usage-Based")
PRICING_CATEGORIES = ("Standard", "Dynamic", "Committed", "Other")
SERVICE_CATEGORIES = (
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
    "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
    "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
    "Storage", "Web", "Other")
#: ServiceSubcategory values whose parent is "AI and Machine Learning" (the only
#: category this export uses; each subcategory has exactly one parent).
AI_SERVICE_SUBCATEGORIES = ("Bots", "Generative AI", "Machine Learning",
                            "Natural Language Processing", "Other (AI and Machine Learning)")
#: x_TokenType, named like the TokenType SKU price property of later FOCUS drafts, so a
#: query can select cache reads without matching meter names.
TOKEN_TYPES = ("Input", "CacheRead", "CacheWrite", "Output", "Reasoning")

#: Every column FOCUS 1.2 defines for the Cost and Usage dataset (a non-``x_`` column
#: outside this set is an error; a 1.2 column not in :data:`COLUMNS` is simply absent).
SPEC_COLUMNS_1_2 = frozenset({
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName",
    "BillingAccountType", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
    "CapacityReservationId", "CapacityReservationStatus", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart",
    "CommitmentDiscountCategory", "CommitmentDiscountId", "CommitmentDiscountName",
    "CommitmentDiscountQuantity", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "CommitmentDiscountUnit", "ConsumedQuantity", "ConsumedUnit", "ContractedCost",
    "ContractedUnitPrice", "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost",
    "ListUnitPrice", "PricingCategory", "PricingCurrency", "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost", "PricingCurrencyListUnitPrice", "PricingQuantity",
    "PricingUnit", "ProviderName", "PublisherName", "RegionId", "RegionName", "ResourceId",
    "ResourceName", "ResourceType", "ServiceCategory", "ServiceName", "ServiceSubcategory",
    "SkuId", "SkuMeter", "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName",
    "SubAccountType", "Tags"})

# ------------------------------------------------------------------ column names

BILLED_COST = "BilledCost"
BILLING_ACCOUNT_ID = "BillingAccountId"
BILLING_ACCOUNT_NAME = "BillingAccountName"
BILLING_CURRENCY = "BillingCurrency"
BILLING_PERIOD_END = "BillingPeriodEnd"
BILLING_PERIOD_START = "BillingPeriodStart"
CHARGE_CATEGORY = "ChargeCategory"
CHARGE_CLASS = "ChargeClass"
CHARGE_DESCRIPTION = "ChargeDescription"
CHARGE_FREQUENCY = "ChargeFrequency"
CHARGE_PERIOD_END = "ChargePeriodEnd"
CHARGE_PERIOD_START = "ChargePeriodStart"
CONSUMED_QUANTITY = "ConsumedQuantity"
CONSUMED_UNIT = "ConsumedUnit"
CONTRACTED_COST = "ContractedCost"
CONTRACTED_UNIT_PRICE = "ContractedUnitPrice"
EFFECTIVE_COST = "EffectiveCost"
INVOICE_ISSUER_NAME = "InvoiceIssuerName"
LIST_COST = "ListCost"
LIST_UNIT_PRICE = "ListUnitPrice"
PRICING_CATEGORY = "PricingCategory"
PRICING_QUANTITY = "PricingQuantity"
PRICING_UNIT = "PricingUnit"
PROVIDER_NAME = "ProviderName"
PUBLISHER_NAME = "PublisherName"
RESOURCE_ID = "ResourceId"
RESOURCE_NAME = "ResourceName"
SERVICE_CATEGORY = "ServiceCategory"
SERVICE_NAME = "ServiceName"
SERVICE_SUBCATEGORY = "ServiceSubcategory"
SKU_ID = "SkuId"
SKU_METER = "SkuMeter"
SKU_PRICE_DETAILS = "SkuPriceDetails"
SKU_PRICE_ID = "SkuPriceId"
SUB_ACCOUNT_ID = "SubAccountId"
SUB_ACCOUNT_NAME = "SubAccountName"
TAGS = "Tags"
X_TENANT = "x_Tenant"
X_SERVICE = "x_Service"
X_TEAM = "x_Team"
X_USE_CASE = "x_UseCase"
X_ENVIRONMENT = "x_Environment"
X_PROVIDER = "x_Provider"
X_MODEL = "x_Model"
X_PRICE_VERSION = "x_PriceVersion"
X_TOKEN_TYPE = "x_TokenType"
X_BATCH = "x_Batch"
X_TIER = "x_TierAboveInputTokens"
X_CALLS = "x_Calls"

_D, _T, _S, _M, _C, _R, _X = DECIMAL, DATETIME, STRING, MANDATORY, CONDITIONAL, RECOMMENDED, CUSTOM

COLUMNS: tuple[Column, ...] = (
    # --- FOCUS 1.2 Mandatory columns (all 21).
    Column(BILLED_COST, _D, False, _M, "what the tenant is invoiced for the row: its cost at "
           "negotiated prices (no amortization here, so equal to EffectiveCost)"),
    Column(BILLING_ACCOUNT_ID, _S, False, _M, "the llmspend tenant (the account billed)"),
    Column(BILLING_ACCOUNT_NAME, _S, False, _M, "display name of the billing account: the "
           "tenant"),
    Column(BILLING_CURRENCY, _S, False, _M, "ISO 4217 currency of every cost: USD"),
    Column(BILLING_PERIOD_END, _T, False, _M, "exclusive end of the billing period: the first "
           "instant of the next UTC month"),
    Column(BILLING_PERIOD_START, _T, False, _M, "inclusive start of the billing period: the "
           "exported UTC month"),
    Column(CHARGE_CATEGORY, _S, False, _M, "Usage (tokens, requests, GPU time) or Adjustment "
           "(reconciliation to the per-call priced cost)", CHARGE_CATEGORIES),
    Column(CHARGE_CLASS, _S, True, _M, "null: no row corrects a previously invoiced period",
           CHARGE_CLASSES),
    Column(CHARGE_DESCRIPTION, _S, True, _M, "self-contained summary of what the row charges "
           "and at which price"),
    Column(CHARGE_PERIOD_END, _T, False, _M, "exclusive end of the charge period: the next UTC "
           "midnight"),
    Column(CHARGE_PERIOD_START, _T, False, _M, "inclusive start of the charge period: the UTC "
           "day of the calls' start times"),
    Column(CONTRACTED_COST, _D, False, _M, "ContractedUnitPrice x PricingQuantity: the cost at "
           "the tenant's negotiated prices (llmspend has no commitments, so = EffectiveCost)"),
    Column(EFFECTIVE_COST, _D, False, _M, "cost after every discount; sums to the calls' "
           "cost_usd exactly"),
    Column(INVOICE_ISSUER_NAME, _S, False, _M, "who invoices the charge: the serving provider"),
    Column(LIST_COST, _D, False, _M, "ListUnitPrice x PricingQuantity: the cost at catalog "
           "list prices; sums to the calls' list_cost_usd exactly"),
    Column(PRICING_QUANTITY, _D, True, _M, "priced volume in PricingUnit (tokens / 1000000, "
           "requests, GPU-seconds); null on Adjustment rows"),
    Column(PRICING_UNIT, _S, True, _M, "UnitFormat unit of PricingQuantity: '1000000 Tokens', "
           "'Requests' or 'GPU-Seconds'; null on Adjustment rows"),
    Column(PROVIDER_NAME, _S, False, _M, "who made the model available: the provider that "
           "served the call (e.g. 'OpenAI', 'Microsoft' for Azure OpenAI)"),
    Column(PUBLISHER_NAME, _S, False, _M, "who produced the model: the catalog entry's "
           "provider (e.g. 'OpenAI' for gpt-4o on Azure)"),
    Column(SERVICE_CATEGORY, _S, False, _M, "always 'AI and Machine Learning'",
           SERVICE_CATEGORIES),
    Column(SERVICE_NAME, _S, False, _M, "the provider's offering (e.g. 'OpenAI API', "
           "'Azure OpenAI', 'Amazon Bedrock')"),
    # --- FOCUS 1.2 Conditional / Recommended columns that apply to priced LLM calls.
    Column(CHARGE_FREQUENCY, _S, False, _R, "always 'Usage-Based'", CHARGE_FREQUENCIES),
    Column(CONSUMED_QUANTITY, _D, True, _C, "raw consumed volume in ConsumedUnit (tokens, "
           "requests, GPU-seconds); null unless ChargeCategory is Usage"),
    Column(CONSUMED_UNIT, _S, True, _C, "'Tokens', 'Requests' or 'GPU-Seconds'; null unless "
           "ChargeCategory is Usage"),
    Column(CONTRACTED_UNIT_PRICE, _D, True, _C, "the tenant's negotiated price per PricingUnit "
           "(discount or per-model price from pricing.overrides; list price otherwise)"),
    Column(LIST_UNIT_PRICE, _D, True, _C, "catalog list price per PricingUnit (USD per million "
           "tokens as the provider publishes it; batch API prices included)"),
    Column(PRICING_CATEGORY, _S, True, _C, "'Standard' (agreed rates incl. negotiated "
           "discounts); null on Adjustment rows", PRICING_CATEGORIES),
    Column(RESOURCE_ID, _S, True, _C, "the model as served: '<provider>/<catalog model>'"),
    Column(RESOURCE_NAME, _S, True, _C, "the catalog model name"),
    Column(SERVICE_SUBCATEGORY, _S, False, _R, "always 'Generative AI'",
           AI_SERVICE_SUBCATEGORIES),
    Column(SKU_ID, _S, True, _C, "'<publisher>/<model>/<meter>', e.g. 'openai/gpt-4o/"
           "cache-read'; null on Adjustment rows"),
    Column(SKU_METER, _S, True, _C, "what is metered, e.g. 'Cache Read Input Tokens'"),
    Column(SKU_PRICE_DETAILS, JSON, True, _C, "JSON object of the SKU price's properties "
           "(x_TokenType, x_PriceEffectiveFrom, x_BatchApi, x_LongContextTier)"),
    Column(SKU_PRICE_ID, _S, True, _C, "the catalog price of the meter: '<price_version>/"
           "<meter>[/batch][/above-<n>-input-tokens]'; null on Adjustment rows"),
    Column(SUB_ACCOUNT_ID, _S, True, _C, "the calling service (OTel service.name), the "
           "container of spend within a tenant; null when the spans had none"),
    Column(SUB_ACCOUNT_NAME, _S, True, _C, "the calling service, as its display name"),
    Column(TAGS, JSON, True, _C, "JSON object of the attribution (environment, service, team, "
           "use_case) that is set; null when none is"),
    # --- llmspend's own columns.
    Column(X_TENANT, _S, False, _X, "llmspend tenant (= BillingAccountId)"),
    Column(X_SERVICE, _S, True, _X, "calls' service (resource service.name)"),
    Column(X_TEAM, _S, True, _X, "calls' team (attribution.team_keys)"),
    Column(X_USE_CASE, _S, True, _X, "calls' use case (attribution.use_case_keys)"),
    Column(X_ENVIRONMENT, _S, True, _X, "calls' environment (attribution.environment_keys)"),
    Column(X_PROVIDER, _S, False, _X, "canonical provider that served the calls (calls."
           "provider, else the catalog entry's)"),
    Column(X_MODEL, _S, False, _X, "catalog model that priced the calls"),
    Column(X_PRICE_VERSION, _S, True, _X, "catalog price version, 'provider/model@date' "
           "(calls.price_version)"),
    Column(X_TOKEN_TYPE, _S, True, _X, "Input (uncached), CacheRead, CacheWrite, Output "
           "(visible) or Reasoning; null for request fees, GPU time and Adjustment rows",
           TOKEN_TYPES),
    Column(X_BATCH, BOOL, False, _X, "the calls ran through a batch API (batch prices)"),
    Column(X_TIER, INT, True, _X, "long-context tier of the price: 0 base, n = calls with more "
           "than n input tokens; null for models not priced by tokens"),
    Column(X_CALLS, INT, False, _X, "calls that consumed this meter (on Adjustment rows: all "
           "calls of the row's group)"),
)

FOCUS = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in COLUMNS])
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
MANDATORY_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.level == MANDATORY)
DECIMAL_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.type == DECIMAL)
DATETIME_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.type == DATETIME)
JSON_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.type == JSON)
