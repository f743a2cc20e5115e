"""What each Kafka codec does to llmspend's records: size, and the CPU to write and read.

Why: every stage fetches its input through the Python clients, and reading bytes off a
socket there costs more than decompressing them (``bench_e2e``'s per-thread CPU). The
codec (``kafka.compression``) decides how many bytes move. This bench compresses the
records the pipeline writes, with the very functions the producers call
(``aiokafka.codec``, which Faust and the receivers use), one record batch at a time as the
producers cut them:

- ``otlp_spans``: generator traffic through the real OpenTelemetry SDK, sanitised and
  split as the Kafka exporter and the receivers write it (each record its own batch: they
  exceed the producers' 16 KB batch size);
- ``llm_calls``: the same traffic through the real normaliser, as the normalise stage
  writes it (each record its own batch);
- ``llm_agg_1m``: the aggregate stage's partials of those calls, 16 KB batches.

zstd is measured at Kafka's default level (3, what both client libraries write on their
own) and at the producers' level (``kafka.zstd_level``). Prints, per topic and codec:
the size ratio (uncompressed / compressed), and compress and
decompress speed in MB/s of uncompressed bytes and in us per call. The baseline, in the
same run, is ``none`` (a copy of the bytes). No broker needed; one core. Usage:
``.venv/bin/python bench/bench_compression.py [calls] [--short]`` (default 20,000 calls).
The end-to-end effect is ``bench_e2e.py`` run with ``LLMSPEND_KAFKA_COMPRESSION=none``
and with the default, alternately.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import codec

from pipeline.config import KAFKA_DEFAULT_ZSTD_LEVEL, load_settings
from pipeline.traffic import emit as emit_mod
from pipeline.traffic.offline import (
    SpanRecordCollector,
    llm_agg_1m_records,
    llm_calls_records,
)
from pipeline.traffic.plan import Options, plan

PARTITIONS = 6
BATCH_BYTES = 16384        # aiokafka's and kafka-python's default batch size
Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def codecs(zstd_level: int) -> dict[str, Codec]:
    """Each codec as the producers call it; zstd at Kafka's default level and at the
    producers' (``kafka.zstd_level``)."""
    out: dict[str, Codec] = {
        "none": (lambda b: memoryview(b).tobytes(), lambda b: memoryview(b).tobytes()),
        "gzip": (codec.gzip_encode, codec.gzip_decode),
        "snappy": (codec.snappy_encode, codec.snappy_decode),
        "lz4": (codec.lz4_encode, codec.lz4_decode),
    }
    for level in dict.fromkeys((KAFKA_DEFAULT_ZSTD_LEVEL, zstd_level)):
        out[f"zstd {level}"] = (partial(codec.zstd_encode, level=level), codec.zstd_decode)
    return out


def _batches(values: list[bytes]) -> list[bytes]:
    """Values grouped as a producer cuts batches: up to 16 KB, a larger value alone."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for v in values:
        if cur and size + len(v) > BATCH_BYTES:
            out.append(b"".join(cur))
            cur, size = [], 0
        cur.append(v)
        size += len(v)
    if cur:
        out.append(b"".join(cur))
    return out


def _best(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(batches: list[bytes], calls: int, runs: int, zstd_level: int) -> list[str]:
    raw = sum(map(len, batches))
    lines = []
    for name, (enc, dec) in codecs(zstd_level).items():
        packed = [enc(b) for b in batches]
        if [dec(p) for p in packed] != batches:
            raise SystemExit(f"{name} does not give back the records it was given")
        t_enc = _best(lambda enc=enc: [enc(b) for b in batches], runs)
        t_dec = _best(lambda dec=dec, packed=packed: [dec(p) for p in packed], runs)
        lines.append(f"    {name:7s}: ratio {raw / sum(map(len, packed)):5.2f}, compress "
                     f"{raw / t_enc / 1e6:7.0f} MB/s ({t_enc / calls * 1e6:5.2f} us a call), "
                     f"decompress {raw / t_dec / 1e6:7.0f} MB/s "
                     f"({t_dec / calls * 1e6:5.2f} us a call)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("calls", nargs="?", type=int, default=20_000)
    ap.add_argument("--short", action="store_true", help="2,000 calls, one run (CI)")
    args = ap.parse_args()
    calls = 2_000 if args.short else args.calls
    runs = 1 if args.short else 5
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    settings = load_settings()
    opts = Options(seed=7, calls=calls, start_time_ns=1_764_000_000 * 10**9,
                   tenants=("acme", "globex"))
    sinks = {t: SpanRecordCollector(settings, t) for t in opts.tenants}
    emit_mod.emit(plan(opts), sinks, max_rate=True)
    spans = [v for s in sinks.values() for v in s.records]
    llm_calls = llm_calls_records(opts, settings, PARTITIONS)
    partials = llm_agg_1m_records(llm_calls, PARTITIONS)
    n_calls = sum(body.count(b"\n") for _, _, body in llm_calls)
    print(f"traffic: {n_calls:,} calls; otlp_spans {len(spans):,} records "
          f"({sum(map(len, spans)) / 1e6:.1f} MB), llm_calls {len(llm_calls):,} records "
          f"({sum(len(r[2]) for r in llm_calls) / 1e6:.1f} MB), llm_agg_1m "
          f"{len(partials):,} partials ({sum(len(v) for _, v in partials) / 1e6:.2f} MB)")
    for topic, batches in (("otlp_spans", spans),
                           ("llm_calls", [body for _, _, body in llm_calls]),
                           ("llm_agg_1m", _batches([v for _, v in partials]))):
        print(f"{topic} ({len(batches):,} batches, "
              f"{sum(map(len, batches)) / n_calls:,.0f} bytes a call):")
        print("\n".join(measure(batches, n_calls, runs, settings.kafka.zstd_level)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
