"""OTLP decode benchmark: spans/s per core of the numba columnar decoder against protobuf.

Traffic: ``llmspend generate``'s plan through the real OpenTelemetry SDK
(``pipeline/traffic``), collected as the OTLP protobuf bytes an exporter sends, in
requests of ``--batch`` spans. On the same requests, one core, best of 3 passes:

  (a) ``ExportTraceServiceRequest.ParseFromString`` alone (no batch: the floor for any
      decoder built on the protobuf library);
  (b) the reference decoder, ``otlp.request_to_batch(otlp.parse_request(body))``;
  (c) ``otlp_wire.decode_batch(body)``.

Prints spans/s of each, c/a and c/b, the fallbacks of (c) and, separately, numba's
warm-up (compile or cache load) time, which the figures exclude. Every output of (c) is
checked equal to (b) first.

Usage: ``.venv/bin/python bench/bench_decode.py [--spans 200000] [--batch 512] [--short]``
(``--short``: a small run for CI; it asserts only the equality of outputs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from pipeline import otlp
from pipeline.traffic import emit as emit_mod
from pipeline.traffic.offline import RequestCollector
from pipeline.traffic.plan import Options, plan


def generate(n_spans: int, batch: int) -> tuple[list[bytes], int]:
    """OTLP requests of about ``n_spans`` generated spans, ``batch`` per request."""
    calls = max(50, int(n_spans / 1.5))  # a plan makes ~1.55 spans per baseline call
    opts = Options(seed=5, calls=calls, start_time_ns=1_764_000_000 * 10**9)
    p = plan(opts)
    sinks = {t: RequestCollector() for t in opts.tenants}
    emit_mod.emit(p, sinks, max_rate=True, max_batch=batch)
    bodies, total = [], 0
    for body in (r for s in sinks.values() for r in s.requests):
        if total >= n_spans:
            break
        bodies.append(body)
        total += sum(len(ss.spans) for rs in ExportTraceServiceRequest.FromString(body)
                     .resource_spans for ss in rs.scope_spans)
    return bodies, total


def best_of(fn, bodies: list[bytes], passes: int = 3) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        for body in bodies:
            fn(body)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--short", action="store_true", help="small run for CI")
    args = ap.parse_args(argv)
    if args.short:
        args.spans = min(args.spans, 3_000)

    t = time.perf_counter()
    from pipeline import otlp_wire  # numba kernels: loaded from the cache or compiled

    bodies, n = generate(args.spans, args.batch)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    otlp_wire.decode_batch(bodies[0])
    warm_s = time.perf_counter() - t
    mb = sum(map(len, bodies)) / 1e6
    print(f"traffic: {n:,} spans in {len(bodies)} requests ({mb:.1f} MB, "
          f"{mb * 1e6 / max(n, 1):.0f} B/span), generated in {gen_s:.1f} s")
    print(f"numba warm-up (first decode_batch: compile or cache load): {warm_s:.2f} s")

    otlp_wire.STATS.reset()
    for body in bodies:
        got = otlp_wire.decode_batch(body)
        want = otlp.request_to_batch(otlp.parse_request(body))
        assert got.equals(want), "decode_batch differs from the reference decoder"
    print(f"equality: {len(bodies)} requests equal to the reference "
          f"(native {otlp_wire.STATS.native}, fallback {otlp_wire.STATS.fallback})")

    a = best_of(ExportTraceServiceRequest.FromString, bodies)
    b = best_of(lambda body: otlp.request_to_batch(otlp.parse_request(body)), bodies)
    otlp_wire.STATS.reset()
    c = best_of(otlp_wire.decode_batch, bodies)
    st = otlp_wire.STATS
    print(f"(a) ParseFromString only     {n / a:>12,.0f} spans/s")
    print(f"(b) reference decoder        {n / b:>12,.0f} spans/s")
    print(f"(c) otlp_wire.decode_batch   {n / c:>12,.0f} spans/s")
    print(f"c/a = {a / c:.2f}   c/b = {b / c:.2f}   (throughput ratios; >1: c is faster)")
    print(f"fallbacks in (c): {st.fallback} of {st.native + st.fallback} decodes "
          f"{dict(st.reasons) or ''}; array/kvlist values rendered in Python: "
          f"{st.json_values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
