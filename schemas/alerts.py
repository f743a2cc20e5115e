"""Alert records (``llm_alerts``): one UTF-8 JSON object per incident state change.

An *incident* is one problem with one subject (a runaway session, a service whose spend
jumped, a model whose error rate climbed, a stalled pipeline), named by its
``dedup_key``. Its record is written when it opens, each time its severity rises
(warning -> critical) and once when it resolves: never once per offending call. The
Kafka key is the ``dedup_key``; ``id`` is a deterministic hash of (dedup_key, state,
severity, first_seen), so a record re-written after a restart has the id of its twin and
downstream consumers (notifiers, the lake) can drop it.

This module is the single source of truth of the shape: field names, allowed values and
each field's meaning (:data:`FIELDS`, also the README's On-call table).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

# Field names (import these rather than repeating the strings).
ID = "id"
DEDUP_KEY = "dedup_key"
SEVERITY = "severity"
DETECTOR = "detector"
SUBJECT_KIND = "subject_kind"
SUBJECT = "subject"
TENANT = "tenant"
SUMMARY = "summary"
EVIDENCE = "evidence"
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"
STATE = "state"
EMITTED_AT = "emitted_at"

SEVERITIES = ("info", "warning", "critical")
INFO, WARNING, CRITICAL = SEVERITIES
#: Order of severities (an incident's record is re-emitted only when this rises).
RANK = {None: 0, INFO: 1, WARNING: 2, CRITICAL: 3}

STATES = ("firing", "resolved")
FIRING, RESOLVED = STATES

SUBJECT_KINDS = ("session", "agent", "service", "team", "user", "use_case", "model",
                 "tenant", "pipeline")

#: Detectors and what their incidents mean (the README's On-call table).
DETECTORS: dict[str, str] = {
    "runaway_loop": "one session repeats itself: the same tool with the same arguments "
                    "N times in a row, the same last message sent to the same model N "
                    "times, or a short cycle of tool calls (A-B-A-B...) repeated",
    "runaway_session": "one session went past a limit: steps, tokens, cost, duration, or "
                       "cost velocity (USD per minute over the last minute)",
    "spend_anomaly": "a (tenant, service, team) spends far more per minute than its own "
                     "recent baseline (median/MAD), above an absolute floor",
    "error_rate": "share of a model's LLM calls that failed, over the quality window",
    "timeout_rate": "share of a model's LLM calls that timed out",
    "fallback_rate": "share of a model's LLM calls that were fallbacks after an error",
    "escalation_rate": "share of a model's LLM calls that escalated to a larger model",
    "budget": "a budget (tenant, team, user or use case; daily or monthly) crossed a "
              "threshold (50/80/100 %), or its burn rate projects an overrun, or a use "
              "case's cost per unit is above its target; once per period each",
    "pipeline_stalled": "spans keep arriving in otlp_spans but the worker's committed "
                        "offsets have not moved: nothing is being priced",
    "pipeline_lag": "the worker's consumer lag on otlp_spans grew over the whole lag "
                    "window and is above the floor: it is falling behind",
}

#: Meaning of every field, in record order (README table).
FIELDS: dict[str, str] = {
    ID: "hash of (dedup_key, state, severity, first_seen): the same state change has the "
        "same id, so a re-written record can be dropped downstream",
    DEDUP_KEY: "the incident: `<detector family>/<tenant>/<subject...>`; the Kafka key "
               "and PagerDuty's dedup_key",
    SEVERITY: "`info`, `warning` or `critical` (re-emitted only when it rises)",
    DETECTOR: "what fired (see the detector table); for a session, what set the current "
              "severity",
    SUBJECT_KIND: "`session`, `agent`, `service`, `team`, `user`, `use_case`, `model`, "
                  "`tenant` or `pipeline`",
    SUBJECT: "the session id, service name, model...",
    TENANT: "tenant of the subject (`*` for the pipeline itself)",
    SUMMARY: "one human sentence: what happened, how much, where",
    EVIDENCE: "object: counts, cost so far (decimal string), the repeated tool and its "
              "arguments hash, first/last span ids and the trace id for drill-down, "
              "thresholds crossed",
    FIRST_SEEN: "event time (RFC 3339 UTC) of the first evidence of the incident",
    LAST_SEEN: "event time of the latest evidence when this record was written",
    STATE: "`firing` or `resolved`",
    EMITTED_AT: "wall-clock time the detector wrote the record (RFC 3339 UTC, ms)",
}

NAMES: tuple[str, ...] = tuple(FIELDS)


def alert_id(dedup_key: str, state: str, severity: str, first_seen: str) -> str:
    """Deterministic record id: 32 hex digits of BLAKE2b over the state change (an
    incident that re-opens later has a new first_seen, hence new ids)."""
    return hashlib.blake2b(f"{dedup_key}\x1f{state}\x1f{severity}\x1f{first_seen}".encode(),
                           digest_size=16).hexdigest()


def dedup_key(family: str, tenant: str, *subject: str) -> str:
    """``family/tenant/subject...``; parts longer than 80 characters are hashed so the
    key stays under PagerDuty's 255-character limit."""
    parts = [family, tenant or "-", *(s if s is not None else "-" for s in subject)]
    out = [p if len(p) <= 80 else hashlib.blake2b(p.encode(), digest_size=10).hexdigest()
           for p in parts]
    return "/".join(out)


def validate(record: dict[str, Any]) -> list[str]:
    """Problems with one alert record (empty: it is well formed)."""
    problems = [f"missing field {n}" for n in NAMES if n not in record]
    problems += [f"unknown field {n}" for n in record if n not in FIELDS]
    if record.get(SEVERITY) not in SEVERITIES:
        problems.append(f"severity {record.get(SEVERITY)!r}")
    if record.get(STATE) not in STATES:
        problems.append(f"state {record.get(STATE)!r}")
    if record.get(SUBJECT_KIND) not in SUBJECT_KINDS:
        problems.append(f"subject_kind {record.get(SUBJECT_KIND)!r}")
    if record.get(DETECTOR) not in DETECTORS:
        problems.append(f"detector {record.get(DETECTOR)!r}")
    if not isinstance(record.get(EVIDENCE), dict):
        problems.append("evidence is not an object")
    if ID in record and DEDUP_KEY in record and record[ID] != alert_id(
            record[DEDUP_KEY], record.get(STATE, ""), record.get(SEVERITY, ""),
            record.get(FIRST_SEEN, "")):
        problems.append("id does not match (dedup_key, state, severity, first_seen)")
    return problems



_TS = pa.timestamp("us", tz="UTC")
_REQUIRED = {ID, DEDUP_KEY, SEVERITY, DETECTOR, SUBJECT_KIND, STATE, EMITTED_AT}
#: An alert row in the lake's ``alerts`` dataset: the record's fields in order, the
#: three times parsed to timestamps and ``evidence`` kept as JSON text.
ARROW = pa.schema([pa.field(n, _TS if n in (FIRST_SEEN, LAST_SEEN, EMITTED_AT)
                            else pa.string(), nullable=n not in _REQUIRED) for n in NAMES])
