"""Generator traffic turned into topic records without a broker: what the normalise
and aggregate stages would write for a plan. Benchmarks and lake tests start here so
they measure and check real records (real OTLP through the OpenTelemetry SDK, the real
normaliser and aggregator), not hand-made ones."""

from __future__ import annotations

import numpy as np
import orjson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pipeline import callbatch, otlp
from pipeline.aggregate import AggregateConfig, PartitionAggregator
from pipeline.config import Settings
from pipeline.traffic import emit as emit_mod
from pipeline.traffic.plan import Options, plan


class RequestCollector(SpanExporter):
    """Keeps each export as the OTLP protobuf bytes an exporter would send."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def export(self, spans):
        self.requests.append(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class SpanRecordCollector(SpanExporter):
    """Keeps each export as the ``otlp_spans`` record values the Kafka exporter would
    write (content hashed, split under the record limit): what benchmarks feed in."""

    def __init__(self, settings: Settings, tenant: str, key: bytes | None = None) -> None:
        self.settings, self.tenant = settings, tenant
        self.key = settings.hash_key_bytes() if key is None else key
        self.records: list[bytes] = []

    def export(self, spans):
        from pipeline.ingest.exporter import span_records

        self.records += span_records(spans, self.settings, self.tenant, self.key)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def llm_calls_records(opts: Options, settings: Settings, partitions: int
                      ) -> list[tuple[int, int, bytes]]:
    """(partition, record timestamp ms, NDJSON body) of every ``llm_calls`` record the
    normalise stage writes for ``opts``' plan, in time order (each record stamped just
    after its last call ended, as in a live pipeline)."""
    from pipeline.stream.normalise_stage import NormaliseStage

    p = plan(opts)
    sinks = {t: RequestCollector() for t in opts.tenants}
    emit_mod.emit(p, sinks, max_rate=True)
    stage = NormaliseStage(settings, partitions)
    records = []
    for tenant, sink in sinks.items():
        for i, req in enumerate(sink.requests):
            res = stage.process(req, [(otlp.TENANT_HEADER, tenant.encode())], 0, i)
            for part, body in res.outputs:
                b = callbatch.from_ndjson(body)
                ends = b.start_ms + np.nan_to_num(b.latency_ms).astype(np.int64)
                records.append((part, int(ends.max()) + 1000, body))
    records.sort(key=lambda r: r[1])
    return records


def llm_agg_1m_records(calls: list[tuple[int, int, bytes]], partitions: int,
                       config: AggregateConfig | None = None) -> list[tuple[int, bytes]]:
    """(llm_calls partition, JSON value) of every partial the aggregate stage writes for
    ``calls``, windows closed at the end by a heartbeat an hour later."""
    cfg = config or AggregateConfig()
    aggs = {p: PartitionAggregator(p, cfg) for p in range(partitions)}
    offsets = dict.fromkeys(range(partitions), 0)
    out: list[tuple[int, bytes]] = []
    for part, stamp, body in calls:
        res = aggs[part].add(callbatch.from_ndjson(body), offsets[part], stamp)
        out += [(part, orjson.dumps(r)) for r in res.partials]
        offsets[part] += 1
    last = max((r[1] for r in calls), default=0) + 3_600_000
    for part, agg in aggs.items():
        res = agg.add(callbatch.CallBatch.empty(), offsets[part], last)
        out += [(part, orjson.dumps(r)) for r in res.partials]
    return out


def llm_alerts_records(calls: list[tuple[int, int, bytes]], partitions: int
                       ) -> list[tuple[int, bytes]]:
    """(llm_calls partition, JSON value) of the session detectors' alerts for ``calls``
    (runaway loops and sessions), sessions resolved by a heartbeat an hour later."""
    from pipeline.detect import SessionDetector

    dets = {p: SessionDetector() for p in range(partitions)}
    out: list[tuple[int, bytes]] = []
    for part, stamp, body in calls:
        rows = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        out += [(part, orjson.dumps(a)) for a in dets[part].add(rows, stamp).alerts]
    last = max((r[1] for r in calls), default=0) + 3_600_000
    for part, det in dets.items():
        out += [(part, orjson.dumps(a)) for a in det.add([], last).alerts]
    return out


def with_offsets(records) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of records given as (partition, ..., value), offsets
    counted per partition from 0 in order: what a fresh topic would assign."""
    offsets: dict[int, int] = {}
    out = []
    for part, *rest in records:
        out.append((part, offsets.get(part, 0), rest[-1]))
        offsets[part] = offsets.get(part, 0) + 1
    return out


def land_lake(root, calls: list[tuple[int, int, bytes]], partitions: int,
              datasets: tuple[str, ...] = ("calls", "agg_1m", "alerts"),
              flush_records: int | None = None) -> None:
    """Land ``calls`` (from :func:`llm_calls_records`) and the partials and alerts the
    stages would derive from them in a lake at ``root``, as the sink would: one flush
    per ``flush_records`` records per dataset (None: one flush), so a test or benchmark
    can have a lake of many small files."""
    from pipeline import lake
    from pipeline.lake_fs import LocalFS
    from schemas import lake as L

    fs = LocalFS(root)
    derive = {"calls": lambda: calls, "agg_1m": lambda: llm_agg_1m_records(calls, partitions),
              "alerts": lambda: llm_alerts_records(calls, partitions)}
    for name in datasets:
        records = with_offsets(derive[name]())
        step = flush_records or max(1, len(records))
        writers: dict = {}
        for i in range(0, len(records), step):
            lake.land(fs, L.DATASETS[name], records[i:i + step], writers)


def corrected_catalog(path, model: str, factor: int = 2):
    """The shipped pricing catalog with every input price of ``model`` multiplied by
    ``factor``, written to ``path``: a catalog correction for reprice tests and benches."""
    from decimal import Decimal
    from pathlib import Path

    from pipeline import pricing

    out, inside = [], False
    for line in Path(pricing.load_catalog().origin).read_text().splitlines():
        if line.strip().startswith("model ="):
            inside = line.split("=", 1)[1].strip().strip('"') == model
        if inside and line.strip().startswith("input ="):
            value = Decimal(line.split("=", 1)[1].strip().strip('"'))
            line = line.split("=", 1)[0] + f'= "{value * factor}"'
        out.append(line)
    Path(path).write_text("\n".join(out) + "\n")
    return Path(path)
