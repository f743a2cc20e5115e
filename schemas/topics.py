"""Kafka topic and header names used in code; shapes are declared in infra/topics.toml."""

OTLP_SPANS = "otlp_spans"
OTLP_SPANS_DLQ = "otlp_spans.dlq"
LLM_CALLS = "llm_calls"
LLM_AGG_1M = "llm_agg_1m"
LLM_ALERTS = "llm_alerts"
LLM_CONTROLS = "llm_controls"
#: Records the lake sink could not land (llm_calls, llm_agg_1m, llm_alerts), with why.
LAKE_DLQ = "lake.dlq"

ALL = (OTLP_SPANS, OTLP_SPANS_DLQ, LLM_CALLS, LLM_AGG_1M, LLM_ALERTS, LLM_CONTROLS,
       LAKE_DLQ)
#: Dead-letter topics, each with the topic its records are replayed to (None: not
#: replayable; a lake record re-sent upstream would be counted twice by the aggregates).
DEAD_LETTERS = {OTLP_SPANS_DLQ: OTLP_SPANS, LAKE_DLQ: None}

#: Header of every ``otlp_spans`` record: the tenant the receiver authenticated.
TENANT_HEADER = "llmspend-tenant"
