"""Baseline for bench_aggregate.py: the plainest Faust agent, counting one-call records.

Run by the benchmark as ``python bench/faust_count_baseline.py worker``: reads
``BENCH_TOPIC`` from the start, counts events until ``BENCH_N``, writes
"first_event_time last_event_time count" to ``BENCH_OUT`` and stops the worker.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust

from pipeline.clients import faust_broker_config
from pipeline.config import load_settings

settings = load_settings()
app = faust.App(f"llmspend-bench-baseline-{uuid.uuid4().hex[:8]}",
                **faust_broker_config(settings), value_serializer="raw",
                topic_allow_declare=False, topic_disable_leader=True, web_enabled=False,
                consumer_auto_offset_reset="earliest", store="memory://",
                datadir=os.environ["BENCH_STATE"])
topic = app.topic(os.environ["BENCH_TOPIC"], value_type=bytes, value_serializer="raw")
N = int(os.environ["BENCH_N"])
state = {"n": 0, "first": 0.0}


@app.agent(topic)
async def count(stream):
    async for _value in stream:
        if not state["n"]:
            state["first"] = time.perf_counter()
        state["n"] += 1
        if state["n"] == N:
            Path(os.environ["BENCH_OUT"]).write_text(
                f"{state['first']} {time.perf_counter()} {N}\n")
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    app.main()
