"""The pricing catalog and the exact cost of one call.

The catalog (``schemas/pricing/catalog.toml``, format in ``schemas/pricing/README.md``)
is loaded once into an immutable :class:`Catalog`. :func:`quote` prices one call from
its token counts: list cost (catalog prices) and cost to the tenant (negotiated
overrides from ``settings.pricing.overrides``).

Money is :class:`decimal.Decimal` from end to end: prices are decimal strings in the
catalog (a float there is an error), token counts are integers, and the result is
quantized once to 12 fractional digits (:data:`QUANTUM`), the scale of the ``cost_usd``
column. A call we cannot price gets ``None``, never zero.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from schemas.calls import MONEY_SCALE

QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
PER_MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
#: Enough digits that no intermediate product is ever rounded (38-digit columns).
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN,
                       traps=[decimal.InvalidOperation, decimal.Overflow])

TOKEN_PRICES = ("input", "output", "cache_read", "cache_write", "reasoning")
UNIT_TOKEN, UNIT_GPU_SECOND = "token", "gpu_second"
_MODEL_KEYS = {"provider", "model", "aliases", "alias_patterns", "unit", "batch_multiplier",
               "source", "as_of", "price", "notes"}
_PRICE_KEYS = {"effective_from", *TOKEN_PRICES, "tier", "fees", "gpu_second", "gpus"}
_TIER_KEYS = {"above_input_tokens", *TOKEN_PRICES}
_OVERRIDE_PRICE_KEYS = {*TOKEN_PRICES, "gpu_second"}


class CatalogError(ValueError):
    """The catalog or a pricing override is malformed; the message says where."""


def money(value: Any, where: str) -> Decimal:
    """A price from the catalog or settings: a decimal string, never a float."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise CatalogError(f"{where}: prices must be decimal strings (e.g. \"2.50\"), "
                           f"got {type(value).__name__} {value!r}; floats are not exact")
    try:
        d = Decimal(value.strip())
    except decimal.InvalidOperation:
        raise CatalogError(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise CatalogError(f"{where}: {value!r} must be a finite, non-negative number")
    return d


# ------------------------------------------------------------------ catalog structure


@dataclass(frozen=True)
class Prices:
    """USD per million tokens of one tier; absent cache/reasoning prices defaulted."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    reasoning: Decimal
    above_input_tokens: int = 0

    def replace(self, **changes: Decimal) -> Prices:
        return Prices(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class PriceVersion:
    """Prices in effect from ``effective_from`` (UTC midnight) until the next version."""

    effective_from: dt.date
    base: Prices | None
    tiers: tuple[Prices, ...] = ()          # highest threshold first
    fees: Mapping[str, Decimal] = field(default_factory=dict)
    gpu_second: Decimal | None = None
    gpus: int = 1

    @property
    def start_ns(self) -> int:
        d = dt.datetime.combine(self.effective_from, dt.time(), tzinfo=dt.UTC)
        return int(d.timestamp()) * 1_000_000_000

    def prices_for(self, input_tokens: int) -> Prices | None:
        """The tier of a call: above a threshold the whole call uses that tier."""
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                return tier
        return self.base


@dataclass(frozen=True)
class ModelEntry:
    """One priced model of one provider, with its dated price versions."""

    provider: str
    model: str
    aliases: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    unit: str
    batch_multiplier: Decimal | None
    source: str
    as_of: str
    versions: tuple[PriceVersion, ...]      # oldest first

    def version_at(self, start_ns: int) -> PriceVersion | None:
        """The version in effect at a call's start (None before the first one)."""
        found = None
        for v in self.versions:
            if start_ns >= v.start_ns:
                found = v
        return found

    def version_id(self, v: PriceVersion) -> str:
        return f"{self.provider}/{self.model}@{v.effective_from.isoformat()}"


class Catalog:
    """The immutable pricing catalog with a memo of model-name resolutions."""

    def __init__(self, entries: tuple[ModelEntry, ...], origin: str = "") -> None:
        self.entries = entries
        self.origin = origin
        index: dict[str, list[ModelEntry]] = {}
        for e in entries:
            for name in (e.model, *e.aliases):
                index.setdefault(name.lower(), []).append(e)
        self._index = {k: tuple(v) for k, v in index.items()}
        self._memo: dict[tuple[str, str | None, tuple], tuple[ModelEntry | None, str]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, provider: str, model: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.provider == provider and e.model == model),
                    None)

    def _lookup(self, name: str) -> tuple[ModelEntry, ...]:
        key = name.strip().lower()
        tries = [key]
        if "/" in key:          # "models/gemini-2.5-pro", "openai/gpt-4o"
            tries.append(key.rsplit("/", 1)[1])
        for k in tries:
            if k in self._index:
                return self._index[k]
        for k in tries:
            hits = tuple(e for e in self.entries if any(p.fullmatch(k) for p in e.patterns))
            if hits:
                return hits
        return ()

    def resolve(self, name: str, provider: str | None,
                aliases: Mapping[str, str] | None = None) -> tuple[ModelEntry | None, str]:
        """(entry, issue) for a model name as a span reports it.

        ``aliases`` (``settings.pricing.aliases``, e.g. Azure deployment names) are tried
        first. Among entries of the same name the span's provider wins; an entry of
        another provider still prices the call (Azure and Bedrock list prices equal the
        model maker's) with the issue ``provider_fallback``.
        """
        akey = tuple(sorted((aliases or {}).items()))
        memo_key = (name, provider, akey)
        if memo_key not in self._memo:
            lowered = {str(k).lower(): str(v) for k, v in (aliases or {}).items()}
            target = lowered.get(name.strip().lower(), name)
            hits = self._lookup(target)
            if not hits:
                self._memo[memo_key] = (None, "")
            else:
                same = [e for e in hits if e.provider == provider]
                issue = "" if same or provider is None else "provider_fallback"
                self._memo[memo_key] = ((same or sorted(hits, key=lambda e: e.provider))[0],
                                        issue)
        return self._memo[memo_key]


