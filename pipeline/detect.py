"""Runaway sessions: the pure detectors run on ``llm_calls`` (partitioned by session).

:class:`SessionDetector` holds the state of the sessions of one ``llm_calls`` partition
and takes that partition's records in offset order: ``add(rows, record_ts_ms)`` returns
the alert records to write and the sessions whose state changed (for the changelog).
Each session has ONE incident (``dedup_key`` ``session/<tenant>/<session>``) fed by
every session detector, so a looping session pages once, escalates once and resolves
once, whatever mix of rules it trips:

* **runaway_loop**: the same tool with the same ``tool_args_hash`` called N times in a
  row (other tool calls break the run; LLM calls in between do not); the same
  ``last_message_hash`` sent to the same model N times (the agent keeps seeing the same
  thing); a cycle of 2 to ``cycle_max_period`` distinct tool calls (A-B-A-B...) repeated
  N times. N is ``loop_warn`` (warning) and ``loop_critical`` (critical).
* **runaway_session**: steps (LLM + tool calls), tokens, cost or duration of the session
  above a limit, or its cost over the last minute of event time (USD per minute) above
  the velocity limit. A limit of 0 is off.

Calls already seen in the session (same ``call_id``: client retries, replays after a
restart) are ignored, so duplicates never look like a loop. A session's incident
resolves once the session has been quiet for ``quiet_s``; its state is forgotten after
``ttl_s`` without calls (memory stays bounded whatever the number of sessions).

Time is event time: the partition's clock is the highest call end time seen, advanced by
the wall time (record timestamps) that passed since, so quiet partitions still resolve
and expire sessions (the normalise stage's heartbeat records carry those timestamps).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from typing import Any

from pipeline.alerts import Incident
from pipeline.callbatch import pico
from schemas import alerts as A
from schemas import calls as C

PICO = 10 ** 12


def time_us(text: str | None) -> int | None:
    """An ``llm_calls`` RFC 3339 time as microseconds since the epoch (None for null)."""
    return C.parse_rfc3339(text) if text else None


def usd(p: int) -> str:
    """Integer pico-dollars as a decimal string with 6 places (evidence, summaries)."""
    return f"{Decimal(p).scaleb(-12):.6f}"


@dataclass(frozen=True)
class SessionLimits:
    """Thresholds of the session detectors (``[detect]`` settings)."""

    loop_warn: int = 3
    loop_critical: int = 6
    cycle_max_period: int = 4
    steps_warn: int = 150
    steps_critical: int = 500
    tokens_warn: int = 2_000_000
    tokens_critical: int = 10_000_000
    cost_warn_pico: int = 5 * PICO
    cost_critical_pico: int = 25 * PICO
    duration_warn_s: float = 4 * 3600.0
    duration_critical_s: float = 0.0
    velocity_warn_pico: int = 2 * PICO
    velocity_critical_pico: int = 10 * PICO
    quiet_s: float = 120.0
    ttl_s: float = 3600.0
    seen_per_session: int = 256

    @classmethod
    def from_settings(cls, d: Any) -> SessionLimits:
        return cls(loop_warn=d.loop_warn, loop_critical=d.loop_critical,
                   cycle_max_period=d.cycle_max_period,
                   steps_warn=d.session_steps_warn, steps_critical=d.session_steps_critical,
                   tokens_warn=d.session_tokens_warn,
                   tokens_critical=d.session_tokens_critical,
                   cost_warn_pico=pico(d.session_cost_warn_usd),
                   cost_critical_pico=pico(d.session_cost_critical_usd),
                   duration_warn_s=d.session_duration_warn_s,
                   duration_critical_s=d.session_duration_critical_s,
                   velocity_warn_pico=pico(d.cost_velocity_warn_usd_per_min),
                   velocity_critical_pico=pico(d.cost_velocity_critical_usd_per_min),
                   quiet_s=d.session_quiet_s, ttl_s=d.session_ttl_s,
                   seen_per_session=d.seen_calls_per_session)


def _level(value: float, warn: float, critical: float) -> str | None:
    """Severity of ``value`` against two limits (a limit <= 0 is off)."""
    if critical > 0 and value >= critical:
        return A.CRITICAL
    if warn > 0 and value >= warn:
        return A.WARNING
    return None


@dataclass
class SessionState:
    """What the detectors remember of one session (JSON-able: the changelog value)."""

    tenant: str
    session: str
    first_us: int = 0
    last_us: int = 0             # latest call end (event time)
    seen: list[str] = field(default_factory=list)      # call ids, oldest first
    steps: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    tokens: int = 0
    cost: int = 0                # pico-dollars (exact)
    run_sig: str = ""            # the current run of identical tool calls
    run: int = 0
    run_first_span: str = ""
    msg_sig: str = ""            # the current run of identical (model, last message)
    msg_run: int = 0
    tools: list[str] = field(default_factory=list)     # recent tool signatures
    recent: list[list[int]] = field(default_factory=list)  # [end_us, cost] last minute
    service: str | None = None
    agent: str | None = None
    team: str | None = None
    user: str | None = None
    model: str | None = None
    trace_id: str = ""
    first_span: str = ""
    last_span: str = ""
    incident: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionState:
        return cls(**d)


@dataclass
class DetectOutput:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)     # session keys to write
    expired: set[str] = field(default_factory=set)     # session keys to delete
    stats: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n


def session_key(tenant: str, session: str) -> str:
    """The state key of a session: the ``llm_calls`` Kafka key, ``tenant|session``."""
    return f"{tenant}|{session}"


def _cycle(tools: list[str], max_period: int) -> tuple[int, int]:
    """(period, repetitions) of the longest-repeating short cycle ending the sequence,
    for periods 2..max_period whose elements are not all equal; (0, 0) if none."""
    best = (0, 0)
    for p in range(2, max_period + 1):
        if len(tools) < 2 * p:
            continue
        unit = tools[-p:]
        if len(set(unit)) < 2:
            continue
        reps, i = 1, len(tools) - 2 * p
        while i >= 0 and tools[i:i + p] == unit:
            reps += 1
            i -= p
        if reps >= 2 and reps > best[1]:
            best = (p, reps)
    return best


def apply_call(s: SessionState, row: dict[str, Any], limits: SessionLimits) -> bool:
    """Fold one call into a session's state; False when it was already seen."""
    cid = row[C.CALL_ID]
    if cid in s.seen:
        return False
    s.seen.append(cid)
    if len(s.seen) > limits.seen_per_session:
        del s.seen[: len(s.seen) - limits.seen_per_session]
    start = row.get("_start_us") or time_us(row[C.START_TIME]) or 0
    end = time_us(row.get(C.END_TIME)) or start
    if s.steps == 0:
        s.first_us, s.first_span = start, row[C.SPAN_ID]
    s.first_us = min(s.first_us, start)
    s.last_us = max(s.last_us, end)
    s.last_span, s.trace_id = row[C.SPAN_ID], row[C.TRACE_ID]
    s.steps += 1
    get = row.get
    s.service = get(C.SERVICE) or s.service
    s.agent = get(C.AGENT) or s.agent
    s.team = get(C.TEAM) or s.team
    s.user = get(C.USER_ID) or s.user
    if row[C.KIND] == C.KIND_TOOL:
        s.tool_calls += 1
        sig = f"{row.get(C.TOOL_NAME) or '?'}#{row.get(C.TOOL_ARGS_HASH) or ''}"
        if sig == s.run_sig:
            s.run += 1
        else:
            s.run_sig, s.run, s.run_first_span = sig, 1, row[C.SPAN_ID]
        s.tools.append(sig)
        keep = 2 * limits.cycle_max_period * max(limits.loop_critical, 2)
        if len(s.tools) > keep:
            del s.tools[: len(s.tools) - keep]
        return True
    s.llm_calls += 1
    model = row.get(C.MODEL) or row.get(C.RESPONSE_MODEL) or row.get(C.REQUEST_MODEL)
    s.model = model or s.model
    s.tokens += (row.get(C.INPUT_TOKENS) or 0) + (row.get(C.OUTPUT_TOKENS) or 0)
    cost = pico(row.get(C.COST_USD))
    s.cost += cost
    if cost:
        s.recent.append([end, cost])
    if s.recent and s.recent[0][0] <= s.last_us - 60_000_000:
        s.recent = [r for r in s.recent if r[0] > s.last_us - 60_000_000]
    last = row.get(C.LAST_MESSAGE_HASH)
    if last and row.get(C.STATUS) == C.STATUS_OK:  # a retry after an error is no loop
        sig = f"{model}#{last}"
        if sig == s.msg_sig:
            s.msg_run += 1
        else:
            s.msg_sig, s.msg_run = sig, 1
    return True


