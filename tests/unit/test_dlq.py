"""Dead-letter helpers that need no broker: where a replay goes, what a listing shows."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from pipeline import dlq
from pipeline.config import KafkaSettings, Settings
from schemas.topics import DEAD_LETTERS, LAKE_DLQ, LLM_CALLS, OTLP_SPANS, TENANT_HEADER


def test_every_replayable_dead_letter_topic_names_its_source_topic():
    assert DEAD_LETTERS[dlq.OTLP_SPANS_DLQ] == OTLP_SPANS


def test_lake_dead_letters_are_refused_by_replay_before_any_broker_is_asked():
    # Settings pointing nowhere: the refusal must come before any connection attempt.
    s = replace(Settings(), kafka=KafkaSettings(bootstrap="127.0.0.1:1"))
    with pytest.raises(ValueError, match=r"otlp_spans\.dlq"):
        dlq.replay(s, topic=LAKE_DLQ)


def _record(headers):
    return SimpleNamespace(partition=1, offset=7, timestamp=0, value=b"xx", headers=headers)


def test_a_listing_shows_where_a_dead_letter_came_from_and_its_tenant():
    e = dlq._entry(_record(dlq.dlq_headers("bad json", 3, 42, [(TENANT_HEADER, b"acme")],
                                           topic=LLM_CALLS)))
    assert (e.source, e.tenant, e.error, e.size) == ("llm_calls[3]@42", "acme", "bad json", 2)


def test_a_span_batch_without_tenant_header_is_the_default_tenants():
    e = dlq._entry(_record(dlq.dlq_headers("truncated", 0, 5)))
    assert (e.source, e.tenant) == ("otlp_spans[0]@5", "default")
