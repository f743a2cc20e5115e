"""Alert records (``llm_alerts``, schemas/alerts.py) as the HTTP requests notifiers send.

Pure functions, no network: each turns records into a :class:`Request` (method, URL,
headers, body) so the formats can be tested byte for byte and the sending side (retries,
timeouts, rate limits) stays in one place. Formats: a generic JSON webhook, a Slack
incoming webhook, PagerDuty Events API v2 and the Prometheus Alertmanager API v2.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from typing import Any

from schemas import alerts as A

JSON = "application/json"

#: PagerDuty Events API v2 limits: payload.summary 1024 characters, dedup_key 255.
PD_SUMMARY_MAX = 1024
PD_DEDUP_KEY_MAX = 255
PD_URL = "https://events.pagerduty.com/v2/enqueue"
#: Our severities -> PagerDuty's (critical, error, warning, info).
PD_SEVERITY = {A.CRITICAL: "critical", A.WARNING: "warning", A.INFO: "info"}

#: Slack Block Kit limits: header text 150 characters, section text 3000.
SLACK_HEADER_MAX = 150
SLACK_SECTION_MAX = 3000
SLACK_EMOJI = {A.CRITICAL: ":rotating_light:", A.WARNING: ":warning:",
               A.INFO: ":information_source:"}
SLACK_RESOLVED_EMOJI = ":white_check_mark:"

#: Evidence keys shown as the cost of an incident, most specific first.
COST_KEYS = ("cost_usd", "cost_usd_per_min")


@dataclass(frozen=True)
class Request:
    """One HTTP request, ready for any client (``body`` already encoded)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded (tests, logs)."""
        return json.loads(self.body)


def _json_request(url: str, payload: Any, **headers: str) -> Request:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    return Request("POST", url, {"Content-Type": JSON, **headers}, body.encode("utf-8"))


def _truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters, an ellipsis marking the cut (never silently)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _evidence(record: dict[str, Any]) -> dict[str, Any]:
    ev = record.get(A.EVIDENCE)
    return ev if isinstance(ev, dict) else {}


def _resolved(record: dict[str, Any]) -> bool:
    return record.get(A.STATE) == A.RESOLVED


def _str(value: Any) -> str:
    """A field as text: None is empty, lists are comma-joined, the rest ``str``."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(_str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def drilldown_command(record: dict[str, Any]) -> str:
    """The terminal command on-call runs to see the incident's recent records."""
    tenant = _str(record.get(A.TENANT)) or "?"
    return f"llmspend alerts --since 1h --tenant {shlex.quote(tenant)}"


# ------------------------------------------------------------------ filters


def passes(record: dict[str, Any], min_severity: str | None,
           tenants: frozenset[str] | None) -> bool:
    """Whether a notifier configured with these filters sends the record.

    ``min_severity`` is a floor (``warning`` keeps warnings and criticals; a resolved
    record carries the severity it fired with, so its resolve follows its page).
    ``tenants`` must contain the record's tenant; pipeline alerts have tenant ``*``,
    so a per-tenant channel only gets them if ``*`` is listed. None lets all through.
    """
    if min_severity is not None:
        if min_severity not in A.SEVERITIES:
            raise ValueError(f"unknown severity {min_severity!r}: one of "
                             f"{', '.join(A.SEVERITIES)}")
        sev = record.get(A.SEVERITY)
        if (A.RANK.get(sev, 0) if isinstance(sev, str) else 0) < A.RANK[min_severity]:
            return False
    return tenants is None or record.get(A.TENANT) in tenants


# ------------------------------------------------------------------ webhook


def webhook(record: dict[str, Any], url: str) -> Request:
    """POST the record as it is on the topic: receivers get the documented schema.

    ``Idempotency-Key`` is the record id, which is the same for a record re-written
    after a restart, so a receiver can drop the twin.
    """
    headers = {"Idempotency-Key": str(record[A.ID])} if record.get(A.ID) else {}
    return _json_request(url, record, **headers)


# ------------------------------------------------------------------ Slack


def slack_escape(text: Any) -> str:
    """Slack's control characters escaped (&, <, >): user text can't inject mentions
    such as ``<!channel>`` or links. Nothing else may be entity-encoded."""
    return _str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_code(text: Any) -> str:
    # Backticks would end the code span early; a look-alike keeps the span whole.
    return "`" + slack_escape(text).replace("`", "ˋ") + "`"


