"""Shared fixtures: settings for tests, and the real broker for integration tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings as hypothesis_settings

from pipeline.config import Settings, load_settings

# Shared, noisy machines: never fail a property test on wall-clock time (numba compiles
# on first call, too).
hypothesis_settings.register_profile("llmspend", deadline=None)
hypothesis_settings.load_profile("llmspend")


@pytest.fixture(scope="session")
def kafka_settings() -> Settings:
    """Settings pointing at a real, reachable broker with the declared topics.

    Uses the broker named by LLMSPEND_KAFKA_BOOTSTRAP or the local one; starts the local
    one if nothing answers (and stops it at the end), so `pytest` alone works.
    """
    from pipeline import broker
    from pipeline.cli import bring_up

    settings = load_settings()
    started = bring_up(settings, echo=lambda _line: None)
    yield settings
    if started and not os.environ.get("LLMSPEND_TEST_KEEP_BROKER"):
        broker.stop(settings)


@pytest.fixture
def columnar_agrees(monkeypatch):
    """Every ``pipeline.normalise.normalise`` call of a test also runs the columnar
    normaliser on the same batch and fails the test if the two disagree."""
    from pipeline import normalise as N
    from tests.unit.test_normalise_columnar import assert_agree

    def checked(spans, settings, catalog, hash_key, *, now=None):
        return assert_agree(spans, settings, catalog, hash_key, now=now)

    monkeypatch.setattr(N, "normalise", checked)
