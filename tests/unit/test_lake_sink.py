"""The lake sink's dead letters (pipeline/stream/lake_stage.py), without a broker: a
record that does not decode is acknowledged on lake.dlq before its range lands, so it
is either in the lake's dead letters or read again, never skipped unrecorded. (The
real broker path is tests/integration/test_lake.py.)"""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from pipeline import dlq, lake
from pipeline.config import load_settings
from pipeline.lake_fs import LocalFS
from pipeline.stream.lake_stage import LakeSink
from pipeline.traffic.offline import llm_calls_records
from pipeline.traffic.plan import Options
from schemas import lake as L
from schemas.topics import LAKE_DLQ


@pytest.fixture(scope="module")
def good() -> bytes:
    """One real llm_calls record (the normalise stage's NDJSON)."""
    settings = load_settings(env={"LLMSPEND_HASH_KEY": "lake-sink-unit-key-0123456789"})
    return llm_calls_records(Options(seed=4, calls=5, start_time_ns=1_764_000_000 * 10**9),
                             settings, 1)[0][2]


class Producer:
    """Records what is sent; ``fail`` makes every acknowledgement raise."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.sent = fail, []

    def send(self, topic, value=None, headers=None, **_kw):
        self.sent.append((topic, value, dict(headers)))
        f: Future = Future()
        if self.fail:
            f.set_exception(TimeoutError("no acknowledgement"))
        else:
            f.set_result(None)
        return _Ack(f)

    def close(self) -> None:
        pass


class _Ack:
    def __init__(self, f: Future) -> None:
        self.f = f

    def get(self, timeout=None):
        return self.f.result(timeout)


def _sink(tmp_path, producer: Producer) -> LakeSink:
    settings = load_settings(env={"LLMSPEND_STATE_DIR": str(tmp_path),
                                  "LLMSPEND_HASH_KEY": "lake-sink-unit-key-0123456789"})
    sink = LakeSink(settings)
    sink._dead_letters = producer
    w = sink.writers[(L.CALLS.topic, 0)] = lake.PartitionWriter(sink.fs, L.CALLS, 0)
    w.recover()
    w.start_at(0)
    return sink


def test_a_bad_record_is_dead_lettered_with_where_and_why_before_its_range_lands(
        tmp_path, good):
    producer = Producer()
    sink = _sink(tmp_path, producer)
    sink.offer(L.CALLS.topic, 0, [(0, 0, b"not json"), (0, 1, good)])
    sink.flush(commit=False)
    ((topic, value, h),) = producer.sent
    assert (topic, value) == (LAKE_DLQ, b"not json")
    assert h[dlq.SOURCE_TOPIC_HEADER] == L.CALLS.topic.encode()
    assert (h[dlq.SOURCE_PARTITION_HEADER], h[dlq.SOURCE_OFFSET_HEADER]) == (b"0", b"0")
    assert h[dlq.ERROR_HEADER]
    assert sink.stats["calls_rejected"] == 1
    assert lake.committed(LocalFS(sink.settings.lake_dir), L.CALLS) == {0: 2}
    assert sink.stats["calls_rows"] == len(good.strip().split(b"\n"))


def test_an_unacknowledged_dead_letter_fails_the_flush_and_nothing_lands(tmp_path, good):
    sink = _sink(tmp_path, Producer(fail=True))
    sink.offer(L.CALLS.topic, 0, [(0, 0, good), (0, 1, b"not json")])
    with pytest.raises(TimeoutError):
        sink.flush(commit=False)
    # Not landed: a restarted sink reads both records again.
    assert lake.committed(LocalFS(sink.settings.lake_dir), L.CALLS) == {0: 0}
