"""Normalise + price throughput against protobuf parsing of the same bytes, on one core.

Builds N realistic OTLP export requests (default 200 x 512 spans) mixing the four
conventions (semconv, OpenLLMetry, OpenInference, OpenLIT), with agent, tool and
non-GenAI spans among the calls, then measures:

  (a) baseline: ``ExportTraceServiceRequest.ParseFromString`` of every request;
  (b) ``pipeline.otlp.decode_record`` + the row-by-row reference ``pipeline.normalise``;
  (c) ``pipeline.otlp.decode_record`` + ``pipeline.normalise_columnar`` (what the stage
      runs), one request per batch, then (c8) eight requests per batch (``records=``,
      each request still normalised as if alone: checked equal to (c)), and (n8) its
      normalise and price alone;

checks that (b) and (c) give equal tables, and prints every rate in spans/s and the
ratios against (a) and (b); then (w) the ``llm_calls`` records of those calls, by the
reference ``calls_to_ndjson`` and by ``calls_ndjson.route`` (checked: the same lines);
then (g) the same stages on the generator's traffic as the Kafka exporter writes it
(real OTel SDK spans, content hashed, errors without usage), which the synthetic
requests above do not resemble closely enough; and (gc) its decode and normalise again,
best of 3 back to back against best of 3 with 20 ms idle before each record and batch
(as in the worker, where other threads run in between). Usage:
``.venv/bin/python bench/bench_normalise.py [requests] [spans_per_request] [--short]``
(``--short``: 8 x 128 spans, for CI, which reads only the exit status).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from pipeline import calls_ndjson, normalise_columnar, otlp, otlp_wire, pricing
from pipeline.config import Settings
from pipeline.normalise import calls_to_ndjson, normalise
from pipeline.traffic.emit import emit
from pipeline.traffic.offline import SpanRecordCollector
from pipeline.traffic.plan import Options, plan

T0 = 1_760_000_000 * 10**9
MODELS = ["gpt-4o-mini", "gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929", "gpt-5",
          "gemini-2.5-flash", "claude-haiku-4-5", "o4-mini", "unknown-model-x"]


def _kv(k: str, v) -> KeyValue:
    if isinstance(v, bool):
        return KeyValue(key=k, value=AnyValue(bool_value=v))
    if isinstance(v, int):
        return KeyValue(key=k, value=AnyValue(int_value=v))
    if isinstance(v, float):
        return KeyValue(key=k, value=AnyValue(double_value=v))
    return KeyValue(key=k, value=AnyValue(string_value=v))


def _llm_attrs(rng: random.Random, conv: str) -> dict:
    model = rng.choice(MODELS)
    inp, out = rng.randrange(200, 20_000), rng.randrange(10, 2_000)
    cached = rng.randrange(0, inp // 2)
    if conv == "semconv":
        return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model, "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
                "gen_ai.usage.cache_read.input_tokens": cached,
                "gen_ai.conversation.id": f"conv-{rng.randrange(1000)}",
                "server.address": "api.openai.com", "llmspend.prompt_hash": "ab" * 16,
                "llmspend.last_message_hash": "cd" * 16, "user.id": "u-1"}
    if conv == "openllmetry":
        return {"llm.request.type": "chat", "gen_ai.system": "openai",
                "gen_ai.request.model": model, "gen_ai.usage.prompt_tokens": inp,
                "gen_ai.usage.completion_tokens": out, "llm.usage.total_tokens": inp + out,
                "gen_ai.usage.cache_read_input_tokens": cached, "llm.is_streaming": False}
    if conv == "openinference":
        return {"openinference.span.kind": "LLM", "llm.model_name": model,
                "llm.provider": "openai", "llm.token_count.prompt": inp,
                "llm.token_count.completion": out, "llm.token_count.total": inp + out,
                "session.id": f"s-{rng.randrange(1000)}"}
    return {"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
            "gen_ai.request.model": model, "gen_ai.usage.input_tokens": inp,
            "gen_ai.usage.output_tokens": out, "gen_ai.usage.cache_read.input_tokens": cached,
            "gen_ai.usage.cost": 0.0123, "gen_ai.server.time_to_first_token": 0.4}


def build_request(rng: random.Random, n_spans: int) -> bytes:
    """One export request: traces of an agent span, tool spans, LLM calls, HTTP spans."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in {"service.name": "bench-svc", "deployment.environment.name": "prod",
                 "team": "search"}.items():
        rs.resource.attributes.append(_kv(k, v))
    ss = rs.scope_spans.add()
    ss.scope.name = "bench"
    agent_id, trace_id = b"", b""
    for i in range(n_spans):
        s = ss.spans.add()
        if i % 16 == 0:                      # one trace per agent run of 16 spans
            trace_id = rng.randbytes(15) + b"\x01"
        s.trace_id = trace_id
        s.span_id = rng.randbytes(7) + b"\x01"
        s.start_time_unix_nano = T0 + i * 1_000_000
        s.end_time_unix_nano = s.start_time_unix_nano + rng.randrange(10**8, 5 * 10**9)
        r = i % 16
        if r == 0:
            attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}
            agent_id = s.span_id
        elif r in (1, 2):
            attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                     "llmspend.tool_args_hash": "ef" * 16}
        elif r == 3:
            attrs = {"http.request.method": "GET", "url.full": "https://example.com/x"}
        else:
            attrs = _llm_attrs(rng, ("semconv", "openllmetry", "openinference",
                                     "openlit")[r % 4])
        s.parent_span_id = agent_id if r else b""
        s.name = "span"
        s.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return req.SerializeToString()


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--short"]
    short = "--short" in sys.argv        # CI: a small run that checks equality only
    n_req = int(args[0]) if args else (8 if short else 200)
    n_spans = int(args[1]) if len(args) > 1 else (128 if short else 512)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = random.Random(42)
    bodies = [build_request(rng, n_spans) for _ in range(n_req)]
    total = n_req * n_spans
    mb = sum(map(len, bodies)) / 1e6
    settings, catalog, key = Settings(), pricing.load_catalog(), b"k" * 32
    otlp_wire.warm_up()        # as the stage does at start: kernels loaded, not timed

    parse_s, batches, decode_s = parse_and_decode(bodies)
    calls = 0
    t = time.perf_counter()
    for spans in batches:
        calls += normalise(spans, settings, catalog, key).calls.num_rows
    ref_s = decode_s + time.perf_counter() - t

    col = normalise_columnar.normalise
    col(batches[0], settings, catalog, key)
    t = time.perf_counter()
    tables = [col(spans, settings, catalog, key).calls for spans in batches]
    col_s = decode_s + time.perf_counter() - t
    # What the stage does: 8 records in one batch, each normalised as if alone.
    big = by_batch(batches)
    t = time.perf_counter()
    tables8 = [col(spans, settings, catalog, key, records=sizes).calls for spans, sizes in big]
    col8_s = decode_s + time.perf_counter() - t
    same = all(c.equals(normalise(s, settings, catalog, key).calls)
               for c, s in zip(tables[:5], batches[:5], strict=True)) and \
        pa.concat_tables(tables8).equals(pa.concat_tables(tables))

    calls_ndjson.warm_up()
    t = time.perf_counter()
    ref_lines = [calls_to_ndjson(c) for c in tables]
    lines_s = time.perf_counter() - t
    t = time.perf_counter()
    routed = [calls_ndjson.route(c, 6) for c in tables]
    route_s = time.perf_counter() - t
    same_bytes = all(sorted(b"".join(body for _, body in r).splitlines()) == sorted(lines)
                     for r, lines in zip(routed, ref_lines, strict=True))

    print(f"input: {n_req} requests x {n_spans} spans = {total} spans, {mb:.1f} MB, "
          f"{calls} calls, one core")
    rows = [("(a) protobuf ParseFromString", parse_s),
            ("(b) decode_record + reference", ref_s),
            ("(c) decode_record + columnar", col_s),
            ("(c8) same, 8 requests a batch", col8_s)]
    for label, secs in rows:
        print(f"{label:32s}: {total / secs:12,.0f} spans/s ({secs:.2f} s)")
    print(f"    of which decode_record      : {total / decode_s:12,.0f} spans/s "
          f"({decode_s:.2f} s)")
    print(f"    and normalise + price (n8)  : {total / (col8_s - decode_s):12,.0f} spans/s "
          f"({col8_s - decode_s:.2f} s)")
    print(f"columnar equals reference on the first 5 batches, (c8) equals (c): {same}")
    print(f"(w) llm_calls records, reference calls_to_ndjson: {calls / lines_s:10,.0f} calls/s; "
          f"calls_ndjson.route (6 partitions): {calls / route_s:10,.0f} calls/s "
          f"({lines_s / route_s:.1f}x), same lines: {same_bytes}")
    print(f"ratios: (c)/(a) {parse_s / col_s:.3f}, (c8)/(a) {parse_s / col8_s:.3f}, "
          f"(c)/(b) {ref_s / col_s:.1f}x, (c8)/(b) {ref_s / col8_s:.1f}x")
    same_g = generator_traffic(600 if short else 20_000, settings, catalog, key)
    if not (same and same_bytes and same_g):
        sys.exit(1)


