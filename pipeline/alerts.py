"""Incidents and their alert records: one incident per ``dedup_key``, no storms.

Detectors report a *level* (None, or a severity) for a subject every time they look at
it; :class:`Incident` turns that stream of levels into at most a handful of records:
one when the incident opens, one per rise in severity, one when it resolves. A level
that stays the same or falls while firing writes nothing (last_seen still moves, so a
later record carries it). Incidents serialise to small dicts, which is how detectors
keep them in their changelogged state and recover them after a restart.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from schemas import alerts as A
from schemas.calls import parse_rfc3339 as parse_rfc3339_us
from schemas.calls import rfc3339 as rfc3339_us

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def now_rfc3339() -> str:
    return (_EPOCH + dt.timedelta(milliseconds=int(time.time() * 1000))).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Incident:
    """The lifecycle of one incident (``state`` None: never fired)."""

    dedup_key: str
    subject_kind: str
    subject: str
    tenant: str
    severity: str | None = None
    state: str | None = None
    detector: str = ""
    first_seen_us: int = 0
    last_seen_us: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def firing(self) -> bool:
        return self.state == A.FIRING

    def observe(self, level: str | None, detector: str, summary: str,
                evidence: dict[str, Any], seen_us: int) -> dict[str, Any] | None:
        """Record the detector's current verdict; the alert record to write, if any.

        A resolved incident re-opens (new first_seen) when its subject fires again.
        """
        if level is None:
            if self.firing:
                self.last_seen_us = max(self.last_seen_us, seen_us)
            return None
        if self.firing and A.RANK[level] <= A.RANK[self.severity]:
            self.last_seen_us = max(self.last_seen_us, seen_us)
            if A.RANK[level] == A.RANK[self.severity]:
                self.evidence, self.summary = evidence, summary
            return None
        if not self.firing:
            self.first_seen_us = seen_us
        self.state, self.severity, self.detector = A.FIRING, level, detector
        self.last_seen_us = max(self.last_seen_us, seen_us)
        self.evidence, self.summary = evidence, summary
        return self.record()

    def resolve(self, summary: str, seen_us: int | None = None,
                evidence: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Close a firing incident; its resolved record (None if it was not firing)."""
        if not self.firing:
            return None
        self.state = A.RESOLVED
        if seen_us is not None:
            self.last_seen_us = max(self.last_seen_us, seen_us)
        if evidence is not None:
            self.evidence = evidence
        self.summary = summary
        return self.record()

    def record(self) -> dict[str, Any]:
        """The alert record of the incident's current state (schemas/alerts.py)."""
        assert self.state is not None and self.severity is not None
        first_seen = rfc3339_us(self.first_seen_us)
        return {
            A.ID: A.alert_id(self.dedup_key, self.state, self.severity, first_seen),
            A.DEDUP_KEY: self.dedup_key,
            A.SEVERITY: self.severity,
            A.DETECTOR: self.detector,
            A.SUBJECT_KIND: self.subject_kind,
            A.SUBJECT: self.subject,
            A.TENANT: self.tenant,
            A.SUMMARY: self.summary,
            A.EVIDENCE: self.evidence,
            A.FIRST_SEEN: first_seen,
            A.LAST_SEEN: rfc3339_us(self.last_seen_us),
            A.STATE: self.state,
            A.EMITTED_AT: now_rfc3339(),
        }

    # ------------------------------------------------------------ persistence

    def to_state(self) -> dict[str, Any]:
        return {"k": self.dedup_key, "sk": self.subject_kind, "s": self.subject,
                "t": self.tenant, "sev": self.severity, "st": self.state,
                "d": self.detector, "f": self.first_seen_us, "l": self.last_seen_us}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Incident:
        return cls(d["k"], d["sk"], d["s"], d["t"], d["sev"], d["st"], d["d"], d["f"],
                   d["l"])

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Incident:
        """Rebuild an incident from its latest alert record (restart recovery)."""
        return cls(r[A.DEDUP_KEY], r[A.SUBJECT_KIND], r[A.SUBJECT], r[A.TENANT],
                   r[A.SEVERITY], r[A.STATE], r[A.DETECTOR],
                   parse_rfc3339_us(r[A.FIRST_SEEN]), parse_rfc3339_us(r[A.LAST_SEEN]),
                   dict(r.get(A.EVIDENCE) or {}), r.get(A.SUMMARY, ""))


def latest_by_key(records: list[dict[str, Any]]) -> dict[str, Incident]:
    """The incidents an alert log describes: the last record of each dedup_key wins."""
    out: dict[str, Incident] = {}
    for r in records:
        if isinstance(r, dict) and not A.validate(r):
            out[r[A.DEDUP_KEY]] = Incident.from_record(r)
    return out
