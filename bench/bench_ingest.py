"""Receiver throughput: OTLP/HTTP protobuf batches of 512 GenAI spans, real client, loopback.

Measures, in one run on this machine:
  * receiver:  `llmspend ingest` pinned to one core (taskset), fed by HTTP clients on the
               other core with keep-alive connections; every 200 means Kafka acknowledged.
  * baseline:  the same serialised batches produced straight to Kafka (aiokafka,
               acks=all) from a process pinned to the same one core.
and prints spans/s and MB/s of both and their ratio (receiver / baseline).

    .venv/bin/python bench/bench_ingest.py [--batches 200] [--clients 4]

Needs a running broker (`llmspend up --kafka-only`).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from tests.integration.kafka_helpers import free_port

SPANS_PER_BATCH = 512
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash"]


def genai_batch(rng: random.Random, n: int = SPANS_PER_BATCH) -> bytes:
    """One export request of ``n`` realistic GenAI chat spans (with content to scrub)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (("service.name", "support-bot"), ("deployment.environment.name", "prod"),
                 ("llmspend.team", "support")):
        a = rs.resource.attributes.add()
        a.key, a.value.string_value = k, v
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai_v2"
    for _ in range(n):
        s = ss.spans.add()
        s.trace_id = rng.randbytes(16)
        s.span_id = rng.randbytes(8)
        s.parent_span_id = rng.randbytes(8)
        s.name = "chat " + rng.choice(MODELS)
        s.kind = 3
        s.start_time_unix_nano = 1_764_000_000_000_000_000 + rng.randrange(10**12)
        s.end_time_unix_nano = s.start_time_unix_nano + rng.randrange(10**8, 10**10)
        model = rng.choice(MODELS)
        for k, v in (("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                     ("gen_ai.request.model", model), ("gen_ai.response.model", model),
                     ("gen_ai.conversation.id", f"conv-{rng.randrange(10**6)}"),
                     ("user.id", f"user-{rng.randrange(1000)}"),
                     ("gen_ai.input.messages", json.dumps(
                         [{"role": "user", "parts": [{"type": "text",
                                                      "content": "x" * rng.randrange(50, 400)}]}]
                     ))):
            a = s.attributes.add()
            a.key, a.value.string_value = k, v
        for k, v in (("gen_ai.usage.input_tokens", rng.randrange(100, 8000)),
                     ("gen_ai.usage.output_tokens", rng.randrange(10, 800)),
                     ("gen_ai.usage.cache_read.input_tokens", rng.randrange(0, 100))):
            a = s.attributes.add()
            a.key, a.value.int_value = k, v
    return req.SerializeToString()


def run_receiver_bench(batches: list[bytes], clients: int) -> float:
    port = free_port()
    env = {**os.environ, "LLMSPEND_INGEST_HTTP_PORT": str(port),
           "LLMSPEND_INGEST_GRPC_PORT": str(free_port()),
           "LLMSPEND_HASH_KEY": "bench-key-0123456789abcdef"}
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "pipeline", "ingest"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.2)
        os.sched_setaffinity(0, {1})  # clients on the other core
        queue = list(batches)
        lock = threading.Lock()
        errors: list[int] = []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                conn.request("POST", "/v1/traces", body=body,
                             headers={"Content-Type": "application/x-protobuf"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(r.status)

        # Warm-up (producer connection, JIT-free but caches) outside the timing.
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        warm.request("POST", "/v1/traces", body=batches[0],
                     headers={"Content-Type": "application/x-protobuf"})
        warm.getresponse().read()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed: {set(errors)}")
        return elapsed
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def baseline_worker(payload_file: str) -> None:
    """Child process: produce the batches straight to Kafka, print the elapsed time."""
    from aiokafka import AIOKafkaProducer

    from pipeline.clients import aiokafka_config, compression_type
    from pipeline.config import load_settings

    settings = load_settings()
    data = Path(payload_file).read_bytes()
    batches, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        batches.append(data[i + 4:i + 4 + n])
        i += 4 + n

    async def go() -> float:
        p = AIOKafkaProducer(acks="all", enable_idempotence=True,
                             max_request_size=settings.kafka.max_message_bytes, linger_ms=2,
                             compression_type=compression_type(settings),
                             **aiokafka_config(settings))
        await p.start()
        await (await p.send("otlp_spans", batches[0]))
        t0 = time.perf_counter()
        futs = [await p.send("otlp_spans", b) for b in batches]
        await asyncio.gather(*futs)
        elapsed = time.perf_counter() - t0
        await p.stop()
        return elapsed

    print(asyncio.run(go()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--baseline-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        baseline_worker(args.baseline_child)
        return
    rng = random.Random(42)
    batches = [genai_batch(rng) for _ in range(args.batches)]
    total_bytes = sum(map(len, batches))
    spans = args.batches * SPANS_PER_BATCH
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmspend-bench-{os.getpid()}.bin"
    tmp.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in batches))
    try:
        out = subprocess.run(["taskset", "-c", "0", sys.executable, __file__,
                              "--baseline-child", str(tmp)], capture_output=True, text=True,
                             check=True)
        base = float(out.stdout.strip().splitlines()[-1])
    finally:
        tmp.unlink(missing_ok=True)
    recv = run_receiver_bench(batches, args.clients)
    mb = total_bytes / 1e6
    print(f"batches: {args.batches} x {SPANS_PER_BATCH} GenAI spans, {mb:.1f} MB protobuf")
    print(f"baseline  (aiokafka produce, acks=all, 1 core): {spans / base:>10,.0f} spans/s "
          f"{mb / base:7.1f} MB/s")
    print(f"receiver  (OTLP/HTTP -> scrub -> Kafka, 1 core): {spans / recv:>10,.0f} spans/s "
          f"{mb / recv:7.1f} MB/s")
    print(f"ratio receiver/baseline: {base / recv:.3f}")


if __name__ == "__main__":
    main()
