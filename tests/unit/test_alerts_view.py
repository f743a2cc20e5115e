"""The terminal view of alert records (`llmspend alerts`): lines, filters, --since."""

from __future__ import annotations

import datetime as dt

import click
import pytest

from pipeline.alerts import Incident
from pipeline.alerts_view import format_line, matches, parse_since
from schemas import alerts as A

NOW = dt.datetime(2025, 3, 14, 15, 0, 0, tzinfo=dt.UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


def _incident() -> Incident:
    return Incident(A.dedup_key("session", "acme", "s-42"), "session", "s-42", "acme")


def _record(level: str = A.CRITICAL, detector: str = "runaway_loop",
            summary: str = "search called 12 times with the same arguments",
            seen_us: int = NOW_US - 90_000_000) -> dict:
    r = _incident().observe(level, detector, summary, {"repeats": 12}, seen_us)
    assert r is not None and not A.validate(r)
    return r


def _resolved() -> dict:
    inc = _incident()
    inc.observe(A.WARNING, "runaway_loop", "looping", {}, NOW_US - 300_000_000)
    r = inc.resolve("went quiet; resolved", NOW_US - 60_000_000)
    assert r is not None and not A.validate(r)
    return r


# ---------------------------------------------------------------- format_line

def test_plain_line_has_every_part_in_order_and_no_escape_codes():
    line = format_line(_record(), color=False, now=NOW)
    assert "\x1b" not in line and "\n" not in line
    parts = ["14:58:30", "CRITICAL", "runaway_loop", "session:s-42", "tenant=acme",
             "search called 12 times with the same arguments", "session/acme/s-42"]
    positions = [line.index(p) for p in parts]
    assert positions == sorted(positions)
    assert line.startswith("14:58:30 CRITICAL ")
    assert line.endswith("session/acme/s-42")


def test_coloured_line_styles_severity_and_dims_the_key():
    line = format_line(_record(), color=True, now=NOW)
    assert click.style("CRITICAL", fg="red", bold=True) in line
    assert line.endswith(click.style("session/acme/s-42", dim=True))
    assert click.unstyle(line) == format_line(_record(), color=False, now=NOW)


@pytest.mark.parametrize("level,style", [
    (A.WARNING, {"fg": "yellow"}),
    (A.INFO, {"fg": "blue"}),
])
def test_each_severity_has_its_colour(level, style):
    line = format_line(_record(level), color=True, now=NOW)
    assert click.style(level.upper().ljust(8), **style) in line


def test_resolved_is_shown_green_as_resolved():
    r = _resolved()
    plain = format_line(r, color=False, now=NOW)
    assert " RESOLVED " in plain and "WARNING" not in plain
    assert "went quiet; resolved" in plain and plain.startswith("14:59:00 ")
    assert click.style("RESOLVED", fg="green") in format_line(r, color=True, now=NOW)


def test_date_is_shown_when_not_today():
    r = _record(seen_us=NOW_US - 2 * 86_400_000_000)
    assert format_line(r, color=False, now=NOW).startswith("2025-03-12 15:00:00 CRITICAL")


def test_missing_evidence_and_other_fields_do_not_break_the_line():
    r = _record()
    del r[A.EVIDENCE]
    assert "search called 12 times" in format_line(r, color=False, now=NOW)
    bare = format_line({A.SUMMARY: "only a summary"}, color=True, now=NOW)
    assert "only a summary" in bare and "?:?" in bare


def test_control_characters_in_a_record_cannot_break_the_line_or_inject_escapes():
    r = _record(summary="line one\nline two \x1b[31mred\x1b[0m")
    line = format_line(r, color=False, now=NOW)
    assert "\n" not in line and "\x1b" not in line
    assert "line one line two" in line


def test_default_now_is_the_current_time():
    seen = dt.datetime.now(dt.UTC).replace(microsecond=0)
    r = _record(seen_us=int(seen.timestamp()) * 1_000_000)
    assert format_line(r, color=False).startswith(seen.strftime("%H:%M:%S"))


# ---------------------------------------------------------------- parse_since

@pytest.mark.parametrize("text,delta", [
    ("30s", dt.timedelta(seconds=30)),
    ("10m", dt.timedelta(minutes=10)),
    ("2h", dt.timedelta(hours=2)),
    ("1d", dt.timedelta(days=1)),
    ("1w", dt.timedelta(weeks=1)),
    ("1h30m", dt.timedelta(minutes=90)),
    (" 5m ", dt.timedelta(minutes=5)),
    ("0s", dt.timedelta(0)),
])
def test_durations_count_back_from_now(text, delta):
    assert parse_since(text, NOW) == NOW - delta


@pytest.mark.parametrize("text,expected", [
    ("2025-03-14T12:00:00Z", dt.datetime(2025, 3, 14, 12, tzinfo=dt.UTC)),
    ("2025-03-14T12:00:00+02:00", dt.datetime(2025, 3, 14, 10, tzinfo=dt.UTC)),
    ("2025-03-14T12:00:00", dt.datetime(2025, 3, 14, 12, tzinfo=dt.UTC)),
    ("2025-03-14 12:00", dt.datetime(2025, 3, 14, 12, tzinfo=dt.UTC)),
    ("2025-03-14", dt.datetime(2025, 3, 14, tzinfo=dt.UTC)),
])
def test_iso_timestamps_naive_means_utc(text, expected):
    got = parse_since(text, NOW)
    assert got == expected and got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)


def test_naive_now_is_taken_as_utc():
    assert parse_since("1h", NOW.replace(tzinfo=None)) == NOW - dt.timedelta(hours=1)


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "-5m", "yesterday", "5 minutes",
                                  "2025-13-01T00:00:00", "1.5h"])
def test_anything_else_is_a_clear_error(text):
    with pytest.raises(ValueError, match=r"neither a duration .* nor an ISO 8601 time"):
        parse_since(text, NOW)


# ---------------------------------------------------------------- matches

def test_no_filter_matches_everything():
    assert matches(_record()) and matches({})


@pytest.mark.parametrize("minimum,kept", [
    (None, {"info", "warning", "critical"}),
    ("info", {"info", "warning", "critical"}),
    ("warning", {"warning", "critical"}),
    ("critical", {"critical"}),
])
def test_severity_is_a_minimum(minimum, kept):
    got = {lvl for lvl in A.SEVERITIES if matches(_record(lvl), severity=minimum)}
    assert got == kept


def test_detector_tenant_and_state_must_be_equal_and_combine():
    r = _record(detector="runaway_session")
    assert matches(r, detector="runaway_session", tenant="acme", state="firing")
    assert not matches(r, detector="runaway_loop")
    assert not matches(r, tenant="other")
    assert not matches(r, state="resolved")
    assert matches(_resolved(), state="resolved", severity="warning")
    assert not matches(r, severity="critical", tenant="other")


def test_severity_filter_tolerates_odd_records_and_rejects_unknown_levels():
    assert not matches({A.SEVERITY: ["critical"]}, severity="info")
    assert not matches({}, severity="info")
    with pytest.raises(ValueError, match="unknown severity"):
        matches(_record(), severity="fatal")