# ------------------------------------------------------------------ loading


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise CatalogError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _unknown(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise CatalogError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")


def _prices(d: Mapping[str, Any], where: str, above: int = 0) -> Prices:
    for k in ("input", "output"):
        if k not in d:
            raise CatalogError(f"{where}: {k} price is required")
    inp = money(d["input"], f"{where}.input")
    out = money(d["output"], f"{where}.output")
    get = lambda k, default: money(d[k], f"{where}.{k}") if k in d else default  # noqa: E731
    return Prices(input=inp, output=out, cache_read=get("cache_read", inp),
                  cache_write=get("cache_write", inp), reasoning=get("reasoning", out),
                  above_input_tokens=above)


def _tier(t: Mapping[str, Any], base: Prices, where: str) -> Prices:
    _unknown(t, _TIER_KEYS, where)
    above = t.get("above_input_tokens")
    if not isinstance(above, int) or isinstance(above, bool) or above <= 0:
        raise CatalogError(f"{where}.above_input_tokens: a positive integer is required")
    merged = {k: t[k] for k in TOKEN_PRICES if k in t}
    for k in ("input", "output"):
        merged.setdefault(k, str(getattr(base, k)))
    return _prices(merged, where, above)


def _version(p: Mapping[str, Any], unit: str, where: str) -> PriceVersion:
    _unknown(p, _PRICE_KEYS, where)
    if "effective_from" not in p:
        raise CatalogError(f"{where}: effective_from is required")
    eff = _date(p["effective_from"], f"{where}.effective_from")
    fees = {str(k): money(v, f"{where}.fees.{k}") for k, v in (p.get("fees") or {}).items()}
    if unit == UNIT_GPU_SECOND:
        if "gpu_second" not in p:
            raise CatalogError(f"{where}: gpu_second price is required for unit gpu_second")
        gpus = p.get("gpus", 1)
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise CatalogError(f"{where}.gpus: a positive integer is required")
        return PriceVersion(eff, None, (), fees, money(p["gpu_second"], f"{where}.gpu_second"),
                            gpus)
    base = _prices(p, where)
    tiers = tuple(sorted((_tier(t, base, f"{where}.tier[{i}]")
                          for i, t in enumerate(p.get("tier") or [])),
                         key=lambda t: -t.above_input_tokens))
    return PriceVersion(eff, base, tiers, fees)


def _entry(m: Mapping[str, Any], i: int) -> ModelEntry:
    where = f"model[{i}]"
    _unknown(m, _MODEL_KEYS, where)
    for k in ("provider", "model", "source", "as_of", "price"):
        if not m.get(k):
            raise CatalogError(f"{where}: {k} is required")
    where = f"model {m['provider']}/{m['model']}"
    unit = m.get("unit", UNIT_TOKEN)
    if unit not in (UNIT_TOKEN, UNIT_GPU_SECOND):
        raise CatalogError(f"{where}: unit must be {UNIT_TOKEN} or {UNIT_GPU_SECOND}")
    versions = sorted((_version(p, unit, f"{where} price[{j}]")
                       for j, p in enumerate(m["price"])), key=lambda v: v.effective_from)
    dates = [v.effective_from for v in versions]
    if len(set(dates)) != len(dates):
        raise CatalogError(f"{where}: two prices with the same effective_from")
    try:
        patterns = tuple(re.compile(p, re.IGNORECASE) for p in m.get("alias_patterns", ()))
    except re.error as exc:
        raise CatalogError(f"{where}: bad alias pattern: {exc}") from None
    batch = m.get("batch_multiplier")
    return ModelEntry(
        provider=str(m["provider"]), model=str(m["model"]),
        aliases=tuple(str(a) for a in m.get("aliases", ())), patterns=patterns, unit=unit,
        batch_multiplier=None if batch is None else money(batch, f"{where}.batch_multiplier"),
        source=str(m["source"]), as_of=_date(m["as_of"], f"{where}.as_of").isoformat(),
        versions=tuple(versions))


def parse_catalog(text: str, origin: str = "<catalog>") -> Catalog:
    """A Catalog from TOML text; CatalogError names the entry and key at fault."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{origin}: {exc}") from None
    if doc.get("format") != 1:
        raise CatalogError(f"{origin}: expected format = 1")
    _unknown(doc, {"format", "model"}, origin)
    entries = tuple(_entry(m, i) for i, m in enumerate(doc.get("model", [])))
    seen = set()
    for e in entries:
        if (e.provider, e.model) in seen:
            raise CatalogError(f"{origin}: {e.provider}/{e.model} is listed twice")
        seen.add((e.provider, e.model))
    return Catalog(entries, origin)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalog file (default: the one shipped in ``schemas/pricing``)."""
    from schemas import SCHEMAS_DIR

    p = Path(path) if path else SCHEMAS_DIR / "pricing" / "catalog.toml"
    try:
        text = p.read_text()
    except OSError as exc:
        raise CatalogError(f"pricing catalog {p}: {exc}") from None
    return parse_catalog(text, str(p))


# ------------------------------------------------------------------ tenant overrides


@dataclass(frozen=True)
class TenantOverride:
    """Negotiated terms of one tenant: a discount on list, and/or per-model prices."""

    discount: Decimal | None = None
    models: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)


