"""Notifier request formats (pipeline/notify_formats.py): webhook, Slack, PagerDuty,
Alertmanager, and the severity/tenant filter, built from real Incident records."""

from __future__ import annotations

import json

import pytest

from pipeline.alerts import Incident
from pipeline.notify_formats import (
    PD_DEDUP_KEY_MAX,
    PD_SUMMARY_MAX,
    Request,
    alertmanager,
    alertname,
    pagerduty,
    pagerduty_dedup_key,
    passes,
    slack,
    slack_escape,
    webhook,
)
from schemas import alerts as A

T0 = 1_741_960_800_000_000  # 2025-03-14T14:00:00Z in microseconds

SESSION_EV = {
    "reasons": ["search x12"], "steps": 40, "llm_calls": 20, "tool_calls": 20,
    "tokens": 52_000, "cost_usd": "3.141500", "cost_usd_last_minute": "0.900000",
    "duration_s": 95.5, "service": "support-bot", "agent": "triage", "team": "cx",
    "user_id": None, "model": "gpt-4o", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "first_span_id": "00f067aa0ba902b7", "last_span_id": "b7ad6b7169203331",
    "repeated_tool": "search", "repeated_tool_calls": 12,
}
SPEND_EV = {"service": "rag-api", "team": None, "window_start": "2025-03-14T14:00:00Z",
            "cost_usd_per_min": "12.500000", "baseline_median_usd_per_min": "0.500000",
            "ratio": 25.0}


def _session(level: str = A.CRITICAL, summary: str = "search called 12 times in a row",
             subject: str = "s-42", tenant: str = "acme") -> tuple[Incident, dict]:
    inc = Incident(A.dedup_key("session", tenant, subject), "session", subject, tenant)
    r = inc.observe(level, "runaway_loop", summary, dict(SESSION_EV), T0)
    assert r is not None and not A.validate(r)
    return inc, r


def firing(**kw) -> dict:
    return _session(**kw)[1]


def resolved(**kw) -> dict:
    inc, _ = _session(**kw)
    r = inc.resolve("session went quiet; resolved", T0 + 120_000_000, dict(SESSION_EV))
    assert r is not None and not A.validate(r)
    return r


def spend(level: str = A.WARNING) -> dict:
    inc = Incident(A.dedup_key("spend", "acme", "rag-api", "-"), "service", "rag-api", "acme")
    r = inc.observe(level, "spend_anomaly", "rag-api spends 12.5 USD/min, 25x baseline",
                    dict(SPEND_EV), T0)
    assert r is not None and not A.validate(r)
    return r


def pipeline_record() -> dict:
    inc = Incident(A.dedup_key("pipeline", "*", "stalled"), "pipeline", "worker", "*")
    r = inc.observe(A.CRITICAL, "pipeline_stalled", "nothing priced for 120 s", {}, T0)
    assert r is not None
    return r


def _assert_json_request(req: Request, url: str) -> object:
    assert req.method == "POST" and req.url == url
    assert req.headers["Content-Type"] == "application/json"
    assert isinstance(req.body, bytes)
    return json.loads(req.body.decode("utf-8"))


# ---------------------------------------------------------------- webhook

@pytest.mark.parametrize("make", [firing, resolved, spend])
def test_webhook_posts_the_record_unchanged(make):
    r = make()
    req = webhook(r, "https://hooks.example/x")
    assert _assert_json_request(req, "https://hooks.example/x") == r
    assert req.headers["Idempotency-Key"] == r[A.ID]


def test_webhook_body_is_utf8_not_ascii_escaped():
    r = firing(summary="coût élevé → 3 €")
    req = webhook(r, "https://h")
    assert "coût élevé → 3 €".encode() in req.body
    assert json.loads(req.body)[A.SUMMARY] == "coût élevé → 3 €"


# ---------------------------------------------------------------- Slack

