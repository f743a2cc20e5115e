"""The Kafka client settings every producer gets (pipeline/clients.py)."""

from __future__ import annotations

import cramjam
import pytest
import zstandard

from pipeline.clients import compression_type, use_zstd_level
from pipeline.config import load_settings

#: NDJSON lines like llm_calls: compressible, and long enough for levels to differ.
_VALUES = [(f'{{"call_id":"{i:032x}","tenant":"acme","service":"support-{i % 7}",'
            f'"model":"gpt-4o-mini","input_tokens":{i * 37 % 5000},'
            f'"cost_usd":"0.{i * 7919:012d}"}}\n' * 8).encode() for i in range(300)]


#: Kafka's codec ids in a record batch's attributes, and the v2 batch header's size.
NONE, ZSTD, HEADER = 0, 4, 61


def _batch(builder_cls, codec: int) -> bytes:
    b = builder_cls(2, codec, 0, -1, -1, -1, 1 << 24)
    for i, v in enumerate(_VALUES):
        b.append(i, 1_700_000_000_000 + i, None, v, [])
    return bytes(b.build())


def _records_section(builder_cls, codec: int) -> bytes:
    return _batch(builder_cls, codec)[HEADER:]


@pytest.fixture
def restore_level():
    yield
    use_zstd_level(load_settings(env={}).kafka.zstd_level)


@pytest.mark.parametrize("level", [1, 9])
def test_aiokafka_batches_are_zstd_at_the_set_level(level, restore_level):
    """The builder aiokafka's producers use (the compiled one when installed) compresses
    a batch's records exactly as zstd at ``level`` does."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder as B

    use_zstd_level(level)
    raw = _records_section(B, NONE)
    assert _records_section(B, ZSTD) == bytes(cramjam.zstd.compress(raw, level=level))


@pytest.mark.parametrize("level", [1, 9])
def test_kafka_python_batches_are_zstd_at_the_set_level(level, restore_level):
    from kafka.record.default_records import DefaultRecordBatchBuilder as B

    use_zstd_level(level)
    raw = _records_section(B, NONE)
    assert _records_section(B, ZSTD) == \
        zstandard.ZstdCompressor(level=level).compress(raw)


def test_the_levels_compared_above_give_different_bytes():
    """(Else the two tests above could not tell one level from another.)"""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder as B

    raw = _records_section(B, NONE)
    assert cramjam.zstd.compress(raw, level=1) != cramjam.zstd.compress(raw, level=9)
    assert zstandard.ZstdCompressor(level=1).compress(raw) != \
        zstandard.ZstdCompressor(level=9).compress(raw)


def test_a_zstd_batch_at_any_level_reads_back_whole(restore_level):
    from aiokafka.record.default_records import DefaultRecordBatch as AioBatch
    from aiokafka.record.default_records import DefaultRecordBatchBuilder as AioBuilder
    from kafka.record.default_records import DefaultRecordBatch as KpBatch
    from kafka.record.default_records import DefaultRecordBatchBuilder as KpBuilder

    for level in (-3, 1, 19):
        use_zstd_level(level)
        for builder, reader in ((AioBuilder, AioBatch), (KpBuilder, KpBatch)):
            batch = reader(bytearray(_batch(builder, ZSTD)))
            assert [r.value for r in batch] == _VALUES


def test_compression_type_puts_the_settings_level_in_place(restore_level):
    from aiokafka.record.default_records import DefaultRecordBatchBuilder as B

    s = load_settings(env={"LLMSPEND_KAFKA_ZSTD_LEVEL": "7"})
    assert s.kafka.zstd_level == 7
    assert compression_type(s) == "zstd"
    raw = _records_section(B, NONE)
    assert _records_section(B, ZSTD) == bytes(cramjam.zstd.compress(raw, level=7))


def test_default_zstd_level_is_1():
    assert load_settings(env={}).kafka.zstd_level == 1
