"""What the simulated organisation looks like: services, teams, models, tools.

Data only (plus tiny pure helpers): the planner (:mod:`pipeline.traffic.plan`) draws
from these tables. Every name here is synthetic; no personal data anywhere.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

#: Canonical provider of each model the generator uses (catalog names).
PROVIDER_OF: dict[str, str] = {
    "gpt-4o-mini": "openai", "gpt-4o": "openai", "gpt-4.1-mini": "openai",
    "gpt-4.1": "openai", "o3": "openai",
    "claude-haiku-4-5": "anthropic", "claude-sonnet-4-5": "anthropic",
    "gemini-2.0-flash": "google", "gemini-2.5-pro": "google",
    "mistral-small": "mistral", "mistral-large": "mistral", "codestral": "mistral",
    "acme-support-ft-7b": "self-hosted",
}
#: The model of the ``unknown-model`` scenario: served by the team's own vLLM, absent
#: from the pricing catalog on purpose.
UNKNOWN_MODEL = "acme-support-ft-7b"

#: Provider name as each convention writes it (canonical -> attribute value).
PROVIDER_NAMES: dict[str, dict[str, str]] = {
    "semconv": {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gemini",
                "mistral": "mistral_ai", "self-hosted": "vllm"},
    "openllmetry": {"openai": "openai", "anthropic": "Anthropic", "google": "Gemini",
                    "mistral": "MistralAI", "self-hosted": "vllm"},
    "openinference": {"openai": "openai", "anthropic": "anthropic", "google": "google",
                      "mistral": "mistralai", "self-hosted": "vllm"},
}
SERVER_ADDRESS: dict[str, str] = {
    "openai": "api.openai.com", "anthropic": "api.anthropic.com",
    "google": "generativelanguage.googleapis.com", "mistral": "api.mistral.ai",
    "self-hosted": "vllm.ml-platform.svc.cluster.local",
}

#: Prompt caching per provider: (minimum cacheable prefix, granularity, hit
#: probability, writes counted separately). Models absent from CACHING_MODELS never cache.
CACHE_RULES: dict[str, tuple[int, int, float, bool]] = {
    "openai": (1024, 128, 0.9, False),       # automatic, 128-token increments
    "anthropic": (1024, 1, 0.95, True),      # explicit cache_control: reads and writes
    "google": (2048, 1, 0.75, False),        # implicit caching on 2.5 models
}
CACHING_MODELS = frozenset({
    "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "o3",
    "claude-haiku-4-5", "claude-sonnet-4-5", "gemini-2.5-pro",
})
CACHE_TTL_NS = 300 * 1_000_000_000
#: Longest prompt a conversation sends; above it the oldest history is dropped.
CONTEXT_LIMIT = 120_000

TICKET, DOCUMENT = "ticket", "document"
CHAT, AGENT, SINGLE, CODE = "chat", "agent", "single", "code"


@dataclass(frozen=True)
class Service:
    """One application that calls LLMs."""

    name: str
    trace: str                  # which Azure trace file drives its arrivals
    weight: float               # share of that trace's arrivals
    pattern: str                # chat / agent / single / code
    teams: tuple[str, ...]      # one team, or teams sharing the service (per session)
    use_case: str
    unit_type: str | None       # ticket / document / None
    model: str                  # the cheap default
    escalate_model: str         # the larger one a session escalates to
    fallback_model: str         # another provider's model after repeated errors
    p_escalate: float           # per turn, before the session is escalated
    mean_turns: float           # turns (arrivals) per session, geometric
    think_s: float              # median user think time between turns (trace seconds)
    team_on_resource: bool = False
    agent: str | None = None
    tools: tuple[str, ...] = ()
    sets_conversation_id: bool = True


SERVICES: tuple[Service, ...] = (
    Service("support-assistant", "conv", 0.45, CHAT, ("customer-support",), "ticket-reply",
            TICKET, "gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", 0.05, 4.0, 25.0),
    Service("support-triage-agent", "conv", 0.20, AGENT, ("customer-support",),
            "ticket-triage", TICKET, "claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4.1-mini",
            0.06, 1.6, 40.0, agent="triage-agent",
            tools=("get_ticket", "search_kb", "update_ticket")),
    Service("contract-summariser", "conv", 0.15, SINGLE, ("legal-ops",), "contract-summary",
            DOCUMENT, "gemini-2.0-flash", "gemini-2.5-pro", "gpt-4.1-mini", 0.08, 1.0, 0.0,
            sets_conversation_id=False),
    Service("research-agent", "conv", 0.10, AGENT, ("growth",), "market-research", DOCUMENT,
            "gpt-4.1-mini", "gpt-4.1", "gemini-2.5-pro", 0.08, 2.0, 60.0,
            agent="research-agent", tools=("web_search", "fetch_page", "save_note")),
    Service("sales-email-writer", "conv", 0.10, SINGLE, ("sales",), "outreach-email", None,
            "mistral-small", "mistral-large", "gpt-4o-mini", 0.05, 1.0, 0.0,
            team_on_resource=True, sets_conversation_id=False),
    Service("code-assistant", "code", 0.80, CODE, ("platform-eng", "mobile-eng", "data-eng"),
            "code-completion", None, "codestral", "gpt-4.1", "gpt-4.1-mini", 0.03, 6.0, 6.0),
    Service("code-review-agent", "code", 0.20, AGENT, ("platform-eng", "mobile-eng",
                                                       "data-eng"),
            "code-review", None, "claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4.1", 0.10,
            1.3, 90.0, agent="review-agent", tools=("read_file", "run_tests",
                                                    "post_comment")),
)
SERVICE_BY_NAME = {s.name: s for s in SERVICES}
USERS_PER_TEAM = 40

TOPICS = ("a refund", "a late delivery", "a password reset", "an invoice", "a damaged item",
          "a plan upgrade", "an API limit", "a data export", "a login error",
          "a shipping address change", "a warranty claim", "a duplicate charge")
#: Mean tokens a tool result adds to the next prompt.
TOOL_RESULT_TOKENS = {"get_ticket": 600, "search_kb": 1400, "update_ticket": 60,
                      "web_search": 1800, "fetch_page": 3500, "save_note": 40,
                      "read_file": 2500, "run_tests": 900, "post_comment": 50}
#: Median execution time of each tool, ms.
TOOL_MS = {"get_ticket": 80, "search_kb": 220, "update_ticket": 120, "web_search": 900,
           "fetch_page": 650, "save_note": 40, "read_file": 30, "run_tests": 4200,
           "post_comment": 180}

#: The runaway loop: the same tool call with the same arguments, the same empty answer.
RUNAWAY_TOOL = "search_kb"
RUNAWAY_ARGS = {"query": "refund policy for items damaged in transit", "top_k": 5}
RUNAWAY_RESULT = "search_kb: 0 articles found. Try rephrasing the query."
RUNAWAY_STEPS = 20


def tool_args(tool: str, rng: random.Random, unit_id: str | None) -> dict:
    """Synthetic, plausible arguments of one tool call."""
    topic = rng.choice(TOPICS)
    if tool in ("get_ticket", "update_ticket"):
        args = {"ticket_id": unit_id or f"TCK-{rng.randrange(10**6):06d}"}
        if tool == "update_ticket":
            args["status"] = rng.choice(("pending", "solved", "escalated"))
        return args
    if tool == "search_kb":
        return {"query": f"how to handle {topic}", "top_k": 5}
    if tool == "web_search":
        return {"query": f"market size {topic} {rng.randrange(2019, 2026)}"}
    if tool == "fetch_page":
        return {"url": f"https://example.com/reports/{rng.randrange(10**5)}"}
    if tool == "save_note":
        return {"document_id": unit_id or "DOC-000000", "words": rng.randrange(50, 400)}
    if tool == "read_file":
        return {"path": f"src/module_{rng.randrange(200)}.py"}
    if tool == "run_tests":
        return {"target": f"tests/test_module_{rng.randrange(200)}.py"}
    if tool == "post_comment":
        return {"pull_request": rng.randrange(1, 5000), "lines": rng.randrange(1, 40)}
    return {"topic": topic}


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