def _near_limit(s: SessionState, lim: SessionLimits) -> bool:
    """Could any session limit fire? (Cheap: the warn limits, or critical when warn is
    off.)"""
    def low(w: float, c: float) -> float:
        return w if w > 0 else (c if c > 0 else float("inf"))

    return (s.steps >= low(lim.steps_warn, lim.steps_critical)
            or s.tokens >= low(lim.tokens_warn, lim.tokens_critical)
            or s.cost >= low(lim.cost_warn_pico, lim.cost_critical_pico)
            or (s.last_us - s.first_us) / 1e6 >= low(lim.duration_warn_s,
                                                      lim.duration_critical_s)
            or (bool(s.recent) and sum(c for _, c in s.recent)
                >= low(lim.velocity_warn_pico, lim.velocity_critical_pico)))


def evaluate(s: SessionState, limits: SessionLimits, quiet_limits: int = 0
             ) -> tuple[str | None, str, list[str]]:
    """(level, detector, reasons) of a session as it stands. Session-limit reasons at
    or below rank ``quiet_limits`` are left out: a limit already reported by a resolved
    incident stays crossed, and must not re-open it at every pause of a long session."""
    lw, lc = limits.loop_warn, limits.loop_critical
    if s.run < lw and s.msg_run < lw and len(s.tools) < 2 * lw \
            and not _near_limit(s, limits):
        return None, "", []        # the common case: nothing close to any threshold
    reasons: list[tuple[str | None, str, str]] = []
    if s.run >= lw:
        reasons.append((_level(s.run, lw, lc), "runaway_loop",
                        f"{s.run_sig.partition('#')[0]} called {s.run} times in a row with "
                        f"the same arguments"))
    if s.msg_run >= lw:
        reasons.append((_level(s.msg_run, lw, lc), "runaway_loop",
                        f"the same last message sent to {s.msg_sig.partition('#')[0]} "
                        f"{s.msg_run} times"))
    if len(s.tools) >= 2 * lw:
        period, reps = _cycle(s.tools, limits.cycle_max_period)
        if reps >= lw:
            names = " -> ".join(t.partition("#")[0] for t in s.tools[-period:])
            reasons.append((_level(reps, lw, lc), "runaway_loop",
                            f"the tool cycle {names} repeated {reps} times"))
    velocity = sum(c for _, c in s.recent)
    duration_s = (s.last_us - s.first_us) / 1e6
    checks = (  # (value, warn, critical, how to say it): text built only when it fires
        (s.steps, limits.steps_warn, limits.steps_critical, lambda: f"{s.steps} steps"),
        (s.tokens, limits.tokens_warn, limits.tokens_critical,
         lambda: f"{s.tokens:,} tokens"),
        (s.cost, limits.cost_warn_pico, limits.cost_critical_pico,
         lambda: f"{usd(s.cost)} USD spent"),
        (duration_s, limits.duration_warn_s, limits.duration_critical_s,
         lambda: f"running for {duration_s / 60:.0f} minutes"),
        (velocity, limits.velocity_warn_pico, limits.velocity_critical_pico,
         lambda: f"{usd(velocity)} USD in the last minute"),
    )
    for value, warn, crit, say in checks:
        lvl = _level(value, warn, crit)
        if lvl and A.RANK[lvl] > quiet_limits:
            reasons.append((lvl, "runaway_session", say()))
    reasons = [r for r in reasons if r[0]]
    if not reasons:
        return None, "", []
    top = max(A.RANK[r[0]] for r in reasons)
    detector = next(r[1] for r in reasons if A.RANK[r[0]] == top)
    return (A.CRITICAL if top == A.RANK[A.CRITICAL] else A.WARNING), detector, \
        [r[2] for r in reasons]


