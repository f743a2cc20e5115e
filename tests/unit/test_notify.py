"""Notifier delivery policy (pipeline/notify.py): targets, cool-down, backoff."""

from __future__ import annotations

import pytest

from pipeline.alerts import Incident
from pipeline.config import ConfigError, load_settings
from pipeline.notify import Cooldown, backoff_s, build_request, parse_targets


def records():
    inc = Incident("session/acme/s1", "session", "s1", "acme")
    warn = inc.observe("warning", "runaway_loop", "loop", {"steps": 3}, 1_000_000)
    crit = inc.observe("critical", "runaway_loop", "loop", {"steps": 6}, 2_000_000)
    done = inc.resolve("quiet", 3_000_000)
    again = inc.observe("warning", "runaway_loop", "loop", {"steps": 9}, 4_000_000)
    return warn, crit, done, again


def test_targets_parse_and_bad_ones_name_the_target_and_key():
    (t,) = parse_targets({"oncall": {"format": "slack", "url": "https://hooks.example/x",
                                     "min_severity": "warning", "tenants": "acme, globex"}})
    assert t.tenants == frozenset({"acme", "globex"}) and t.min_severity == "warning"
    for bad, where in (({"format": "sms", "url": "http://x"}, "format"),
                       ({"url": "ftp://x"}, "url"),
                       ({"format": "pagerduty"}, "routing_key"),
                       ({"url": "http://x", "min_severity": "loud"}, "min_severity"),
                       ({"url": "http://x", "colour": "red"}, "colour")):
        with pytest.raises(ConfigError, match=where):
            parse_targets({"t": bad})
    with pytest.raises(ConfigError, match=r"notify\.targets"):
        load_settings(env={"LLMSPEND_NOTIFY_TARGETS": '{"x": {"format": "sms"}}'})


def test_each_format_builds_its_request():
    warn = records()[0]
    for fmt, url in (("webhook", "http://h/x"), ("slack", "https://hooks/x"),
                     ("alertmanager", "http://am:9093"),
                     ("pagerduty", "https://events.pagerduty.com/v2/enqueue")):
        (t,) = parse_targets({"t": {"format": fmt, "url": url, "routing_key": "rk"}})
        req = build_request(t, warn)
        assert req.method == "POST" and req.url.startswith(url) and req.body


def test_cooldown_lets_escalations_and_resolves_through_but_not_a_quick_reopen():
    warn, crit, done, again = records()
    c = Cooldown(cooldown_s=300)
    assert c.allow(done, 0) is False          # never announce the end of what we never sent
    assert c.allow(warn, 0)
    c.delivered(warn, 0)
    assert c.allow(warn, 1) is False          # the same state again (a replayed twin)
    assert c.allow(crit, 2)
    c.delivered(crit, 2)
    assert c.allow(done, 3)
    c.delivered(done, 3)
    assert c.allow(again, 60) is False        # flapping: re-opened within the cool-down
    assert c.allow(again, 400)


def test_backoff_grows_and_is_capped():
    waits = [backoff_s(a, cap_s=10) for a in range(10)]
    assert waits[0] < 1 and max(waits) <= 12 and waits[3] > waits[0]
