"""The Faust application every stream stage registers its agents on."""

from __future__ import annotations

from typing import Any

import faust

from pipeline.clients import faust_broker_config
from pipeline.config import Settings


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A Faust app with our broker settings and at-least-once processing.

    Exactly-once has open bugs in Faust; stages are at-least-once and downstream writes are
    idempotent by ``call_id`` or window id. Topics are declared in ``infra/topics.toml``
    (created by ``llmspend up``), so Faust must not declare them itself.
    """
    cfg: dict[str, Any] = {
        **faust_broker_config(settings),
        "value_serializer": "raw",
        "key_serializer": "raw",
        "processing_guarantee": "at_least_once",
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "web_enabled": False,
        "consumer_auto_offset_reset": settings.stream.auto_offset_reset,
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        "stream_wait_empty": False,
        "producer_acks": -1,
        "broker_session_timeout": settings.stream.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.stream.session_timeout_s / 3),
        "datadir": str(settings.state_dir / "faust"),
        "store": "memory://",
    }
    cfg.update(overrides)
    return faust.App(settings.stream.app_id, **cfg)