def _slack_texts(payload: dict) -> str:
    """Every mrkdwn/plain text of the message, joined (what a user can see)."""
    out = [payload["text"]]
    for b in payload["blocks"]:
        if "text" in b:
            out.append(b["text"]["text"])
        out += [f["text"] for f in b.get("fields", [])]
        out += [e["text"] for e in b.get("elements", [])]
    return "\n".join(out)


def test_slack_firing_has_fallback_text_and_every_part():
    r = firing()
    p = _assert_json_request(slack(r, "https://hooks.slack.com/services/T/B/X"),
                             "https://hooks.slack.com/services/T/B/X")
    assert p["text"].startswith(":rotating_light: CRITICAL runaway_loop session:s-42")
    assert [b["type"] for b in p["blocks"]] == ["header", "section", "context"]
    assert p["blocks"][0]["text"]["type"] == "plain_text"
    assert p["blocks"][0]["text"]["text"] == ":rotating_light: CRITICAL: runaway_loop"
    texts = _slack_texts(p)
    for part in ("search called 12 times in a row", "`session:s-42`", "`acme`",
                 "runaway_loop", "$3.141500 so far", "2025-03-14T14:00:00.000000Z",
                 "`llmspend alerts --since 1h --tenant acme`",
                 "`4bf92f3577b34da6a3ce929d0e0e4736`", "`b7ad6b7169203331`",
                 "`session/acme/s-42`"):
        assert part in texts, part
    assert "RESOLVED" not in texts


def test_slack_resolved_says_so_everywhere():
    p = slack(resolved(), "https://h").json()
    assert p["text"].startswith(":white_check_mark: RESOLVED (critical)")
    assert p["blocks"][0]["text"]["text"].startswith(":white_check_mark: RESOLVED")
    assert p["blocks"][1]["text"]["text"].startswith("*RESOLVED (critical)*")
    assert "session went quiet; resolved" in p["blocks"][1]["text"]["text"]
    assert "2025-03-14T14:02:00.000000Z" in _slack_texts(p)


@pytest.mark.parametrize("level,emoji", [(A.CRITICAL, ":rotating_light:"),
                                         (A.WARNING, ":warning:"),
                                         (A.INFO, ":information_source:")])
def test_slack_emoji_follows_severity(level, emoji):
    p = slack(firing(level=level), "https://h").json()
    assert p["text"].startswith(f"{emoji} {level.upper()} ")


def test_slack_escapes_user_text_so_nothing_can_ping_or_link():
    r = firing(summary="<!channel> tool a&b > <https://evil|click>",
               subject="s<1>&2", tenant="t&<x>")
    texts = _slack_texts(slack(r, "https://h").json())
    assert "&lt;!channel&gt; tool a&amp;b &gt; &lt;https://evil|click&gt;" in texts
    assert "s&lt;1&gt;&amp;2" in texts
    assert "<!channel>" not in texts and "<https://evil" not in texts
    # The only raw '<' left would be a link we made: there is none without a dashboard.
    assert "<" not in texts


def test_slack_escape_only_touches_the_three_characters():
    assert slack_escape("a & b < c > d 'e' \"f\"") == "a &amp; b &lt; c &gt; d 'e' \"f\""
    assert slack_escape("&amp;") == "&amp;amp;"
    assert slack_escape(None) == ""


def test_slack_dashboard_link_and_quoted_tenant():
    r = pipeline_record()
    p = slack(r, "https://h", dashboard_url="https://grafana.example/d?a=1&b=2|x").json()
    context = p["blocks"][2]["elements"][0]["text"]
    assert "<https://grafana.example/d?a=1&amp;b=2%7Cx|dashboard>" in context
    assert "`llmspend alerts --since 1h --tenant '*'`" in context
    assert "trace" not in context  # no trace_id in the evidence
    assert "Cost" not in _slack_texts(p)


def test_slack_spend_anomaly_shows_rate_and_baseline():
    texts = _slack_texts(slack(spend(), "https://h").json())
    assert "$12.500000/min (baseline $0.500000/min, 25.0x)" in texts