def parse_overrides(raw: Mapping[str, Any]) -> dict[str, TenantOverride]:
    """``settings.pricing.overrides`` validated: ``{tenant: {discount, models}}``."""
    out: dict[str, TenantOverride] = {}
    for tenant, spec in (raw or {}).items():
        where = f"pricing.overrides.{tenant}"
        if not isinstance(spec, Mapping):
            raise CatalogError(f"{where}: expected a table")
        _unknown(spec, {"discount", "models"}, where)
        discount = None
        if "discount" in spec:
            discount = money(spec["discount"], f"{where}.discount")
            if discount > 1:
                raise CatalogError(f"{where}.discount: a fraction between 0 and 1")
        models = {}
        for model, prices in (spec.get("models") or {}).items():
            if not isinstance(prices, Mapping):
                raise CatalogError(f"{where}.models.{model}: expected a table")
            _unknown(prices, _OVERRIDE_PRICE_KEYS, f"{where}.models.{model}")
            models[str(model).lower()] = {k: money(v, f"{where}.models.{model}.{k}")
                                          for k, v in prices.items()}
        out[str(tenant)] = TenantOverride(discount, models)
    return out


# ------------------------------------------------------------------ pricing one call


@dataclass(frozen=True)
class Usage:
    """What a call consumed, canonical (input includes cache, output includes reasoning)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    latency_ns: int | None = None
    batch: bool = False
    fee_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Quote:
    """The price of one call; costs are None when it could not be priced."""

    model: str | None = None
    provider: str | None = None
    price_version: str | None = None
    list_cost: Decimal | None = None
    cost: Decimal | None = None
    issues: tuple[str, ...] = ()

    @property
    def priced(self) -> bool:
        return self.cost is not None


def fees_text(counts: Mapping[str, int]) -> str | None:
    """Fee counts as the calls table keeps them: ``web_search=2,code_exec=1``."""
    return ",".join(f"{k}={n}" for k, n in sorted(counts.items()) if n) or None


def parse_fees(text: str | None) -> dict[str, int]:
    """The inverse of :func:`fees_text`."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        name, sep, n = part.partition("=")
        if sep and name.strip():
            out[name.strip()] = int(n)
    return out


