"""Verdicts (pipeline/verdict.py): alerts -> controls, strictest subject wins."""

from __future__ import annotations

from pipeline.alerts import Incident
from pipeline.verdict import Verdicts, control_from_alert


def session_alerts():
    inc = Incident("session/acme/s1", "session", "s1", "acme")
    return (inc.observe("warning", "runaway_loop", "looping", {}, 1),
            inc.observe("critical", "runaway_loop", "looping hard", {}, 2),
            inc.resolve("quiet", 3))


def test_warning_warns_critical_blocks_resolve_allows_again():
    warn, crit, done = session_alerts()
    v = Verdicts()
    assert v.lookup("acme", {"session": "s1"})["verdict"] == "allow"
    v.apply(*control_from_alert(warn))
    assert v.lookup("acme", {"session": "s1"})["verdict"] == "warn"
    v.apply(*control_from_alert(crit))
    ans = v.lookup("acme", {"session": "s1"})
    assert ans["verdict"] == "block" and ans["reasons"] == ["looping hard"]
    assert ans["incidents"][0]["dedup_key"] == "session/acme/s1"
    key, value = control_from_alert(done)
    assert value is None                     # a tombstone in the compacted topic
    v.apply(key, value)
    assert v.lookup("acme", {"session": "s1"})["verdict"] == "allow"


def test_other_tenants_and_subjects_are_not_affected_and_the_strictest_wins():
    _, crit, _ = session_alerts()
    team = Incident("budget/acme/team/support", "team", "support", "acme").observe(
        "warning", "budget", "80 % of the budget", {}, 1)
    v = Verdicts()
    v.apply(*control_from_alert(crit))
    v.apply(*control_from_alert(team))
    assert v.lookup("globex", {"session": "s1"})["verdict"] == "allow"
    assert v.lookup("acme", {"session": "s2"})["verdict"] == "allow"
    assert v.lookup("acme", {"team": "support"})["verdict"] == "warn"
    both = v.lookup("acme", {"session": "s1", "team": "support"})
    assert both["verdict"] == "block" and len(both["reasons"]) == 2


def test_alerts_about_models_or_the_pipeline_make_no_control():
    inc = Incident("error_rate/acme/gpt-4o", "model", "gpt-4o", "acme")
    assert control_from_alert(inc.observe("critical", "error_rate", "x", {}, 1)) is None