def evidence(s: SessionState, reasons: list[str]) -> dict[str, Any]:
    """What on-call needs to act: counts, cost so far, the repetition, drill-down ids."""
    ev: dict[str, Any] = {
        "reasons": reasons, "steps": s.steps, "llm_calls": s.llm_calls,
        "tool_calls": s.tool_calls, "tokens": s.tokens, "cost_usd": usd(s.cost),
        "cost_usd_last_minute": usd(sum(c for _, c in s.recent)),
        "duration_s": round((s.last_us - s.first_us) / 1e6, 3),
        "service": s.service, "agent": s.agent, "team": s.team, "user_id": s.user,
        "model": s.model, "trace_id": s.trace_id, "first_span_id": s.first_span,
        "last_span_id": s.last_span,
    }
    if s.run >= 2:
        tool, _, args = s.run_sig.partition("#")
        ev.update(repeated_tool=tool, repeated_tool_args_hash=args,
                  repeated_tool_calls=s.run, repeat_first_span_id=s.run_first_span)
    if s.msg_run >= 2:
        ev["repeated_last_message_calls"] = s.msg_run
    return ev


def _summary(s: SessionState, reasons: list[str], resolved: bool = False) -> str:
    who = s.agent or s.service or "unknown service"
    if resolved:
        return (f"Session {s.session} of {who} went quiet after {s.steps} steps and "
                f"{usd(s.cost)} USD; resolved.")
    return f"Session {s.session} of {who} is running away: {'; '.join(reasons)} " \
           f"({usd(s.cost)} USD so far)."