def _token_cost(p: Prices, u: Usage) -> Decimal:
    """Each token part at its own rate: uncached input, cache read/write, output, reasoning."""
    uncached = u.input_tokens - u.cache_read - u.cache_write
    visible_out = u.output_tokens - u.reasoning
    total = (uncached * p.input + u.cache_read * p.cache_read + u.cache_write * p.cache_write
             + visible_out * p.output + u.reasoning * p.reasoning)
    return _CTX.divide(total, PER_MILLION)


def _gpu_cost(gpu_second: Decimal, gpus: int, latency_ns: int) -> Decimal:
    return _CTX.multiply(gpu_second * gpus, _CTX.divide(Decimal(latency_ns), Decimal(10**9)))


def _cost(entry: ModelEntry, v: PriceVersion, u: Usage, price_changes: Mapping[str, Decimal],
          issues: list[str]) -> Decimal | None:
    """Cost of a call at one version's prices, with ``price_changes`` replacing some."""
    with decimal.localcontext(_CTX):
        if entry.unit == UNIT_GPU_SECOND:
            if u.latency_ns is None:
                issues.append("gpu_pricing_needs_latency")
                return None
            rate = price_changes.get("gpu_second", v.gpu_second)
            return _gpu_cost(rate, v.gpus, u.latency_ns)
        prices = v.prices_for(u.input_tokens)
        tokens = {k: val for k, val in price_changes.items() if k in TOKEN_PRICES}
        cost = _token_cost(prices.replace(**tokens) if tokens else prices, u)
        if u.batch:
            if entry.batch_multiplier is None:
                issues.append("batch_discount_unknown")
            else:
                cost *= entry.batch_multiplier
        for fee, count in u.fee_counts.items():
            if count and fee in v.fees:
                cost += v.fees[fee] * count
            elif count:
                issues.append(f"fee_unpriced_{fee}")
        return cost


def to_money(d: Decimal) -> Decimal:
    """``d`` at the money scale (12 places, half-even), in the 60-digit pricing context:
    the default context's 28 digits would fail from 1e16 USD on."""
    return d.quantize(QUANTUM, context=_CTX)


def _q(d: Decimal | None) -> Decimal | None:
    return None if d is None else to_money(d)


def quote(catalog: Catalog, models: tuple[str | None, ...], provider: str | None,
          usage: Usage, start_ns: int, *, tenant: str = "",
          overrides: Mapping[str, TenantOverride] | None = None,
          aliases: Mapping[str, str] | None = None) -> Quote:
    """Price one call. ``models`` in order of preference (response model, request model).

    List cost uses catalog prices; the tenant's cost applies its per-model prices (net,
    no further discount) or else its discount. Unknown model: unpriced (None costs).
    """
    issues: list[str] = []
    entry, how = None, ""
    for i, name in enumerate(m for m in models if m):
        entry, how = catalog.resolve(name, provider, aliases)
        if entry is not None:
            if i:
                issues.append("response_model_not_in_catalog")
            break
    if entry is None:
        return Quote(issues=("model_not_in_catalog",) if any(models) else ())
    if how:
        issues.append(how)
    v = entry.version_at(start_ns)
    if v is None:
        issues.append("before_first_price")
        return Quote(entry.model, entry.provider, None, issues=tuple(issues))
    list_cost = _cost(entry, v, usage, {}, issues)
    cost = list_cost
    term = (overrides or {}).get(tenant)
    if term is not None and list_cost is not None:
        mine = next((term.models[n.lower()] for n in (entry.model, *entry.aliases)
                     if n.lower() in term.models), None)
        if mine is not None:
            cost = _cost(entry, v, usage, mine, [])
        elif term.discount is not None:
            cost = _CTX.multiply(list_cost, 1 - term.discount)
    return Quote(entry.model, entry.provider, entry.version_id(v), _q(list_cost), _q(cost),
                 tuple(dict.fromkeys(issues)))
