"""Shares of a worker's CPU samples per pipeline stage, from a py-spy raw profile.

py-spy comes with the ``bench`` extra (``.venv/bin/pip install -c requirements.lock -e
'.[bench]'``). Record while the worker drains a backlog (``bench_e2e.py`` prints nothing
while it does; any worker pid works), then summarise:

    .venv/bin/py-spy record --gil -p <worker pid> -d 20 -r 100 -f raw -o /tmp/spy.txt
    .venv/bin/python bench/spy_by_stage.py /tmp/spy.txt

``--gil`` samples only the thread holding the GIL: without it, threads waiting in
``select`` or for the GIL count as samples too, and the shares are not CPU shares.

A sample counts for the first stage whose function is on its stack (outermost first), so
the shares add up to 100 % with "other" (Faust, asyncio, the Kafka clients' threads).
The functions under each stage are listed with their own shares, for the next step.
"""

from __future__ import annotations

import sys
from collections import Counter

#: stage -> functions on the stack (``name (file.py``) that mark its samples. The
#: normalise stage's batches run in their own task (``to_the_end``), under ``_handle``.
STAGES = {
    "normalise": ("normalise_agent (normalise_stage.py", "process_many (normalise_stage.py"),
    "aggregate": "aggregate_agent (aggregate_stage.py",
    "detect": "detect_agent (detect_stage.py",
    "lake sink": "LakeSink.run (lake_stage.py",
    "Kafka client threads": "NetworkSelector.run_forever (selector.py",
    "Faust consumer thread": "ServiceThread._start_thread (threads.py",
}
#: Steps worth naming inside the stages.
STEPS = ["decode_record (otlp.py", "normalise (normalise_columnar.py",
         "route_calls (calls_ndjson.py", "from_table (callbatch.py",
         "from_ndjson (callbatch.py", "_fold_calls (aggregate.py",
         "partial_record (aggregate.py", "decode (lake.py", "write_parquet (lake_fs.py",
         "decode_rows (detect_stage.py", "SessionDetector.add (detect.py",
         "Producer.send (aiokafka.py", "EpollSelector.select (selectors.py"]


def _frames(stack: str) -> set[str]:
    """``function (file.py`` of every frame: the function's last dotted part and the
    file's base name, as the tables above name them."""
    out = set()
    for frame in stack.split(";"):
        func, _, where = frame.partition(" (")
        out.add(f"{func.rsplit('.', 1)[-1]} ({where.split(':')[0].rsplit('/', 1)[-1]}")
        out.add(f"{func.split('.<locals>.')[-1]} ({where.split(':')[0].rsplit('/', 1)[-1]}")
    return out


def main(path: str) -> None:
    total, stages, steps = 0, Counter(), Counter()
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = _frames(stack)
        stage = next((s for s, marks in STAGES.items()
                      if any(m in frames for m in ((marks,) if isinstance(marks, str)
                                                   else marks))), "other")
        stages[stage] += n
        for step in STEPS:
            if step in frames:
                steps[(stage, step.split(" (")[0])] += n
    print(f"{total:,} samples")
    for stage, n in stages.most_common():
        print(f"{100 * n / total:5.1f} %  {stage}")
        for (s, step), m in steps.most_common():
            if s == stage:
                print(f"         {100 * m / total:5.1f} %  {step}")


if __name__ == "__main__":
    main(sys.argv[1])
