"""Kafka topic and header names used in code; shapes are declared in infra/topics.toml."""

OTLP_SPANS = "otlp_spans"
OTLP_SPANS_DLQ = "otlp_spans.dlq"
LLM_CALLS = "llm_calls"
LLM_AGG_1M = "llm_agg_1m"
LLM_ALERTS = "llm_alerts"
LLM_CONTROLS = "llm_controls"

ALL = (OTLP_SPANS, OTLP_SPANS_DLQ, LLM_CALLS, LLM_AGG_1M, LLM_ALERTS, LLM_CONTROLS)