def _slack_url(url: str) -> str:
    # Inside <url|label>, a "|" ends the URL and &<> must be escaped like any text.
    return slack_escape(url).replace("|", "%7C")


def _cost_line(ev: dict[str, Any]) -> str | None:
    if ev.get("cost_usd") not in (None, ""):
        return f"${_str(ev['cost_usd'])} so far"
    if ev.get("cost_usd_per_min") not in (None, ""):
        line = f"${_str(ev['cost_usd_per_min'])}/min"
        if ev.get("baseline_median_usd_per_min") not in (None, ""):
            line += f" (baseline ${_str(ev['baseline_median_usd_per_min'])}/min"
            line += f", {_str(ev['ratio'])}x)" if ev.get("ratio") not in (None, "") else ")"
        return line
    return None


def slack(record: dict[str, Any], url: str, dashboard_url: str | None = None) -> Request:
    """A Slack incoming-webhook message: ``text`` (the notification and fallback line)
    plus blocks laid out for a phone: what, where, how much, since when, where next."""
    ev = _evidence(record)
    resolved = _resolved(record)
    sev = _str(record.get(A.SEVERITY)) or "?"
    emoji = SLACK_RESOLVED_EMOJI if resolved else SLACK_EMOJI.get(sev, ":grey_question:")
    label = f"RESOLVED ({sev})" if resolved else sev.upper()
    detector = _str(record.get(A.DETECTOR)) or "?"
    subject = f"{_str(record.get(A.SUBJECT_KIND)) or '?'}:{_str(record.get(A.SUBJECT)) or '?'}"
    tenant = _str(record.get(A.TENANT)) or "?"
    summary = _str(record.get(A.SUMMARY))

    # Header blocks are plain_text (no escaping there): only our own vocabulary goes in.
    header = _truncate(f"{emoji} {label}: {detector.replace('<', '').replace('>', '')}",
                       SLACK_HEADER_MAX)
    fields = [
        f"*Subject*\n{_slack_code(subject)}",
        f"*Tenant*\n{_slack_code(tenant)}",
        f"*Detector*\n{slack_escape(detector)}",
        f"*Severity*\n{slack_escape(label)}",
    ]
    cost = _cost_line(ev)
    if cost:
        fields.append(f"*Cost*\n{slack_escape(cost)}")
    fields.append(f"*First / last seen*\n{slack_escape(record.get(A.FIRST_SEEN) or '?')}"
                  f"\n{slack_escape(record.get(A.LAST_SEEN) or '?')}")

    hint = f"Drill down: {_slack_code(drilldown_command(record))}"
    if ev.get("trace_id"):
        hint += f"  trace {_slack_code(ev['trace_id'])}"
        if ev.get("last_span_id"):
            hint += f" span {_slack_code(ev['last_span_id'])}"
    if dashboard_url:
        hint += f"  <{_slack_url(dashboard_url)}|dashboard>"
    hint += f"\n{_slack_code(record.get(A.DEDUP_KEY) or '?')}"

    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {"type": "section",
         "text": {"type": "mrkdwn",
                  "text": _truncate(f"*{slack_escape(label)}* {slack_escape(summary)}",
                                    SLACK_SECTION_MAX)},
         "fields": [{"type": "mrkdwn", "text": _truncate(f, 2000)} for f in fields]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _truncate(hint, 2000)}]},
    ]
    text = _truncate(f"{emoji} {slack_escape(label)} {slack_escape(detector)} "
                     f"{slack_escape(subject)} tenant={slack_escape(tenant)}: "
                     f"{slack_escape(summary)}", SLACK_SECTION_MAX)
    return _json_request(url, {"text": text, "blocks": blocks})


# ------------------------------------------------------------------ PagerDuty


def pagerduty_dedup_key(key: str) -> str:
    """The record's dedup_key, shortened deterministically past PagerDuty's 255
    characters (prefix + hash), so trigger and resolve still name the same incident."""
    if len(key) <= PD_DEDUP_KEY_MAX:
        return key
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{key[:PD_DEDUP_KEY_MAX - len(digest) - 1]}~{digest}"


