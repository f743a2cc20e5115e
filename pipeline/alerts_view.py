"""Terminal view of alert records (``llmspend alerts``): one line per record, filters, and
the ``--since`` parser. Pure functions, no Kafka: the command in :mod:`pipeline.cli` reads
the topic and hands each decoded record here.

A line reads::

    14:03:27 CRITICAL runaway_loop     session:s-42 tenant=acme  search x12 ...  loop/acme/s-42

time (the record's ``last_seen`` in UTC, with the date when it is not today), severity
(``RESOLVED`` for a resolved incident), detector, subject, tenant, summary and, dimmed,
the ``dedup_key`` that names the incident.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any

import click

from schemas import alerts as A

#: Style of each severity label (``RESOLVED`` is green whatever the severity was).
SEVERITY_STYLE: dict[str, dict[str, Any]] = {
    A.CRITICAL: {"fg": "red", "bold": True},
    A.WARNING: {"fg": "yellow"},
    A.INFO: {"fg": "blue"},
}
RESOLVED_STYLE: dict[str, Any] = {"fg": "green"}
_LABEL_WIDTH = max(len(s) for s in (*A.SEVERITIES, A.RESOLVED))

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_DURATION_FULL = re.compile(r"(?:\d+\s*[smhdw]\s*)+")


def _clean(value: Any) -> str:
    """A field as one printable line: control characters (newlines, ESC...) become
    spaces, so a record can neither break the line nor inject terminal escapes."""
    text = "" if value is None else str(value)
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)


def _when(last_seen: Any, now: dt.datetime) -> str:
    """``HH:MM:SS`` (UTC), prefixed with the date when it is not today's; the raw text
    if it is not a timestamp."""
    if not isinstance(last_seen, str):
        return "?" if last_seen is None else _clean(last_seen)
    try:
        t = dt.datetime.fromisoformat(last_seen)
    except ValueError:
        return _clean(last_seen)
    t = _as_utc(t)
    clock = t.strftime("%H:%M:%S")
    return clock if t.date() == _as_utc(now).date() else f"{t:%Y-%m-%d} {clock}"


def _as_utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def severity_label(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The label shown for a record and its style."""
    if record.get(A.STATE) == A.RESOLVED:
        return "RESOLVED", RESOLVED_STYLE
    sev = record.get(A.SEVERITY)
    return _clean(sev or "?").upper(), SEVERITY_STYLE.get(sev, {})


def format_line(record: dict[str, Any], color: bool, now: dt.datetime | None = None) -> str:
    """One terminal line for an alert record (no escape codes at all unless ``color``).

    ``now`` (default: the current time) decides whether the date is shown. Missing
    fields show as ``?``; ``evidence`` is not shown (``--json`` has everything).
    """
    now = now or dt.datetime.now(dt.UTC)

    def style(text: str, **kw: Any) -> str:
        return click.style(text, **kw) if color and kw else text

    label, label_style = severity_label(record)
    subject = (f"{_clean(record.get(A.SUBJECT_KIND) or '?')}:"
               f"{_clean(record.get(A.SUBJECT) or '?')}")
    parts = [
        _when(record.get(A.LAST_SEEN), now),
        style(label.ljust(_LABEL_WIDTH), **label_style),
        _clean(record.get(A.DETECTOR) or "?").ljust(16),
        subject,
        f"tenant={_clean(record.get(A.TENANT) or '?')}",
        " " + _clean(record.get(A.SUMMARY) or ""),
        " " + style(_clean(record.get(A.DEDUP_KEY) or "?"), dim=True),
    ]
    return " ".join(parts)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """The start time ``--since`` names: a duration back from ``now`` (``30s``, ``10m``,
    ``2h``, ``1d``, ``1w``, or a sum such as ``1h30m``) or an ISO 8601 timestamp (naive
    means UTC). Always returned timezone-aware, in UTC.

    Raises ValueError with a message fit for the command line otherwise.
    """
    raw = text.strip()
    if _DURATION_FULL.fullmatch(raw):
        seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(raw))
        return _as_utc(now) - dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d, 1h30m) nor an ISO 8601 "
            f"time (2025-01-31T14:00:00Z; a time without offset is UTC)"
        ) from None
    return _as_utc(when)


def matches(record: dict[str, Any], severity: str | None = None, detector: str | None = None,
            tenant: str | None = None, state: str | None = None) -> bool:
    """Whether a record passes the filters: ``severity`` is a minimum (``warning`` keeps
    warnings and criticals), the others must be equal; None lets everything through."""
    if severity is not None:
        if severity not in A.SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}: one of {', '.join(A.SEVERITIES)}")
        sev = record.get(A.SEVERITY)
        if (A.RANK.get(sev, 0) if isinstance(sev, str) else 0) < A.RANK[severity]:
            return False
    return all(want is None or record.get(name) == want
               for name, want in ((A.DETECTOR, detector), (A.TENANT, tenant),
                                  (A.STATE, state)))
