"""Prometheus text-format metrics of a receiver, without a client library.

Counters with optional labels, and latency histograms with fixed buckets; rendered by
``/metrics`` in the Prometheus exposition format (text/plain; version=0.0.4).
"""

from __future__ import annotations

import bisect
from collections import defaultdict

PREFIX = "llmspend_ingest_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HELP = {
    "requests_total": "Export requests received, all protocols.",
    "bytes_total": "Request body bytes received (after decompression).",
    "spans_total": "Spans accepted and acknowledged by Kafka.",
    "records_total": "Kafka records produced to otlp_spans.",
    "rejected_requests_total": "Requests refused, by reason.",
    "rejected_spans_total": "Invalid spans dropped from accepted requests, by reason.",
    "content_attributes_removed_total": "Message-content attributes and events removed.",
    "kafka_errors_total": "Produce attempts that Kafka did not acknowledge.",
    "kafka_produce_seconds": "Time from produce to Kafka acknowledgement of a request.",
}


class Metrics:
    """In-process counters and histograms for one receiver process."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.hist: dict[str, list[int]] = {}
        self.hist_sum: dict[str, float] = defaultdict(float)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0)

    def observe(self, name: str, seconds: float) -> None:
        buckets = self.hist.setdefault(name, [0] * (len(LATENCY_BUCKETS) + 1))
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.hist_sum[name] += seconds

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(self.counters.items()):
            full = PREFIX + name
            if full not in seen:
                seen.add(full)
                lines += [f"# HELP {full} {HELP.get(name, name)}", f"# TYPE {full} counter"]
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{full}{{{lab}}} {value:g}" if lab else f"{full} {value:g}")
        for name, buckets in sorted(self.hist.items()):
            full = PREFIX + name
            lines += [f"# HELP {full} {HELP.get(name, name)}", f"# TYPE {full} histogram"]
            cumulative = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{full}_bucket{{le="{le}"}} {cumulative}')
            lines += [f"{full}_sum {self.hist_sum[name]:g}", f"{full}_count {cumulative}"]
        return "\n".join(lines) + "\n"