def pagerduty(record: dict[str, Any], routing_key: str, url: str = PD_URL) -> Request:
    """A PagerDuty Events API v2 event: ``trigger`` while firing (a severity rise
    re-triggers the same dedup_key, updating the open incident), ``resolve`` once."""
    key = pagerduty_dedup_key(_str(record.get(A.DEDUP_KEY)))
    if _resolved(record):
        return _json_request(url, {"routing_key": routing_key, "event_action": "resolve",
                                   "dedup_key": key})
    ev = _evidence(record)
    summary = _str(record.get(A.SUMMARY)) or (
        f"{record.get(A.DETECTOR)} on {record.get(A.SUBJECT_KIND)}:{record.get(A.SUBJECT)}")
    payload: dict[str, Any] = {
        "summary": _truncate(summary, PD_SUMMARY_MAX),
        "source": _str(ev.get("service")) or _str(record.get(A.SUBJECT)) or "llmspend",
        "severity": PD_SEVERITY.get(_str(record.get(A.SEVERITY)), "error"),
        "component": _str(record.get(A.DETECTOR)),
        "group": _str(ev.get("team")),
        "class": _str(record.get(A.SUBJECT_KIND)),
        # The evidence as is; tenant and drill-down added where it does not say them.
        "custom_details": {"tenant": record.get(A.TENANT),
                           "first_seen": record.get(A.FIRST_SEEN),
                           "drilldown": drilldown_command(record), **ev},
    }
    if record.get(A.LAST_SEEN):
        payload["timestamp"] = record[A.LAST_SEEN]
    payload = {k: v for k, v in payload.items() if v not in ("", None)}
    return _json_request(url, {"routing_key": routing_key, "event_action": "trigger",
                               "dedup_key": key, "client": "llmspend", "payload": payload})


# ------------------------------------------------------------------ Alertmanager


def alertname(detector: str) -> str:
    """``runaway_loop`` -> ``LLMSpendRunawayLoop`` (Prometheus alert naming)."""
    return "LLMSpend" + "".join(p[:1].upper() + p[1:] for p in detector.split("_") if p)


def _description(ev: dict[str, Any]) -> str:
    return "\n".join(f"{k}={_str(v)}" for k, v in ev.items() if _str(v) != "")


def postable_alert(record: dict[str, Any], generator_url: str | None = None) -> dict[str, Any]:
    """One Alertmanager v2 ``postableAlert``: identity in labels (string values, empty
    ones dropped), the human part in annotations."""
    ev = _evidence(record)
    labels = {
        "alertname": alertname(_str(record.get(A.DETECTOR))),
        "severity": record.get(A.SEVERITY),
        "detector": record.get(A.DETECTOR),
        "tenant": record.get(A.TENANT),
        "subject_kind": record.get(A.SUBJECT_KIND),
        "subject": record.get(A.SUBJECT),
        "dedup_key": record.get(A.DEDUP_KEY),
    }
    annotations = {
        "summary": record.get(A.SUMMARY),
        "description": _description(ev),
        "cost": _cost_line(ev),
        "trace_id": ev.get("trace_id"),
        "drilldown": drilldown_command(record),
    }
    alert: dict[str, Any] = {
        "labels": {k: s for k, v in labels.items() if (s := _str(v))},
        "annotations": {k: s for k, v in annotations.items() if (s := _str(v))},
    }
    if record.get(A.FIRST_SEEN):
        alert["startsAt"] = record[A.FIRST_SEEN]
    if _resolved(record) and record.get(A.LAST_SEEN):
        alert["endsAt"] = record[A.LAST_SEEN]
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def alertmanager(records: list[dict[str, Any]], url: str,
                 generator_url: str | None = None) -> Request:
    """``POST {url}/api/v2/alerts`` with one postable alert per record.

    Alertmanager ends a firing alert without ``endsAt`` after its ``resolve_timeout``
    unless it is posted again: the sender must re-post the latest firing record of each
    open incident periodically (as Prometheus does), not only on state changes. Labels
    carry the severity, so a warning that rose to critical is a second alert; the
    warning one expires on its own once it is no longer re-posted.
    """
    base = url.rstrip("/")
    if not base.endswith("/api/v2/alerts"):
        base += "/api/v2/alerts"
    return _json_request(base, [postable_alert(r, generator_url) for r in records])
