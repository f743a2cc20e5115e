"""Traffic generator speed: planning, and emission through the real OpenTelemetry SDK.

Measures, on one core, for N baseline calls (default 20,000):

  (p) planning: ``pipeline.traffic.plan.plan`` (sessions, arrivals and tokens replayed
      from the Azure traces, latency model);
  (n) emission through the SDK to an exporter that drops everything (the SDK's own cost);
  (o) emission through the SDK with OTLP protobuf encoding (what a stock exporter does
      before it touches the network).

Prints spans/s for each and the ratio (o)/(n). End to end through the receivers, run
``llmspend generate --max-rate`` (its summary prints spans/s). Usage:
``.venv/bin/python bench/bench_generate.py [calls]``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pipeline.traffic import emit as emit_mod
from pipeline.traffic.plan import Options, plan


class _Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _Encode(_Drop):
    def export(self, spans):
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    opts = Options(seed=3, calls=calls, start_time_ns=1_764_000_000 * 10**9)
    t = time.perf_counter()
    p = plan(opts)
    plan_s = time.perf_counter() - t
    spans = len(p.spans)
    rates = {}
    for name, exporter in (("null", _Drop()), ("otlp", _Encode())):
        t = time.perf_counter()
        emit_mod.emit(p, {"default": exporter}, max_rate=True)
        rates[name] = spans / (time.perf_counter() - t)
    print(f"plan: {calls} baseline calls -> {spans} spans")
    print(f"(p) planning                    : {spans / plan_s:10,.0f} spans/s")
    print(f"(n) SDK emission, null exporter : {rates['null']:10,.0f} spans/s")
    print(f"(o) SDK emission + OTLP encoding: {rates['otlp']:10,.0f} spans/s")
    print(f"ratio (o)/(n): {rates['otlp'] / rates['null']:.2f}")


if __name__ == "__main__":
    main()
