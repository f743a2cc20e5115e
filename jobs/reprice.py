"""Reprice: recompute what calls cost after a pricing-catalog correction.

A price was wrong in the catalog for a while (a typo, a missed price change, a model
added late): fix ``schemas/pricing/catalog.toml`` (or the tenant's overrides), then
reprice the affected days. For every LLM call of those days in ``calls`` the job prices
the stored usage again (tokens, batch flag, fee counts, GPU seconds) with the current
catalog and settings, exactly as normalise does, and where ``cost_usd``,
``list_cost_usd``, ``priced`` or ``price_version`` changed it:

1. rewrites the calls files holding those rows (only those columns of only those rows);
2. adds each call's change (new minus old cost and list cost, and +-1 unpriced call
   when it became priced or unpriced; counted once per ``call_id``) to the ``agg_1m``
   partial of its (view, key, minute), so every aggregate over ``agg_1m`` shows the new
   cost (the change of a (view, key, minute) goes onto its partial with the smallest
   ``agg_id``: totals are exact, the split among partials of different source
   partitions is not meaningful anyway);
3. swaps all those files in one journaled swap (``jobs/journal.py``), after reading
   every temporary back and checking its cost sums moved by exactly the changes;
4. rolls the changed days up again (``jobs/rollup.py``).

A call whose aggregate key would change (the correction made it resolve to another
catalog model) is not repriced but counted in ``key_changed``: its minute's partials
would have to move between keys; re-run it through the stream instead (replay). The
``issues`` flags of a repriced call are left as they were. Budgets and alerts already
emitted are history and are not recomputed.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs import journal
from jobs.compact import keep_once
from jobs.partitions import Partition, partitions, read
from pipeline import pricing
from pipeline.config import Settings
from pipeline.lake_fs import LakeFS
from schemas import aggregates as G
from schemas import calls as C
from schemas import lake as L

ZERO = Decimal(0)


@dataclass
class RepriceResult:
    calls_seen: int = 0
    calls_changed: int = 0
    key_changed: int = 0
    files: int = 0
    aggregates_changed: int = 0
    aggregates_missing: int = 0
    cost_delta_usd: Decimal = ZERO
    list_cost_delta_usd: Decimal = ZERO
    days_rolled_up: int = 0
    dry_run: bool = False
    changed_call_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Pricer:
    """Prices one stored call again, as normalise would (``pipeline/normalise.py``)."""

    catalog: pricing.Catalog
    overrides: dict
    aliases: dict

    @classmethod
    def from_settings(cls, settings: Settings, catalog: pricing.Catalog | None = None
                      ) -> Pricer:
        return cls(catalog or pricing.load_catalog(settings.pricing.catalog),
                   pricing.parse_overrides(settings.pricing.overrides),
                   dict(settings.pricing.aliases))

    def quote(self, r: dict[str, Any]) -> pricing.Quote | None:
        """The call's quote now; None when normalise would not price it at all."""
        if r[C.KIND] != C.KIND_LLM or not (r[C.RESPONSE_MODEL] or r[C.REQUEST_MODEL]):
            return None
        latency_ns = None
        if r[C.END_TIME] is not None and r[C.LATENCY_MS] is not None:
            latency_ns = (_us(r[C.END_TIME]) - _us(r[C.START_TIME])) * 1000
        if r[C.INPUT_TOKENS] is None and r[C.OUTPUT_TOKENS] is None:
            entry, _ = self.catalog.resolve(r[C.RESPONSE_MODEL] or r[C.REQUEST_MODEL],
                                            r[C.PROVIDER], self.aliases)
            if entry is None or entry.unit != pricing.UNIT_GPU_SECOND:
                return None
        u = pricing.Usage(
            input_tokens=r[C.INPUT_TOKENS] or 0, output_tokens=r[C.OUTPUT_TOKENS] or 0,
            cache_read=r[C.CACHED_INPUT_TOKENS] or 0,
            cache_write=r[C.CACHE_WRITE_TOKENS] or 0,
            reasoning=r[C.REASONING_TOKENS] or 0, latency_ns=latency_ns, batch=r[C.BATCH],
            fee_counts=pricing.parse_fees(r[C.FEES]))
        return pricing.quote(self.catalog, (r[C.RESPONSE_MODEL], r[C.REQUEST_MODEL]),
                             r[C.PROVIDER], u, _us(r[C.START_TIME]) * 1000,
                             tenant=r[C.TENANT], overrides=self.overrides,
                             aliases=self.aliases)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _us(t: dt.datetime) -> int:
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


