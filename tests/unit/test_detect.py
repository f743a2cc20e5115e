"""Session detectors (pipeline/detect.py): loops, runaway sessions, one incident per
session, duplicates ignored, quiet resolution, bounded memory and restart recovery."""

from __future__ import annotations

import datetime as dt
import itertools

import orjson
import pytest

from pipeline.alerts import Incident, latest_by_key
from pipeline.detect import SessionDetector, SessionLimits, SessionState
from schemas import alerts as A

T0 = int(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC).timestamp() * 1e6)
_ids = itertools.count(1)


def iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
            ).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def call(t_s: float, *, kind: str = "llm", session: str = "s1", tool: str | None = None,
         args: str | None = None, last: str | None = None, cost: str | None = "0.001",
         status: str = "ok", tokens: int = 100, call_id: str | None = None,
         model: str = "gpt-4o") -> dict:
    start = T0 + int(t_s * 1e6)
    n = next(_ids)
    return {"call_id": call_id or f"{n:032x}", "kind": kind, "tenant": "acme",
            "session_id": session, "trace_id": "ab" * 16, "span_id": f"{n:016x}",
            "start_time": iso(start), "end_time": iso(start + 500_000),
            "service": "support", "agent": "triage-agent", "team": "cs", "user_id": "u1",
            "model": model if kind == "llm" else None, "request_model": None,
            "response_model": None, "status": status,
            "input_tokens": tokens if kind == "llm" else None,
            "output_tokens": 10 if kind == "llm" else None,
            "cost_usd": cost if kind == "llm" else None,
            "tool_name": tool, "tool_args_hash": args, "last_message_hash": last}


def tool(t_s: float, name: str, args: str = "h1", **kw) -> dict:
    return call(t_s, kind="tool", tool=name, args=args, **kw)


def feed(det: SessionDetector, rows: list[dict], ts_ms: int = 0, one_by_one: bool = True):
    alerts = []
    if one_by_one:
        for r in rows:
            alerts += det.add([r], ts_ms).alerts
    else:
        alerts += det.add(rows, ts_ms).alerts
    return alerts


def levels(alerts) -> list[tuple[str, str]]:
    return [(a["severity"], a["state"]) for a in alerts]


def loop_rows(n: int, session: str = "s1") -> list[dict]:
    """An agent calling the same tool with the same arguments n times, the model
    seeing the same empty result each time."""
    rows, t = [], 0.0
    for i in range(n):
        rows.append(call(t, session=session, last="request" if i == 0 else "result"))
        rows.append(tool(t + 1, "search_kb", session=session))
        t += 2
    return rows


def test_repeated_tool_call_warns_at_3_pages_at_6_as_one_incident():
    det = SessionDetector()
    alerts = feed(det, loop_rows(10))
    assert levels(alerts) == [("warning", "firing"), ("critical", "firing")]
    assert {a["dedup_key"] for a in alerts} == {"session/acme/s1"}
    assert [a["evidence"]["repeated_tool_calls"] for a in alerts] == [3, 6]
    assert alerts[0]["evidence"]["repeated_tool"] == "search_kb"
    assert alerts[0]["evidence"]["repeated_tool_args_hash"] == "h1"
    assert alerts[0]["evidence"]["trace_id"] == "ab" * 16
    assert all(A.validate(a) == [] for a in alerts)
    assert alerts[0]["id"] != alerts[1]["id"]


def test_a_whole_loop_in_one_record_still_warns_then_pages_in_time_order():
    rows = loop_rows(8)
    # OTLP groups spans by scope: every LLM span first, then every tool span.
    scrambled = [r for r in rows if r["kind"] == "llm"] + [r for r in rows
                                                           if r["kind"] == "tool"]
    alerts = feed(SessionDetector(), scrambled, one_by_one=False)
    assert levels(alerts) == [("warning", "firing"), ("critical", "firing")]
    assert [a["evidence"]["repeated_tool_calls"] for a in alerts] == [3, 6]


def test_duplicates_of_one_call_never_look_like_a_loop():
    det = SessionDetector()
    one = tool(0, "search_kb", call_id="c" * 32)
    assert feed(det, [dict(one) for _ in range(20)]) == []
    assert det.sessions["acme|s1"].tool_calls == 1


def test_other_tools_in_between_break_the_run():
    det = SessionDetector()
    rows = []
    for i in range(10):
        rows += [tool(i * 3, "get_ticket", args="t1"), tool(i * 3 + 1, "search_kb",
                                                              args=f"q{i}")]
    assert feed(det, rows) == []


def test_same_last_message_to_the_same_model_is_a_loop_but_retries_after_errors_are_not():
    det = SessionDetector()
    retries = [call(i, last="m1", status="error", cost=None) for i in range(5)]
    assert feed(det, retries) == []
    alerts = feed(det, [call(10 + i, last="m2") for i in range(3)])
    assert levels(alerts) == [("warning", "firing")]
    assert "same last message" in alerts[0]["summary"]


def test_a_short_cycle_of_tool_calls_is_a_loop():
    det = SessionDetector()
    rows = []
    for i in range(6):
        rows += [tool(i * 4, "read_file", args="a"), tool(i * 4 + 1, "run_tests", args="b")]
    alerts = feed(det, rows)
    assert levels(alerts) == [("warning", "firing"), ("critical", "firing")]
    assert "read_file -> run_tests" in alerts[0]["summary"]


def test_a_legitimately_long_session_raises_nothing():
    det = SessionDetector()
    rows = []
    for i in range(70):  # 140 steps, each tool call different, 7 cents in all
        rows += [call(i * 30, last=f"m{i}"), tool(i * 30 + 5, "read_file", args=f"f{i}")]
    assert feed(det, rows) == []