def parse_and_decode(bodies: list[bytes]) -> tuple[float, list[pa.Table], float]:
    """(seconds of ParseFromString of every body, their decoded batches, seconds of
    ``decode_record``): the floor and the decoder on the same bytes."""
    t = time.perf_counter()
    for b in bodies:
        ExportTraceServiceRequest().ParseFromString(b)
    parse_s = time.perf_counter() - t
    t = time.perf_counter()
    batches = [otlp.decode_record(b) for b in bodies]
    return parse_s, batches, time.perf_counter() - t


def by_batch(batches: list[pa.Table], k: int = 8) -> list[tuple[pa.Table, list[int]]]:
    """``k`` records a batch, as the stage batches them: (spans, each record's size)."""
    return [(pa.concat_tables(batches[i:i + k]), [b.num_rows for b in batches[i:i + k]])
            for i in range(0, len(batches), k)]


def generator_traffic(n_calls: int, settings: Settings, catalog: pricing.Catalog,
                      key: bytes) -> bool:
    """(g): the generator's traffic (the real OTel SDK, content hashed, errors and
    timeouts, agents and tools) as ``otlp_spans`` records, batched as the stage batches
    them (``stream.normalise_batch_records``); checks the first batch against the
    reference."""
    sink = SpanRecordCollector(settings, "default", key)
    emit(plan(Options(seed=17, calls=n_calls, service_prefix="bench-", rate=100.0,
                      start_time_ns=time.time_ns())), {"default": sink}, max_rate=True)
    records = sink.records
    parse_s, batches, decode_s = parse_and_decode(records)
    spans = sum(b.num_rows for b in batches)
    k = settings.stream.normalise_batch_records
    groups = by_batch(batches, k)
    col = normalise_columnar.normalise
    col(*groups[0][:1], settings, catalog, key, records=groups[0][1])   # quotes cached
    t = time.perf_counter()
    tables = [col(sp, settings, catalog, key, records=sizes).calls for sp, sizes in groups]
    norm_s = time.perf_counter() - t
    calls = sum(c.num_rows for c in tables)
    t = time.perf_counter()
    for c in tables:
        calls_ndjson.route_calls(c, 6)
    route_s = time.perf_counter() - t
    same = tables[0].equals(pa.concat_tables([normalise(b, settings, catalog, key).calls
                                              for b in batches[:k]]))
    print(f"(g) generator traffic as otlp_spans records: {len(records)} records, "
          f"{spans} spans, {calls} calls")
    for label, secs in (("(ga) ParseFromString", parse_s), ("(gd) decode_record", decode_s),
                        (f"(gn) normalise + price, {k} a batch", norm_s),
                        ("(gw) route_calls (llm_calls lines)", route_s)):
        print(f"    {label:36s}: {spans / secs:12,.0f} spans/s, "
              f"{secs / calls * 1e6:6.2f} us a call")
    total = decode_s + norm_s
    print(f"    decode + normalise + price          : {spans / total:12,.0f} spans/s, "
          f"{parse_s / total:.3f} of (ga); equals the reference on the first batch: {same}")
    if n_calls >= 10_000:                  # not in CI's short run
        cold(records, groups, calls, settings, catalog, key)
    return same