def test_slack_truncates_to_block_limits():
    p = slack(firing(summary="x" * 10_000), "https://h").json()
    assert len(p["text"]) <= 3000 and p["text"].endswith("…")
    assert len(p["blocks"][1]["text"]["text"]) <= 3000
    assert len(p["blocks"][0]["text"]["text"]) <= 150


# ---------------------------------------------------------------- PagerDuty

def test_pagerduty_trigger_for_firing():
    r = firing()
    req = pagerduty(r, "R0UT1NGKEY")
    e = _assert_json_request(req, "https://events.pagerduty.com/v2/enqueue")
    assert e["routing_key"] == "R0UT1NGKEY"
    assert e["event_action"] == "trigger"
    assert e["dedup_key"] == "session/acme/s-42"
    pl = e["payload"]
    assert pl["summary"] == "search called 12 times in a row"
    assert pl["source"] == "support-bot"
    assert pl["severity"] == "critical"
    assert pl["timestamp"] == r[A.LAST_SEEN]
    assert (pl["component"], pl["group"], pl["class"]) == ("runaway_loop", "cx", "session")
    for k, v in SESSION_EV.items():
        assert pl["custom_details"][k] == v
    assert pl["custom_details"]["tenant"] == "acme"


def test_pagerduty_resolve_for_resolved_has_the_same_dedup_key():
    req = pagerduty(resolved(), "K", url="https://pd.example/enqueue")
    e = _assert_json_request(req, "https://pd.example/enqueue")
    assert e == {"routing_key": "K", "event_action": "resolve",
                 "dedup_key": "session/acme/s-42"}
    assert e["dedup_key"] == pagerduty(firing(), "K").json()["dedup_key"]


@pytest.mark.parametrize("level", A.SEVERITIES)
def test_pagerduty_severity_mapping(level):
    assert pagerduty(firing(level=level), "K").json()["payload"]["severity"] == level


def test_pagerduty_source_falls_back_to_subject_and_drops_empty_group():
    e = pagerduty(spend(), "K").json()
    assert e["payload"]["source"] == "rag-api"
    assert "group" not in e["payload"]  # team is None for this anomaly
    e = pagerduty(pipeline_record(), "K").json()
    assert e["payload"]["source"] == "worker"
    assert e["payload"]["class"] == "pipeline"


def test_pagerduty_summary_truncated_to_1024():
    pl = pagerduty(firing(summary="é" * 5000), "K").json()["payload"]
    assert len(pl["summary"]) == PD_SUMMARY_MAX and pl["summary"].endswith("…")


def test_pagerduty_long_dedup_key_is_shortened_deterministically():
    long = "session/acme/" + "/".join(["x" * 80] * 4)
    assert len(long) > PD_DEDUP_KEY_MAX
    short = pagerduty_dedup_key(long)
    assert len(short) == PD_DEDUP_KEY_MAX
    assert short == pagerduty_dedup_key(long) != pagerduty_dedup_key(long + "y")
    assert short.startswith("session/acme/")
    assert pagerduty_dedup_key("session/acme/s-42") == "session/acme/s-42"


# ---------------------------------------------------------------- Alertmanager

@pytest.mark.parametrize("detector,name", [
    ("runaway_loop", "LLMSpendRunawayLoop"), ("spend_anomaly", "LLMSpendSpendAnomaly"),
    ("pipeline_stalled", "LLMSpendPipelineStalled"), ("error_rate", "LLMSpendErrorRate")])
def test_alertname_is_camel_case(detector, name):
    assert alertname(detector) == name