def test_session_limits_and_cost_velocity():
    limits = SessionLimits(steps_warn=10, steps_critical=20)
    det = SessionDetector(limits)
    alerts = feed(det, [call(i * 10, last=f"m{i}") for i in range(25)])
    assert levels(alerts) == [("warning", "firing"), ("critical", "firing")]
    assert alerts[0]["detector"] == "runaway_session" and "10 steps" in alerts[0]["summary"]

    fast = SessionDetector()
    alerts = feed(fast, [call(i, session="f", last=f"m{i}", cost="0.50") for i in range(5)])
    assert levels(alerts) == [("warning", "firing")]     # 2 USD within a minute
    assert "in the last minute" in alerts[0]["summary"]

    slow = SessionDetector()   # the same money over ten minutes: a slow ramp, no alert
    assert feed(slow, [call(i * 150, session="r", last=f"m{i}", cost="0.50")
                       for i in range(5)]) == []


def test_a_quiet_session_resolves_once_and_its_state_expires():
    limits = SessionLimits(quiet_s=60, ttl_s=600)
    det = SessionDetector(limits)
    ts = 1_000_000
    alerts = feed(det, loop_rows(4), ts)
    assert levels(alerts) == [("warning", "firing")]
    assert det.add([], ts + 30_000).alerts == []               # not quiet long enough
    resolved = det.add([], ts + 70_000).alerts                 # heartbeat, 70 s later
    assert levels(resolved) == [("warning", "resolved")]
    assert resolved[0]["dedup_key"] == alerts[0]["dedup_key"]
    assert det.add([], ts + 80_000).alerts == []               # once only
    out = det.add([], ts + 700_000)
    assert out.expired == {"acme|s1"} and not det.sessions


def test_a_long_session_that_pauses_is_not_re_paged_for_the_same_limit():
    det = SessionDetector(SessionLimits(steps_warn=10, steps_critical=30, quiet_s=60))
    alerts = feed(det, [call(i, last=f"m{i}") for i in range(12)], ts_ms=0)
    assert levels(alerts) == [("warning", "firing")]
    assert levels(det.add([], 100_000).alerts) == [("warning", "resolved")]
    # Back after the pause: still past the warning limit, which was already reported.
    assert feed(det, [call(200 + i, last=f"n{i}") for i in range(10)], 100_000) == []
    again = feed(det, [call(300 + i, last=f"o{i}") for i in range(10)], 100_000)
    assert levels(again) == [("critical", "firing")]   # a new, higher limit re-opens it
    assert again[0]["first_seen"] != alerts[0]["first_seen"]
    assert again[0]["dedup_key"] == alerts[0]["dedup_key"]


def test_memory_stays_bounded_by_the_ttl_over_250k_sessions():
    det = SessionDetector(SessionLimits(quiet_s=30, ttl_s=60))
    peak = 0
    for batch in range(250):           # 250,000 sessions (4x the TTL), 1000 per s
        base = call(batch * 1.0, cost=None, last=None)
        rows = [{**base, "session_id": f"s{batch}-{i}", "call_id": f"{batch:016x}{i:016x}"}
                for i in range(1000)]
        det.add(rows, batch * 1000)
        peak = max(peak, len(det.sessions))
    assert peak <= 62_000              # TTL x arrival rate, plus one batch


def test_restart_from_the_changelog_neither_refires_nor_forgets():
    rows = loop_rows(8)
    det = SessionDetector()
    first = feed(det, rows[:8])        # 4 loops: warning
    assert levels(first) == [("warning", "firing")]
    changelog = {k: orjson.loads(orjson.dumps(s.to_json())) for k, s in det.sessions.items()}

    restarted = SessionDetector()
    for key, value in changelog.items():
        restarted.restore(key, value)
    assert restarted.add([], 1_764_000_000_000).alerts == []   # a heartbeat first
    assert restarted.firing == {"acme|s1"} and "acme|s1" in restarted.sessions
    assert feed(restarted, rows[:8]) == []         # the uncommitted records again
    rest = feed(restarted, rows[8:])
    assert levels(rest) == [("critical", "firing")]
    assert rest[0]["evidence"]["repeated_tool_calls"] == 6


def test_alert_ids_are_deterministic_and_records_recover_incidents():
    inc = Incident("session/acme/s1", "session", "s1", "acme")
    rec = inc.observe("warning", "runaway_loop", "loop", {"n": 3}, T0)
    assert rec["id"] == A.alert_id("session/acme/s1", "firing", "warning",
                                   rec["first_seen"])
    assert inc.observe("warning", "runaway_loop", "loop", {"n": 4}, T0 + 1) is None
    assert inc.observe(None, "", "", {}, T0 + 2) is None
    back = latest_by_key([rec, {"not": "an alert"}])["session/acme/s1"]
    assert back.firing and back.severity == "warning" and back.first_seen_us == T0
    assert A.dedup_key("x", "t", "y" * 200).count("/") == 2
    assert len(A.dedup_key("x", "t", "y" * 200)) < 255


def test_state_round_trips_through_json():
    det = SessionDetector()
    feed(det, loop_rows(4))
    s = det.sessions["acme|s1"]
    assert SessionState.from_json(orjson.loads(orjson.dumps(s.to_json()))) == s


@pytest.mark.parametrize("field", ["loop_warn", "session_quiet_s"])
def test_config_rejects_unusable_thresholds(field):
    from pipeline.config import ConfigError, load_settings

    env = {"LLMSPEND_DETECT_LOOP_WARN": "1"} if field == "loop_warn" else {
        "LLMSPEND_DETECT_SESSION_QUIET_S": "7200"}
    with pytest.raises(ConfigError):
        load_settings(env=env)