def cold(records: list[bytes], groups: list, calls: int, settings: Settings,
         catalog: pricing.Catalog, key: bytes, gap_s: float = 0.02) -> None:
    """(gc): decode and normalise again, each record and batch after ``gap_s`` idle, CPU
    time of the calls only, against the same back to back. In the worker other threads
    and processes run between two records; after an idle gap the caches hold their
    data, not ours, so each step starts cold. Best of 3 for both."""
    col = normalise_columnar.normalise

    def cpu(gap: float) -> tuple[float, float]:
        dec = norm = 0.0
        for body in records:
            if gap:
                time.sleep(gap)
            t = time.thread_time()
            otlp.decode_record(body)
            dec += time.thread_time() - t
        for sp, sizes in groups:
            if gap:
                time.sleep(gap)
            t = time.thread_time()
            col(sp, settings, catalog, key, records=sizes)
            norm += time.thread_time() - t
        return dec, norm

    warm = [cpu(0.0) for _ in range(3)]
    gapped = [cpu(gap_s) for _ in range(3)]
    for label, i in (("decode_record", 0), ("normalise + price", 1)):
        w, c = min(r[i] for r in warm), min(r[i] for r in gapped)
        print(f"    (gc) {label:31s}: {w / calls * 1e6:6.2f} us a call back to back, "
              f"{c / calls * 1e6:6.2f} after {gap_s * 1000:.0f} ms idle ({c / w:.2f}x)")


if __name__ == "__main__":
    main()
