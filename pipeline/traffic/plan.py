"""Pure planning: ``plan(options, catalog?) -> Plan``, every span as plain data.

Nothing here touches the network, the clock or global randomness: the same
:class:`Options` (seed included) give the same :class:`Plan`, span ids included, so a
test can compare two plans field by field and the emitter (:mod:`pipeline.traffic.emit`)
only replays what was planned.

How traffic is made
-------------------
* **Arrivals** are the rows of the Azure LLM inference trace (code and conversation
  files merged, replayed in a loop when the horizon is longer than the hour they cover).
  A row's arrival time, scaled by ``rate``, is when a user acts: event time =
  ``start_time_ns + trace_offset / rate``. Latencies are never scaled (they come from
  :mod:`pipeline.traffic.latency`).
* Each row goes to a **service** of its trace file (weights in
  :mod:`pipeline.traffic.profiles`), and becomes the next **turn** of one of that
  service's open sessions whose user has finished thinking, or the first turn of a new
  session (its tenant, team, user, unit and convention drawn from the session's own
  seeded RNG).
* A turn is one trace. Chat and code turns: a root request span (not a call) and one
  chat call. Agent turns: an ``invoke_agent`` root span with chat and ``execute_tool``
  children (1-3 tool rounds, then a final answer). Single-shot turns (summaries, emails):
  one chat call, re-run on the larger model when the quality check fails.
* **Tokens**: a turn's new prompt tokens are the row's ``ContextTokens`` and its answer
  the row's ``GeneratedTokens``. A conversation re-sends its history, so a turn's input
  is ``history + new`` (at most 120k: older history is dropped) and the history prefix
  is read from the prompt cache when the provider caches (OpenAI: automatic, >= 1024
  tokens, 128-token steps; Anthropic: explicit, reads and writes; Google 2.5 models:
  implicit >= 2048), the model is the same and the last call is under 5 minutes old; so
  cache-read tokens grow with the conversation. Agent steps add each tool result to the
  prompt.
* **Errors**: each attempt may be rate-limited or fail on the server (fast), or time
  out (latency above the model's timeout). Failed attempts report no usage and are
  retried twice on the same model with exponential backoff, then once on the service's
  fallback model of another provider.
* **Escalation**: a session moves to its service's larger model for the rest of the
  session (per-turn probability; agents also escalate after long tool loops).

All times are whole microseconds (the resolution of ``llm_calls``), so latencies
computed downstream equal the planned ones exactly.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.traffic import azure_trace, latency, shapes
from pipeline.traffic.profiles import (
    AGENT,
    CACHE_RULES,
    CACHE_TTL_NS,
    CACHING_MODELS,
    CHAT,
    CODE,
    CONTEXT_LIMIT,
    DOCUMENT,
    PROVIDER_OF,
    RUNAWAY_ARGS,
    RUNAWAY_RESULT,
    RUNAWAY_STEPS,
    RUNAWAY_TOOL,
    SERVICE_BY_NAME,
    SERVICES,
    SINGLE,
    TICKET,
    TOOL_MS,
    TOOL_RESULT_TOKENS,
    TOPICS,
    UNKNOWN_MODEL,
    USERS_PER_TEAM,
    Service,
    canonical_json,
    tool_args,
)
from pipeline.traffic.shapes import Msg, Usage

NS = 1_000_000_000
RUNAWAY, BUDGET_BURN, BAD_DEPLOY, RETRY_STORM, UNKNOWN = (
    "runaway-loop", "budget-burn", "bad-deploy", "retry-storm", "unknown-model")
SCENARIOS = (RUNAWAY, BUDGET_BURN, BAD_DEPLOY, RETRY_STORM, UNKNOWN)
DEFAULT_MIX = (("semconv", 0.5), ("openllmetry", 0.25), ("openinference", 0.25))

#: Where each scenario sits, as fractions of the traffic horizon.
RUNAWAY_AT = 0.30
BURN_WINDOW = (0.35, 0.60)
DEPLOY_AT = 0.50
STORM_WINDOW = (0.65, 0.75)
UNKNOWN_WINDOW = (0.45, 1.0)
#: Scenario targets (what each one hits).
BURN_SERVICE, BURN_MODEL, BURN_TOKEN_FACTOR = "research-agent", "gpt-4.1", 3
BURN_EXTRA_EVERY_S = 0.5          # one extra research session every 0.5 trace-seconds
DEPLOY_SERVICE, DEPLOY_TOKEN_FACTOR = "support-assistant", 3
STORM_SERVICE, STORM_COPIES = "code-assistant", (2, 4)
UNKNOWN_SERVICE, UNKNOWN_SHARE = "sales-email-writer", 0.5
RUNAWAY_SERVICE = "support-triage-agent"


class PlanError(ValueError):
    """Options that cannot be planned; the message says which."""


@dataclass(frozen=True)
class Options:
    """Everything that shapes a plan. ``start_time_ns`` None means now (CLI only)."""

    seed: int = 1
    start_time_ns: int | None = None
    rate: float = 60.0
    duration_s: float | None = None          # traffic (trace) seconds
    calls: int | None = None                 # baseline calls; sets the horizon
    scenarios: tuple[str, ...] = ()
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    tenants: tuple[str, ...] = ("default",)
    traces: tuple[str, ...] = ("code", "conv")
    environment: str = "production"
    service_prefix: str = ""                 # prepended to every service.name

    def validate(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise PlanError(f"rate must be a positive number, got {self.rate}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise PlanError(f"duration must be positive, got {self.duration_s}")
        if self.calls is not None and self.calls < 1:
            raise PlanError(f"calls must be at least 1, got {self.calls}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise PlanError(f"unknown scenario(s) {', '.join(bad)}: choose from "
                            f"{', '.join(SCENARIOS)}")
        conv = [c for c, _ in self.mix if c not in shapes.CONVENTIONS]
        if conv:
            raise PlanError(f"unknown convention(s) {', '.join(conv)} in mix: choose from "
                            f"{', '.join(shapes.CONVENTIONS)}")
        if not self.mix or any(w < 0 for _, w in self.mix) or sum(w for _, w in self.mix) <= 0:
            raise PlanError("mix weights must be non-negative with a positive sum")
        if not self.tenants or len(set(self.tenants)) != len(self.tenants):
            raise PlanError("tenants must be a non-empty list of distinct names")


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``semconv=0.5,openllmetry=0.25,openinference=0.25`` -> weights."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise PlanError(f"mix: {part!r} is not name=weight") from None
        out.append((name.strip(), w))
    if not out:
        raise PlanError("mix is empty")
    return tuple(out)


@dataclass(slots=True)
class CallFacts:
    """What a call span says, in canonical terms (the truth's input)."""

    kind: str                      # "llm" or "tool"
    model: str | None = None       # request (= response) model
    provider: str | None = None    # canonical provider
    input_tokens: int = 0          # INCLUDES cache_read and cache_write
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    error_type: str | None = None
    tool: str | None = None


@dataclass(slots=True)
class PlannedSpan:
    """One span exactly as the emitter will create it (ids as integers)."""

    tenant: str
    service: str                   # resource service.name
    scope: str                     # instrumentation scope name
    trace_id: int
    span_id: int
    parent_id: int                 # 0: root
    name: str
    kind: str                      # client / internal / server
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: str | None              # status ERROR with this description
    session_id: str                # the session id llm_calls will show
    team: str
    use_case: str
    call: CallFacts | None         # None: not a call (agent, workflow spans)
    copies: int = 1                # retry-storm: emitted this many times, same ids
    scenario: str = ""             # the scenario its session belongs to (not emitted)

    @property
    def latency_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class ScenarioEvent:
    """One scenario occurrence: where to look and what the pipeline should see."""

    scenario: str
    tenant: str
    start_ns: int
    end_ns: int
    session_ids: list[str]
    signature: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    options: Options
    start_ns: int
    end_ns: int
    horizon_ns: int                # traffic (trace) time covered
    spans: list[PlannedSpan]
    resources: dict[str, dict[str, Any]]   # service.name -> resource attributes
    events: list[ScenarioEvent]
    sessions: int
    traces: int

    def calls(self) -> list[PlannedSpan]:
        return [s for s in self.spans if s.call is not None]


# ------------------------------------------------------------------ sessions


class _Session:
    __slots__ = ("cache", "conv", "escalated", "history", "id", "last_tool", "messages",
                 "model", "no_errors", "ready_ns", "rng", "service", "sid", "svc_name",
                 "tag", "team", "tenant", "turn", "turns_left", "unit_id", "user")

    def __init__(self) -> None:
        self.cache: dict[str, tuple[int, int]] = {}
        self.messages: list[Msg] = []
        self.history = 0
        self.turn = 0
        self.escalated = False
        self.last_tool = ""
        self.no_errors = False
        self.tag = ""


def _us(ns: float) -> int:
    return int(ns) // 1000 * 1000


def _geometric(rng: random.Random, mean: float, cap: int) -> int:
    if mean <= 1:
        return 1
    p = 1 / mean
    n = 1
    while n < cap and rng.random() > p:
        n += 1
    return n


def system_prompt(service: Service, deployed: bool) -> str:
    text = (f"You are the {service.name} assistant for {service.use_case}. Answer briefly, "
            f"cite the knowledge base, never invent facts.")
    if deployed:  # the bad deploy: a much longer template
        text += (" Always restate the full policy text, the complete case history and "
                 "every prior answer before replying.")
    return text


class _Planner:
    def __init__(self, opts: Options, stop_after_calls: int | None = None) -> None:
        self.o = opts
        self.rng = random.Random(f"llmspend-generate/{opts.seed}/arrivals")
        self.srng = random.Random(f"llmspend-generate/{opts.seed}/scenarios")
        self.start_ns = _us(opts.start_time_ns or 0)
        self.rows = azure_trace.load(tuple(sorted(set(opts.traces))))
        self.trace_len = azure_trace.span_ns(self.rows)
        self.stop_after_calls = stop_after_calls
        self.spans: list[PlannedSpan] = []
        self.ncalls = 0
        self.nsessions = 0
        self.ntraces = 0
        self.by_kind: dict[str, tuple[list[float], list[Service]]] = {}
        for kind in ("code", "conv"):
            svcs = [s for s in SERVICES if s.trace == kind]
            acc, cum = 0.0, []
            for s in svcs:
                acc += s.weight
                cum.append(acc)
            self.by_kind[kind] = ([c / acc for c in cum], svcs)
        self.open: dict[str, list[tuple[int, int, _Session]]] = {s.name: [] for s in SERVICES}
        self.seq = 0
        mix = [(c, w) for c, w in opts.mix if w > 0]
        total = sum(w for _, w in mix)
        self.mix_names = [c for c, _ in mix]
        self.mix_cum = list(_accumulate([w / total for _, w in mix]))
        self.scen = set(opts.scenarios)
        self.events: list[ScenarioEvent] = []
        self.tenant_of: dict[str, str] = {}

    # ---------------------------------------------------------------- time

    def event_ns(self, offset_ns: int) -> int:
        return self.start_ns + _us(offset_ns / self.o.rate)

    # ---------------------------------------------------------------- main loop

    def run(self, horizon_ns: int) -> int:
        """Plan every arrival up to ``horizon_ns`` (trace time); returns the last offset."""
        self.horizon_ns = horizon_ns
        self._scenario_setup(horizon_ns)
        arrivals = self._arrivals(horizon_ns)
        last = 0
        for off, kind, inp, out, forced, tag in arrivals:
            if self.stop_after_calls is not None and self.ncalls >= self.stop_after_calls:
                break
            last = off
            now = self.event_ns(off)
            if forced:
                svc = SERVICE_BY_NAME[forced]
                s = self._new_session(svc, now, tag)
            else:
                cum, svcs = self.by_kind[kind]
                svc = svcs[bisect.bisect_right(cum, self.rng.random() * cum[-1])
                           if cum[-1] else 0] if len(svcs) > 1 else svcs[0]
                s = self._pop_ready(svc, now) or self._new_session(svc, now, "")
            end = self._turn(s, now, inp, out)
            s.turns_left -= 1
            if s.turns_left > 0:
                think = s.service.think_s * math.exp(s.rng.gauss(0, 0.8)) * NS
                s.ready_ns = end + _us(think / self.o.rate)
                self.seq += 1
                heapq.heappush(self.open[svc.name], (s.ready_ns, self.seq, s))
        return last

    def _arrivals(self, horizon_ns: int) -> Iterator[tuple]:
        """Trace rows (looped) and scenario arrivals up to the horizon, in time order."""
        def rows() -> Iterator[tuple]:
            cycle = 0
            while cycle * self.trace_len < horizon_ns:
                base = cycle * self.trace_len
                for r in self.rows:
                    off = base + r.offset_ns
                    if off >= horizon_ns:
                        return
                    yield (off, r.kind, r.input_tokens, r.output_tokens, "", "")
                cycle += 1

        injected = sorted(self._injected(horizon_ns), key=lambda a: (a[0], a[4], a[5]))
        return heapq.merge(rows(), injected, key=lambda a: a[0])

    def _sample_row(self, kind: str) -> tuple[int, int]:
        rows = [r for r in self.rows if r.kind == kind] or list(self.rows)
        r = rows[self.srng.randrange(len(rows))]
        return r.input_tokens, r.output_tokens

    def _pop_ready(self, svc: Service, now: int) -> _Session | None:
        heap = self.open[svc.name]
        stale = 30 * 60 * NS / self.o.rate
        while heap and heap[0][0] <= now:
            _, _, s = heapq.heappop(heap)
            if now - s.ready_ns <= stale:
                return s
        return None

    def _new_session(self, svc: Service, now: int, tag: str) -> _Session:
        self.nsessions += 1
        s = _Session()
        s.rng = random.Random(f"llmspend-generate/{self.o.seed}/session/{self.nsessions}")
        rng = s.rng
        s.service = svc
        s.svc_name = self.o.service_prefix + svc.name
        s.tag = tag
        s.tenant = (self.tenant_of[tag] if tag in self.tenant_of
                    else self.o.tenants[rng.randrange(len(self.o.tenants))])
        s.team = svc.teams[rng.randrange(len(svc.teams))]
        s.user = f"user-{s.team}-{rng.randrange(USERS_PER_TEAM):03d}"
        s.unit_id = None
        if svc.unit_type == TICKET:
            s.unit_id = f"TCK-{rng.randrange(10**6):06d}"
        elif svc.unit_type == DOCUMENT:
            s.unit_id = f"DOC-{rng.randrange(10**6):06d}"
        u = rng.random()
        s.conv = self.mix_names[min(bisect.bisect_right(self.mix_cum, u),
                                    len(self.mix_names) - 1)]
        s.turns_left = _geometric(rng, svc.mean_turns, 12)
        s.model = svc.model
        s.sid = f"conv_{rng.getrandbits(64):016x}" if svc.sets_conversation_id else ""
        s.id = s.sid
        deployed = BAD_DEPLOY in self.scen and svc.name == DEPLOY_SERVICE \
            and now >= self.deploy_ns
        s.messages = [Msg("system", system_prompt(svc, deployed))]
        if tag == RUNAWAY:
            s.turns_left = 1
            s.no_errors = True
        if UNKNOWN in self.scen and svc.name == UNKNOWN_SERVICE \
                and s.tenant == self.tenant_of.get(UNKNOWN) \
                and self.unknown_ns[0] <= now < self.unknown_ns[1] \
                and (tag == UNKNOWN or rng.random() < UNKNOWN_SHARE):
            s.model = UNKNOWN_MODEL
            s.tag = UNKNOWN
        return s

    # ---------------------------------------------------------------- scenarios

    def _scenario_setup(self, horizon_ns: int) -> None:
        h = horizon_ns
        for name in SCENARIOS:   # fixed order: same draws whatever the option order
            if name in self.scen:
                self.tenant_of[name] = self.o.tenants[self.srng.randrange(len(self.o.tenants))]
        self.deploy_ns = self.event_ns(int(h * DEPLOY_AT))
        self.burn_ns = (self.event_ns(int(h * BURN_WINDOW[0])),
                        self.event_ns(int(h * BURN_WINDOW[1])))
        self.storm_ns = (self.event_ns(int(h * STORM_WINDOW[0])),
                         self.event_ns(int(h * STORM_WINDOW[1])))
        self.unknown_ns = (self.event_ns(int(h * UNKNOWN_WINDOW[0])),
                           self.event_ns(int(h * UNKNOWN_WINDOW[1])) + 1)

    def _injected(self, h: int) -> list[tuple]:
        out: list[tuple] = []
        if RUNAWAY in self.scen:
            inp, _ = self._sample_row("conv")
            out.append((int(h * RUNAWAY_AT), "conv", inp, 120, RUNAWAY_SERVICE, RUNAWAY))
        if BUDGET_BURN in self.scen:
            t, end = int(h * BURN_WINDOW[0]), int(h * BURN_WINDOW[1])
            while t < end:
                inp, out_t = self._sample_row("conv")
                out.append((t, "conv", inp, out_t, BURN_SERVICE, BUDGET_BURN))
                t += int(BURN_EXTRA_EVERY_S * NS)
        if BAD_DEPLOY in self.scen:
            inp, out_t = self._sample_row("conv")
            out.append((int(h * DEPLOY_AT), "conv", inp, out_t, DEPLOY_SERVICE, BAD_DEPLOY))
        if RETRY_STORM in self.scen:
            inp, out_t = self._sample_row("code")
            out.append((int(h * STORM_WINDOW[0]), "code", inp, out_t, STORM_SERVICE,
                        RETRY_STORM))
        if UNKNOWN in self.scen:
            inp, out_t = self._sample_row("conv")
            out.append((int(h * UNKNOWN_WINDOW[0]), "conv", inp, out_t, UNKNOWN_SERVICE,
                        UNKNOWN))
        return out

    def _burning(self, s: _Session, now: int) -> bool:
        return (BUDGET_BURN in self.scen and s.service.name == BURN_SERVICE
                and s.tenant == self.tenant_of[BUDGET_BURN]
                and self.burn_ns[0] <= now < self.burn_ns[1])

    # ---------------------------------------------------------------- spans

    def _span(self, s: _Session, trace_id: int, parent: int, shape: tuple[str, str, dict],
              start: int, end: int, *, error: str | None = None, call: CallFacts | None = None,
              llm: bool = False) -> PlannedSpan:
        name, kind, attrs = shape
        attrs.update(self._attribution(s))
        span_id = s.rng.getrandbits(64) or 1
        ps = PlannedSpan(
            tenant=s.tenant, service=s.svc_name,
            scope=shapes.SCOPES[(s.conv, "llm" if llm else "other")],
            trace_id=trace_id, span_id=span_id, parent_id=parent, name=name, kind=kind,
            start_ns=start, end_ns=end, attributes=attrs, error=error,
            session_id=s.id or f"{trace_id:032x}", team=s.team, use_case=s.service.use_case,
            call=call, scenario=s.tag)
        self.spans.append(ps)
        if call is not None:
            self.ncalls += 1
        return ps

    def _attribution(self, s: _Session) -> dict[str, Any]:
        a: dict[str, Any] = {"user.id": s.user, "llmspend.use_case": s.service.use_case}
        # Two prompt variants per use case, split by user (no draw from the rng, so the
        # rest of the plan does not change): what `llmspend report --compare` compares.
        variant = 1 + zlib.crc32(f"{s.tenant}/{s.user}".encode()) % 2
        a["llmspend.prompt_version"] = f"{s.service.use_case}-v{variant}"
        if not s.service.team_on_resource:
            a["llmspend.team"] = s.team
        if s.unit_id:
            a["llmspend.unit_type"] = s.service.unit_type
            a["llmspend.unit_id"] = s.unit_id
        return a

    def _cache(self, s: _Session, model: str, input_tokens: int, t: int) -> tuple[int, int]:
        provider = PROVIDER_OF.get(model, "")
        rule = CACHE_RULES.get(provider) if model in CACHING_MODELS else None
        if rule is None:
            return 0, 0
        min_prefix, step, p_hit, writes = rule
        prefix, last = s.cache.get(model, (0, 0))
        cached = 0
        if prefix >= min_prefix and t - last <= CACHE_TTL_NS and s.rng.random() < p_hit:
            cached = min(prefix, input_tokens) // step * step
        write = input_tokens - cached if writes and input_tokens >= min_prefix else 0
        return cached, write

    def _llm(self, s: _Session, trace_id: int, parent: int, t: int, input_tokens: int,
             output_tokens: int, answer: Msg, *, model: str | None = None,
             prefix_share: float = 1.0) -> tuple[int, str | None]:
        """One logical call with its retries and fallback; (end, model that answered)."""
        rng = s.rng
        first = model or s.model
        attempts = [first, first, first, s.service.fallback_model]
        if first == s.service.fallback_model:
            attempts[-1] = s.service.model
        messages = list(s.messages)
        previous: str | None = None
        for i, m in enumerate(attempts):
            if i:
                t += _us(0.5 * 2 ** min(i - 1, 3) * rng.uniform(0.8, 1.2) * NS)
            provider = PROVIDER_OF[m]
            cached, write = self._cache(s, m, input_tokens, t)
            err = None
            if not s.no_errors:
                if previous is not None and m == attempts[i - 1]:
                    err = latency.repeat_error(m, previous, rng)
                err = err or latency.fast_error(rng)
            if err is not None:
                etype, ms = err
            else:
                ms = latency.llm_latency_ms(m, input_tokens, cached, output_tokens, rng)
                tmo = latency.timeout_ms(m)
                etype = None
                if ms >= tmo:
                    if s.no_errors:
                        ms = tmo * 0.9
                    else:
                        etype, ms = latency.TIMEOUT, tmo
            end = t + max(_us(ms * 1e6), 1000)
            ok = etype is None
            usage = Usage(input_tokens, output_tokens, cached, write) if ok else None
            shape = shapes.chat(s.conv, provider=provider, model=m, usage=usage,
                                messages=messages, answer=answer if ok else None,
                                session_id=s.sid or None, error_type=etype,
                                response_id=f"resp_{rng.getrandbits(48):012x}",
                                temperature=0.2)
            call = CallFacts("llm", m, provider, *(usage or (0, 0, 0, 0)), error_type=etype)
            self._span(s, trace_id, parent, shape, t, end, error=etype, call=call, llm=True)
            if ok:
                s.cache[m] = (int((input_tokens + output_tokens) * prefix_share), end)
                return end, m
            previous = etype
            t = end
        return t, None

    def _turn(self, s: _Session, now: int, new_tokens: int, out_tokens: int) -> int:
        svc, rng = s.service, s.rng
        s.turn += 1
        self.ntraces += 1
        burning = self._burning(s, now)
        if BAD_DEPLOY in self.scen and svc.name == DEPLOY_SERVICE and now >= self.deploy_ns:
            new_tokens *= DEPLOY_TOKEN_FACTOR
            if s.tag != BAD_DEPLOY and s.turn == 1:
                s.tag = BAD_DEPLOY
        if burning:
            new_tokens *= BURN_TOKEN_FACTOR
            s.model = BURN_MODEL
            s.escalated = True
            s.tag = s.tag or BUDGET_BURN
        elif not s.escalated and s.tag != RUNAWAY and rng.random() < svc.p_escalate:
            s.model, s.escalated = svc.escalate_model, True
        trace_id = rng.getrandbits(128) or 1
        if svc.pattern == AGENT:
            return self._agent_turn(s, trace_id, now, new_tokens, out_tokens)
        return self._request_turn(s, trace_id, now, new_tokens, out_tokens)

    def _fit(self, s: _Session, new_tokens: int) -> int:
        """Prompt tokens of a turn: history + new, older history dropped above the limit."""
        if s.history + new_tokens > CONTEXT_LIMIT:
            s.history = max(0, CONTEXT_LIMIT - new_tokens)
            s.cache.clear()     # the prefix changed: nothing cached matches
        return min(s.history + new_tokens, CONTEXT_LIMIT)

    def _request_turn(self, s: _Session, trace_id: int, now: int, new_tokens: int,
                      out_tokens: int) -> int:
        svc, rng = s.service, s.rng
        topic = TOPICS[rng.randrange(len(TOPICS))]
        if svc.pattern == CODE:
            s.messages = s.messages[:1]       # a fresh prompt around the open file
            user = Msg("user", f"Complete the function at line {rng.randrange(1, 900)} of "
                               f"src/module_{rng.randrange(200)}.py.")
            input_tokens, share = new_tokens, 0.85
        elif svc.pattern == CHAT:
            user = Msg("user", f"Question {s.turn} about {topic} on {s.unit_id}.")
            input_tokens, share = self._fit(s, new_tokens), 1.0
        else:  # single
            what = f"document {s.unit_id}" if s.unit_id else f"a prospect interested in {topic}"
            user = Msg("user", f"Write the {svc.use_case.replace('-', ' ')} for {what}.")
            input_tokens, share = new_tokens, 1.0
        s.messages.append(user)
        answer = Msg("assistant", f"Answer {s.turn}: the steps for {topic}.")
        root = self._span(s, trace_id, 0, shapes.workflow(s.conv, use_case=svc.use_case,
                                                            session_id=s.sid or None),
                          now, now)
        t = now + _us(rng.uniform(1, 8) * 1e6)
        end, used = self._llm(s, trace_id, root.span_id, t, input_tokens, out_tokens, answer,
                              prefix_share=share)
        if used is not None and svc.pattern == SINGLE and not s.escalated \
                and rng.random() < svc.p_escalate:
            # Quality check failed: the same request again on the larger model.
            s.model, s.escalated = svc.escalate_model, True
            end, used = self._llm(s, trace_id, root.span_id, end + 2000, input_tokens,
                                  int(out_tokens * 1.2) + 1, answer)
        if used is not None:
            s.messages.append(answer)
            s.history = input_tokens + out_tokens
        root.end_ns = end + _us(rng.uniform(0.2, 3) * 1e6)
        if used is None:
            root.error = "upstream_error"
            root.attributes["http.response.status_code"] = 502 \
                if "http.response.status_code" in root.attributes else None
            root.attributes = {k: v for k, v in root.attributes.items() if v is not None}
        return root.end_ns

    def _agent_turn(self, s: _Session, trace_id: int, now: int, new_tokens: int,
                    out_tokens: int) -> int:
        svc, rng = s.service, s.rng
        runaway = s.tag == RUNAWAY
        topic = TOPICS[rng.randrange(len(TOPICS))]
        s.messages.append(Msg("user", f"Request {s.turn}: look into {topic} for "
                                      f"{s.unit_id or 'the open pull request'}."))
        root = self._span(s, trace_id, 0, shapes.agent(
            s.conv, name=svc.agent or svc.name, agent_id=f"{svc.agent}@v7",
            provider=PROVIDER_OF[svc.model], session_id=s.sid or None), now, now)
        rounds = RUNAWAY_STEPS if runaway else 1 + min(int(rng.expovariate(1.2)), 3)
        input_tokens = self._fit(s, new_tokens)
        t = now + _us(rng.uniform(1, 5) * 1e6)
        ok = True
        for r in range(rounds):
            if runaway:
                tool, args = RUNAWAY_TOOL, RUNAWAY_ARGS
            else:
                i = rng.randrange(len(svc.tools))
                tool = svc.tools[i]
                args = tool_args(tool, rng, s.unit_id)
                if f"{tool}{canonical_json(args)}" == s.last_tool:
                    # A healthy agent does not repeat its last call word for word (the
                    # loop detector would rightly call that a loop): take the next tool.
                    tool = svc.tools[(i + 1) % len(svc.tools)]
                    args = tool_args(tool, rng, s.unit_id)
            args_json = canonical_json(args)
            s.last_tool = f"{tool}{args_json}"
            call_id = f"call_{rng.getrandbits(64):016x}"
            decision = Msg("assistant", "", call_id, tool, args_json)
            decide_out = 35 if runaway else rng.randrange(18, 90)
            end, used = self._llm(s, trace_id, root.span_id, t, input_tokens, decide_out,
                                  decision)
            if used is None:
                ok = False
                break
            s.messages.append(decision)
            result = RUNAWAY_RESULT if runaway else (
                f"{tool}({args_json}) returned {rng.randrange(1, 9)} items about {topic}.")
            t0 = end + _us(rng.uniform(0.3, 3) * 1e6)
            t1 = t0 + max(_us(TOOL_MS[tool] * latency.noise(rng) * 1e6), 1000)
            self._span(s, trace_id, root.span_id, shapes.tool(
                s.conv, name=tool, call_id=call_id, arguments=args_json, result=result,
                session_id=s.sid or None), t0, t1, call=CallFacts("tool", tool=tool))
            s.messages.append(Msg("tool", result, call_id))
            result_tokens = 40 if runaway else max(
                10, int(TOOL_RESULT_TOKENS[tool] * latency.noise(rng) ** 2))
            input_tokens = min(input_tokens + decide_out + result_tokens, CONTEXT_LIMIT)
            t = t1 + _us(rng.uniform(0.5, 4) * 1e6)
            if r >= 2 and not s.escalated and not runaway and rng.random() < 0.5:
                s.model, s.escalated = svc.escalate_model, True
        if ok:
            answer = Msg("assistant", f"Done: {topic} handled in {s.turn} step(s).")
            end, used = self._llm(s, trace_id, root.span_id, t, input_tokens, out_tokens,
                                  answer)
            if used is not None:
                s.messages.append(answer)
                s.history = input_tokens + out_tokens
            else:
                ok = False
        root.end_ns = end + _us(rng.uniform(0.5, 3) * 1e6)
        if not ok:
            root.error = "agent_failed"
            if s.conv == "semconv":
                root.attributes["error.type"] = "agent_failed"
        return root.end_ns

    # ---------------------------------------------------------------- events

    def finish(self) -> list[ScenarioEvent]:
        by_tag: dict[str, list[PlannedSpan]] = {}
        sessions_by_tag: dict[str, dict[str, None]] = {}
        for sp in self.spans:
            tag = sp.scenario
            if tag:
                by_tag.setdefault(tag, []).append(sp)
                sessions_by_tag.setdefault(tag, {})[sp.session_id] = None
        plan_end = max((sp.end_ns for sp in self.spans), default=self.start_ns)
        ev: list[ScenarioEvent] = []
        if RUNAWAY in self.scen:
            spans = by_tag.get(RUNAWAY, [])
            tools = [sp for sp in spans if sp.call and sp.call.kind == "tool"]
            chats = [sp for sp in spans if sp.call and sp.call.kind == "llm"]
            ev.append(ScenarioEvent(
                RUNAWAY, self.tenant_of[RUNAWAY], min(sp.start_ns for sp in spans),
                max(sp.end_ns for sp in spans), list(sessions_by_tag.get(RUNAWAY, {})),
                {"service": self.o.service_prefix + RUNAWAY_SERVICE, "tool_name":
                 RUNAWAY_TOOL, "tool_arguments": canonical_json(RUNAWAY_ARGS),
                 "repeated_tool_calls": len(tools),
                 "repeated_last_message_calls": len(chats) - 1,
                 "llm_calls": len(chats),
                 "input_tokens_first": chats[0].call.input_tokens,
                 "input_tokens_last": chats[-1].call.input_tokens}))
        if BUDGET_BURN in self.scen:
            ev.append(ScenarioEvent(
                BUDGET_BURN, self.tenant_of[BUDGET_BURN], *self.burn_ns,
                list(sessions_by_tag.get(BUDGET_BURN, {})),
                {"service": self.o.service_prefix + BURN_SERVICE,
                 "team": SERVICE_BY_NAME[BURN_SERVICE].teams[0], "model": BURN_MODEL}))
        if BAD_DEPLOY in self.scen:
            svc = self.o.service_prefix + DEPLOY_SERVICE
            before, after = [], []
            for sp in self.spans:
                if sp.service == svc and sp.call and sp.call.kind == "llm" \
                        and not sp.call.error_type:
                    (after if sp.start_ns >= self.deploy_ns else before).append(
                        sp.call.input_tokens)
            mean = lambda xs: round(sum(xs) / len(xs), 1) if xs else None  # noqa: E731
            ev.append(ScenarioEvent(
                BAD_DEPLOY, "*", self.deploy_ns, plan_end,
                list(sessions_by_tag.get(BAD_DEPLOY, {})),
                {"service": svc, "token_factor": DEPLOY_TOKEN_FACTOR,
                 "calls_before": len(before), "calls_after": len(after),
                 "mean_input_tokens_before": mean(before),
                 "mean_input_tokens_after": mean(after)}))
        if RETRY_STORM in self.scen:
            dup = [sp for sp in self.spans if sp.copies > 1]
            ev.append(ScenarioEvent(
                RETRY_STORM, self.tenant_of[RETRY_STORM], *self.storm_ns,
                list(dict.fromkeys(sp.session_id for sp in dup)),
                {"service": self.o.service_prefix + STORM_SERVICE,
                 "duplicated_spans": len(dup),
                 "extra_copies": sum(sp.copies - 1 for sp in dup),
                 "duplicated_calls": sum(1 for sp in dup if sp.call)}))
        if UNKNOWN in self.scen:
            calls = [sp for sp in by_tag.get(UNKNOWN, [])
                     if sp.call and sp.call.model == UNKNOWN_MODEL]
            ev.append(ScenarioEvent(
                UNKNOWN, self.tenant_of[UNKNOWN], self.unknown_ns[0], self.unknown_ns[1] - 1,
                list(dict.fromkeys(sp.session_id for sp in calls)),
                {"service": self.o.service_prefix + UNKNOWN_SERVICE, "model": UNKNOWN_MODEL,
                 "calls": len(calls)}))
        return ev

    def apply_storm(self) -> None:
        if RETRY_STORM not in self.scen:
            return
        svc = self.o.service_prefix + STORM_SERVICE
        tenant = self.tenant_of[RETRY_STORM]
        lo, hi = self.storm_ns
        traces = {sp.trace_id for sp in self.spans if sp.service == svc
                  and sp.tenant == tenant and sp.parent_id == 0 and lo <= sp.start_ns < hi}
        for sp in self.spans:
            if sp.trace_id in traces:
                sp.copies = self.srng.randint(*STORM_COPIES)


def _accumulate(xs: list[float]) -> list[float]:
    out, acc = [], 0.0
    for x in xs:
        acc += x
        out.append(acc)
    return out


def _horizon(opts: Options) -> int:
    rows = azure_trace.load(tuple(sorted(set(opts.traces))))
    full = azure_trace.span_ns(rows)
    horizon = int(opts.duration_s * NS) if opts.duration_s else None
    if opts.calls is not None:
        pre = _Planner(Options(**{**opts.__dict__, "scenarios": ()}),
                       stop_after_calls=opts.calls)
        last = pre.run(horizon if horizon is not None else full * 1000)
        horizon = min(horizon, last + 1) if horizon is not None else last + 1
    return horizon if horizon is not None else full


def plan(options: Options) -> Plan:
    """Every span of the traffic ``options`` describe, deterministic for its seed."""
    options.validate()
    if options.start_time_ns is None:
        raise PlanError("plan() needs options.start_time_ns (generate() fills in now)")
    horizon = _horizon(options)
    p = _Planner(options)
    p.run(horizon)
    p.apply_storm()
    resources = {}
    for svc in SERVICES:
        name = options.service_prefix + svc.name
        res: dict[str, Any] = {"service.name": name, "service.version": "1.4.2",
                               "deployment.environment.name": options.environment,
                               "service.namespace": "llmspend-demo"}
        if svc.team_on_resource:
            res["llmspend.team"] = svc.teams[0]
        resources[name] = res
    events = p.finish()
    end = max((sp.end_ns for sp in p.spans), default=p.start_ns)
    return Plan(options, p.start_ns, end, horizon, p.spans, resources, events,
                p.nsessions, p.ntraces)


def span_counts(p: Plan) -> Counter:
    """How many spans of each role a plan has (for summaries)."""
    c: Counter = Counter()
    for sp in p.spans:
        c[sp.call.kind if sp.call else "other"] += 1
    return c