class SessionDetector:
    """The session detectors of one ``llm_calls`` partition (module docstring)."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        self.sessions: OrderedDict[str, SessionState] = OrderedDict()  # by last touch
        self.firing: set[str] = set()
        self.event_us = 0        # highest call end time seen
        #: Record timestamp (ms) when event_us last moved; None after a restore, until
        #: the first record.
        self.wall_at_event: int | None = 0
        self.wall_ms = 0         # highest record timestamp seen

    @property
    def clock_us(self) -> int:
        """Event time now: the highest end time, plus wall time since it moved."""
        since = self.wall_ms - (self.wall_at_event if self.wall_at_event is not None
                                else self.wall_ms)
        return self.event_us + max(0, since) * 1000

    def restore(self, key: str, state: dict[str, Any]) -> None:
        """Load one session from the changelog (before the partition's records)."""
        s = SessionState.from_json(state)
        self.sessions[key] = s
        self.event_us = max(self.event_us, s.last_us)
        self.wall_at_event = None
        if s.incident and s.incident.get("st") == A.FIRING:
            self.firing.add(key)

    def add(self, rows: list[dict[str, Any]], record_ts_ms: int) -> DetectOutput:
        """One ``llm_calls`` record's calls (empty for a heartbeat), each evaluated as
        it is folded in (in start-time order), so severities rise at the exact call
        that crossed a limit."""
        out = DetectOutput()
        self.wall_ms = max(self.wall_ms, record_ts_ms)
        if self.wall_at_event is None:
            # Restored from the changelog: wall time starts counting from here, not
            # from 1970 (which would resolve and expire every session at once).
            self.wall_at_event = self.wall_ms
        # OTLP groups a request's spans by instrumentation scope, so a record's lines
        # are not in time order (all LLM spans, then all tool spans): restore it.
        for row in rows:
            row["_start_us"] = time_us(row[C.START_TIME]) or 0
        for row in sorted(rows, key=itemgetter("_start_us")):
            key = session_key(row[C.TENANT], row[C.SESSION_ID])
            s = self.sessions.get(key)
            if s is None:
                s = self.sessions[key] = SessionState(row[C.TENANT], row[C.SESSION_ID])
                out.count("sessions_started")
            if not apply_call(s, row, self.limits):
                out.count("duplicates_ignored")
                continue
            out.count("calls")
            self.sessions.move_to_end(key)
            out.changed.add(key)
            if s.last_us > self.event_us:
                self.event_us, self.wall_at_event = s.last_us, self.wall_ms
            inc_state = s.incident or {}
            quiet = A.RANK[inc_state.get("sev")] if inc_state.get("st") == A.RESOLVED else 0
            level, detector, reasons = evaluate(s, self.limits, quiet)
            if level is None and inc_state.get("st") != A.FIRING:
                continue
            inc = self._incident(s)
            rec = inc.observe(level, detector, _summary(s, reasons),
                              evidence(s, reasons) if level else {}, s.last_us)
            s.incident = inc.to_state()
            if inc.firing:
                self.firing.add(key)
            if rec is not None:
                out.alerts.append(rec)
                out.count("alerts")
        self._sweep(out)
        return out

    def _incident(self, s: SessionState) -> Incident:
        if s.incident:
            return Incident.from_state(s.incident)
        return Incident(A.dedup_key("session", s.tenant, s.session), "session", s.session,
                        s.tenant)

    def _sweep(self, out: DetectOutput) -> None:
        now = self.clock_us
        quiet = int(self.limits.quiet_s * 1e6)
        for key in [k for k in self.firing if now - self.sessions[k].last_us >= quiet]:
            s = self.sessions[key]
            inc = Incident.from_state(s.incident or {})
            rec = inc.resolve(_summary(s, [], resolved=True), None, evidence(s, []))
            s.incident = inc.to_state()
            self.firing.discard(key)
            out.changed.add(key)
            if rec is not None:
                out.alerts.append(rec)
                out.count("incidents_resolved")
        ttl = int(self.limits.ttl_s * 1e6)
        while self.sessions:
            key, s = next(iter(self.sessions.items()))
            if now - s.last_us < ttl or key in self.firing:
                break
            del self.sessions[key]
            out.changed.discard(key)
            out.expired.add(key)
            out.count("sessions_expired")