def test_alertmanager_posts_a_list_of_postable_alerts():
    r = firing()
    req = alertmanager([r, spend()], "http://am:9093/")
    body = _assert_json_request(req, "http://am:9093/api/v2/alerts")
    assert isinstance(body, list) and len(body) == 2
    a = body[0]
    assert set(a) == {"labels", "annotations", "startsAt"}  # firing: no endsAt
    assert a["labels"] == {"alertname": "LLMSpendRunawayLoop", "severity": "critical",
                           "detector": "runaway_loop", "tenant": "acme",
                           "subject_kind": "session", "subject": "s-42",
                           "dedup_key": "session/acme/s-42"}
    assert a["startsAt"] == r[A.FIRST_SEEN]
    ann = a["annotations"]
    assert ann["summary"] == "search called 12 times in a row"
    assert ann["cost"] == "$3.141500 so far"
    assert ann["trace_id"] == SESSION_EV["trace_id"]
    assert "cost_usd=3.141500" in ann["description"].splitlines()
    assert "reasons=search x12" in ann["description"].splitlines()
    assert "user_id=" not in ann["description"]  # None values are left out


def test_alertmanager_resolved_has_ends_at_last_seen():
    r = resolved()
    a = alertmanager([r], "http://am:9093", generator_url="https://grafana/d/1").json()[0]
    assert a["endsAt"] == r[A.LAST_SEEN] == "2025-03-14T14:02:00.000000Z"
    assert a["startsAt"] == r[A.FIRST_SEEN] < a["endsAt"]
    assert a["generatorURL"] == "https://grafana/d/1"
    # Same labels as the firing alert: Alertmanager matches them to resolve it.
    assert a["labels"] == alertmanager([firing()], "http://am").json()[0]["labels"]


def test_alertmanager_label_and_annotation_values_are_nonempty_strings():
    odd = spend()
    odd[A.SUBJECT] = ""
    odd[A.EVIDENCE] = {**SPEND_EV, "n": 3, "ok": True, "tags": ["a", "b"]}
    for a in alertmanager([odd, pipeline_record(), resolved()], "http://am").json():
        for part in ("labels", "annotations"):
            assert all(isinstance(v, str) and v for v in a[part].values()), a[part]
    a = alertmanager([odd], "http://am").json()[0]
    assert "subject" not in a["labels"]
    desc = a["annotations"]["description"].splitlines()
    assert {"n=3", "ok=True", "tags=a,b", "ratio=25.0"} <= set(desc)
    assert not any(line.startswith("team=") for line in desc)


def test_alertmanager_url_already_pointing_at_the_endpoint_is_kept():
    assert alertmanager([], "http://am/api/v2/alerts").url == "http://am/api/v2/alerts"
    assert alertmanager([], "http://am/api/v2/alerts").json() == []


# ---------------------------------------------------------------- passes

@pytest.mark.parametrize("level,floor,ok", [
    (A.INFO, None, True), (A.INFO, A.INFO, True), (A.INFO, A.WARNING, False),
    (A.WARNING, A.WARNING, True), (A.WARNING, A.CRITICAL, False),
    (A.CRITICAL, A.WARNING, True), (A.CRITICAL, A.CRITICAL, True)])
def test_passes_severity_floor(level, floor, ok):
    assert passes(firing(level=level), floor, None) is ok


def test_passes_resolved_follows_the_severity_it_fired_with():
    assert passes(resolved(level=A.CRITICAL), A.CRITICAL, None)
    assert not passes(resolved(level=A.WARNING), A.CRITICAL, None)


def test_passes_tenants():
    r = firing(tenant="acme")
    assert passes(r, None, frozenset({"acme", "globex"}))
    assert not passes(r, None, frozenset({"globex"}))
    assert not passes(r, None, frozenset())
    assert not passes(pipeline_record(), None, frozenset({"acme"}))
    assert passes(pipeline_record(), A.CRITICAL, frozenset({"acme", "*"}))


def test_passes_rejects_unknown_floor_and_unknown_severity():
    with pytest.raises(ValueError, match="unknown severity"):
        passes(firing(), "page", None)
    bad = {**firing(), A.SEVERITY: "urgent"}
    assert not passes(bad, A.INFO, None)
    assert passes(bad, None, None)
