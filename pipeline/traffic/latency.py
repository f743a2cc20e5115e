"""The latency model of the traffic generator (the Azure trace has no latencies).

For one LLM call with ``input`` prompt tokens (``cached`` of them read from the prompt
cache) and ``output`` generated tokens::

    prefill_tokens = (input - cached) + CACHED_PREFILL_FACTOR * cached
    latency_ms     = (overhead_ms
                      + prefill_ms_per_1k * prefill_tokens / 1000
                      + decode_ms_per_token * output) * noise
    noise          = exp(N(0, SIGMA))              # lognormal, median 1, SIGMA = 0.25

With probability ``STALL_PROBABILITY`` a call hangs (an overloaded replica, a lost
connection) and its latency becomes twice its model's timeout. A call whose latency
exceeds its model's ``timeout_s`` is a **timeout**: the span ends at exactly ``timeout_s`` with
status ERROR and ``error.type = "timeout"``, and reports no token usage. Rate limits
(``error.type = "rate_limit_exceeded"``, HTTP 429) and server errors
(``"server_error"``, HTTP 5xx) fail fast (:data:`FAST_ERRORS`) with a short latency.

Errors come in bursts: after a failed attempt, the retry on the same model fails again
the same way with probability ``PERSISTENCE`` (the rate limit or the outage lasts), so
some calls exhaust their retries and fall back to another provider.

Tool executions take ``tool_ms * noise`` (per tool, same noise).

The per-model figures are round numbers of the right order for hosted APIs in 2025
(time to first token 0.3-1 s, 50-150 generated tokens/s), not measurements of any
provider; change them here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SIGMA = 0.25
CACHED_PREFILL_FACTOR = 0.1
STALL_PROBABILITY = 0.003
#: (error.type, probability per attempt, latency range ms) of errors that fail fast.
FAST_ERRORS = (("rate_limit_exceeded", 0.012, (30, 250)),
               ("server_error", 0.004, (200, 2500)))
TIMEOUT = "timeout"
PERSISTENCE = 0.3


@dataclass(frozen=True)
class ModelSpeed:
    overhead_ms: float
    prefill_ms_per_1k: float
    decode_ms_per_token: float
    timeout_s: float


#: Speed of every model the generator uses (unknown to the catalog or not).
SPEEDS: dict[str, ModelSpeed] = {
    "gpt-4o-mini": ModelSpeed(320, 22, 11, 60),
    "gpt-4o": ModelSpeed(480, 55, 20, 90),
    "gpt-4.1-mini": ModelSpeed(330, 25, 10, 60),
    "gpt-4.1": ModelSpeed(500, 55, 18, 90),
    "o3": ModelSpeed(1800, 70, 22, 180),
    "claude-haiku-4-5": ModelSpeed(380, 28, 9, 60),
    "claude-sonnet-4-5": ModelSpeed(650, 65, 22, 120),
    "gemini-2.0-flash": ModelSpeed(280, 18, 5, 60),
    "gemini-2.5-pro": ModelSpeed(900, 55, 14, 120),
    "mistral-small": ModelSpeed(260, 20, 8, 60),
    "mistral-large": ModelSpeed(520, 50, 20, 90),
    "codestral": ModelSpeed(220, 15, 6, 30),
    "acme-support-ft-7b": ModelSpeed(150, 12, 9, 30),
}
DEFAULT_SPEED = ModelSpeed(500, 50, 15, 90)


def noise(rng: random.Random) -> float:
    return math.exp(rng.gauss(0.0, SIGMA))


def llm_latency_ms(model: str, input_tokens: int, cached: int, output_tokens: int,
                   rng: random.Random) -> float:
    """Latency of a successful call under the model (may exceed the timeout)."""
    s = SPEEDS.get(model, DEFAULT_SPEED)
    prefill = (input_tokens - cached) + CACHED_PREFILL_FACTOR * cached
    base = s.overhead_ms + s.prefill_ms_per_1k * prefill / 1000 + s.decode_ms_per_token \
        * output_tokens
    ms = base * noise(rng)
    if rng.random() < STALL_PROBABILITY:
        ms = 2 * s.timeout_s * 1000
    return ms


def timeout_ms(model: str) -> float:
    return SPEEDS.get(model, DEFAULT_SPEED).timeout_s * 1000


def fast_error(rng: random.Random) -> tuple[str, float] | None:
    """(error.type, latency ms) when this attempt fails fast, else None."""
    u = rng.random()
    acc = 0.0
    for name, p, (lo, hi) in FAST_ERRORS:
        acc += p
        if u < acc:
            return name, rng.uniform(lo, hi)
    return None


def repeat_error(model: str, previous: str, rng: random.Random) -> tuple[str, float] | None:
    """(error.type, latency ms) when a retry after ``previous`` fails the same way."""
    if rng.random() >= PERSISTENCE:
        return None
    if previous == TIMEOUT:
        return TIMEOUT, timeout_ms(model)
    lo, hi = next(r for name, _, r in FAST_ERRORS if name == previous)
    return previous, rng.uniform(lo, hi)