def _model_key(model: str | None, r: dict[str, Any]) -> str | None:
    """The aggregates' ``model`` key (``pipeline/callbatch.py``)."""
    return model or r[C.RESPONSE_MODEL] or r[C.REQUEST_MODEL]


_PRICE_COLUMNS = (C.MODEL, C.COST_USD, C.LIST_COST_USD, C.PRICED, C.PRICE_VERSION)
_READ = (C.CALL_ID, C.KIND, C.TENANT, C.SERVICE, C.PROVIDER, C.TEAM, C.USE_CASE, C.USER_ID,
         C.UNIT_TYPE, C.UNIT_ID, C.RESPONSE_MODEL, C.REQUEST_MODEL, C.INPUT_TOKENS,
         C.OUTPUT_TOKENS, C.CACHED_INPUT_TOKENS, C.CACHE_WRITE_TOKENS, C.REASONING_TOKENS,
         C.START_TIME, C.END_TIME, C.LATENCY_MS, C.BATCH, C.FEES, *_PRICE_COLUMNS)

#: A change to one aggregate: (view, key columns..., window_start ms) -> deltas.
AggKey = tuple
Delta = list            # [cost, list_cost, unpriced_calls]


def _reprice_file(table: pa.Table, pricer: Pricer, res: RepriceResult, window_ms: int,
                  deltas: dict[AggKey, Delta], counted: set[str]) -> pa.Table | None:
    """``table`` with its calls repriced (None: nothing changed); adds to ``deltas``."""
    rows = table.select(list(_READ)).to_pylist()
    new = {c: table.column(c).to_pylist() for c in _PRICE_COLUMNS}
    changed = False
    for i, r in enumerate(rows):
        q = pricer.quote(r)
        if q is None:
            continue
        res.calls_seen += 1
        after = (q.model, q.cost, q.list_cost, q.priced, q.price_version if q.priced else None)
        before = tuple(r[c] for c in _PRICE_COLUMNS)
        if after == before:
            continue
        if _model_key(q.model, r) != _model_key(r[C.MODEL], r):
            res.key_changed += 1
            continue
        for c, v in zip(_PRICE_COLUMNS, after, strict=True):
            new[c][i] = v
        changed = True
        cid = r[C.CALL_ID]
        if cid in counted:            # a twin of a call already counted
            continue
        counted.add(cid)
        res.calls_changed += 1
        res.changed_call_ids.add(cid)
        d_cost = (q.cost or ZERO) - (r[C.COST_USD] or ZERO)
        d_list = (q.list_cost or ZERO) - (r[C.LIST_COST_USD] or ZERO)
        d_unpriced = int(not q.priced) - int(not r[C.PRICED])
        res.cost_delta_usd += d_cost
        res.list_cost_delta_usd += d_list
        start_ms = _us(r[C.START_TIME]) // 1000
        window = start_ms - start_ms % window_ms
        model = _model_key(r[C.MODEL], r)
        keys = [(G.VIEW_GROUP, r[C.TENANT], r[C.SERVICE], r[C.PROVIDER], model, r[C.TEAM],
                 r[C.USE_CASE]),
                (G.VIEW_USER, r[C.TENANT], r[C.TEAM], r[C.USER_ID])]
        if r[C.UNIT_ID]:
            keys.append((G.VIEW_UNIT, r[C.TENANT], r[C.USE_CASE], r[C.UNIT_TYPE]))
        for k in keys:
            d = deltas.setdefault((*k, window), [ZERO, ZERO, 0])
            d[0] += d_cost
            d[1] += d_list
            d[2] += d_unpriced
    if not changed:
        return None
    out = table
    for c in _PRICE_COLUMNS:
        idx = out.schema.get_field_index(c)
        out = out.set_column(idx, out.schema.field(c), pa.array(new[c], out.schema.field(c).type))
    return out


def _agg_key(view: str, r: dict[str, Any]) -> tuple:
    return (view, *(r[c] for c in G.VIEW_KEYS[view]))


def _apply_deltas(fs: LakeFS, part: Partition | None, deltas: dict[AggKey, Delta],
                  swap: journal.Swap, expect: dict[str, Decimal], res: RepriceResult) -> None:
    """Add the day's changes to one partial per (view, key, minute) of its agg_1m
    partition (``part``; None when the lake has none for that day)."""
    if part is None:
        res.aggregates_missing += len(deltas)
        return
    tables = {f: read(fs, L.AGG_1M, [f]) for f in part.files}
    located: dict[tuple, tuple[str, str, int]] = {}     # key -> (agg_id, file, row)
    latest, _ = keep_once(L.AGG_1M, pa.concat_tables(tables.values()))
    live = set(zip(latest.column(G.AGG_ID).to_pylist(),
                   latest.column(L.KAFKA_PARTITION).to_pylist(),
                   latest.column(L.KAFKA_OFFSET).to_pylist(), strict=True))
    for f, t in tables.items():
        cols = t.select([G.AGG_ID, G.VIEW, *G.KEY_COLUMNS, G.WINDOW_START, L.KAFKA_PARTITION,
                         L.KAFKA_OFFSET]).to_pylist()
        for i, r in enumerate(cols):
            if (r[G.AGG_ID], r[L.KAFKA_PARTITION], r[L.KAFKA_OFFSET]) not in live:
                continue
            ws = r[G.WINDOW_START]
            k = (*_agg_key(r[G.VIEW], r), _us(ws) // 1000)
            if k in deltas and (k not in located or r[G.AGG_ID] < located[k][0]):
                located[k] = (r[G.AGG_ID], f, i)
    edits: dict[str, dict[int, Delta]] = defaultdict(dict)
    for k, d in deltas.items():
        if k not in located:
            res.aggregates_missing += 1
            continue
        _agg, f, i = located[k]
        edits[f][i] = d
        res.aggregates_changed += 1
    for f, rows in edits.items():
        t = tables[f]
        cost = t.column(C.COST_USD).to_pylist()
        lst = t.column(C.LIST_COST_USD).to_pylist()
        unpriced = t.column(G.UNPRICED_CALLS).to_pylist()
        for i, d in rows.items():
            cost[i] += d[0]
            lst[i] += d[1]
            unpriced[i] += d[2]
        for name, values in ((C.COST_USD, cost), (C.LIST_COST_USD, lst),
                             (G.UNPRICED_CALLS, unpriced)):
            idx = t.schema.get_field_index(name)
            t = t.set_column(idx, t.schema.field(name), pa.array(values, t.schema.field(name).type))
        swap.writes[f] = t
        expect[f] = pc.sum(tables[f].column(C.COST_USD)).as_py() + sum(
            (d[0] for d in rows.values()), ZERO)


def reprice(fs: LakeFS, settings: Settings, since: dt.date, until: dt.date,
            tenant: str | None = None, dry_run: bool = False,
            catalog: pricing.Catalog | None = None, now: dt.datetime | None = None
            ) -> RepriceResult:
    """Reprice the calls of days ``[since, until)`` (UTC), optionally of one tenant."""
    from jobs.rollup import rollup

    if not dry_run:
        # A merged file kept for readers would be a twin with the old cost.
        journal.recover(fs, force=True)
    res = RepriceResult(dry_run=dry_run)
    pricer = Pricer.from_settings(settings, catalog)
    window_ms = int(settings.aggregate.window_s * 1000)
    swap = journal.Swap("reprice")
    expect: dict[str, Decimal] = {}
    deltas_by_day: dict[tuple[str, dt.date], dict[AggKey, Delta]] = defaultdict(dict)
    counted: set[str] = set()
    for part in partitions(fs, L.CALLS):
        if not since <= part.day < until or (tenant and part.tenant != tenant):
            continue
        deltas = deltas_by_day[(part.tenant, part.day)]
        for f in part.files:
            table = read(fs, L.CALLS, [f])
            out = _reprice_file(table, pricer, res, window_ms, deltas, counted)
            if out is not None:
                swap.writes[f] = out.replace_schema_metadata(table.schema.metadata)
                expect[f] = pc.sum(out.column(C.COST_USD)).as_py() or ZERO
                res.files += 1
    agg_days = {(p.tenant, p.day): p for p in partitions(fs, L.AGG_1M)}
    for key, deltas in sorted(deltas_by_day.items()):
        if deltas:
            _apply_deltas(fs, agg_days.get(key), deltas, swap, expect, res)
    if dry_run:
        return res

    def verify(temps: dict[str, str]) -> None:
        for final, tmp in temps.items():
            ds = L.ALL_DATASETS[final.split("/", 1)[0]]
            got = pc.sum(read(fs, ds, [tmp]).column(C.COST_USD)).as_py() or ZERO
            if got != expect[final]:
                raise journal.JobError(f"reprice: {final} would sum to {got}, expected "
                                       f"{expect[final]}; lake unchanged")
    journal.apply(fs, swap, verify)
    res.days_rolled_up = rollup(fs, now or dt.datetime.now(dt.UTC),
                                settings.jobs.closed_after_s).days
    return res
