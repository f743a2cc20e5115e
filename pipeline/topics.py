"""Topics as code: parse ``infra/topics.toml`` and plan what ``llmspend up`` must create.

Parsing and planning are pure so they are unit-tested without a broker; the broker calls
live in :func:`ensure_topics`, a thin adapter over kafka-python's admin client.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CLEANUP_POLICIES = {"delete", "compact", "compact,delete", "delete,compact"}
_TOPIC_KEYS = {"partitions", "replication_factor", "retention_hours", "cleanup_policy",
               "max_message_bytes", "description"}
_MAX_NAME = 249
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class TopicSpecError(ValueError):
    """The topics file is not usable; the message says which topic and key."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic as declared: its shape plus the broker configs derived from it."""

    name: str
    partitions: int
    replication_factor: int = 1
    retention_hours: int = 24
    cleanup_policy: str = "delete"
    max_message_bytes: int = 8 * 1024 * 1024
    description: str = ""

    @property
    def configs(self) -> dict[str, str]:
        """Topic-level broker configs (``kafka-configs`` names)."""
        retention_ms = -1 if self.retention_hours < 0 else self.retention_hours * 3_600_000
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }


@dataclass(frozen=True)
class TopicPlan:
    """What ``up`` will do: create these, and report these partition mismatches."""

    create: list[TopicSpec] = field(default_factory=list)
    #: (name, declared partitions, actual partitions)
    mismatched: list[tuple[str, int, int]] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def _int(topic: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopicSpecError(f"topic {topic!r}: {key} must be an integer, got {value!r}")
    if value < minimum:
        raise TopicSpecError(f"topic {topic!r}: {key} must be >= {minimum}, got {value}")
    return value


def parse_topics(doc: Mapping[str, Any]) -> list[TopicSpec]:
    """Validate a parsed topics document and return its topics in file order."""
    defaults = doc.get("defaults", {})
    topics = doc.get("topics")
    if not isinstance(topics, Mapping) or not topics:
        raise TopicSpecError("the topics file declares no [topics.<name>] table")
    unknown = set(defaults) - (_TOPIC_KEYS - {"partitions", "description"})
    if unknown:
        raise TopicSpecError(f"[defaults]: unknown key(s) {', '.join(sorted(unknown))}")
    specs = []
    for name, raw in topics.items():
        if not isinstance(raw, Mapping):
            raise TopicSpecError(f"topic {name!r}: expected a table")
        if not name or len(name) > _MAX_NAME or set(name) - _NAME_CHARS or name in (".", ".."):
            raise TopicSpecError(f"topic {name!r}: not a legal Kafka topic name")
        unknown = set(raw) - _TOPIC_KEYS
        if unknown:
            raise TopicSpecError(f"topic {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
        merged = {**defaults, **raw}
        if "partitions" not in merged:
            raise TopicSpecError(f"topic {name!r}: partitions is required")
        policy = merged.get("cleanup_policy", "delete")
        if policy not in _CLEANUP_POLICIES:
            raise TopicSpecError(f"topic {name!r}: cleanup_policy {policy!r} is not one of "
                                 f"{', '.join(sorted(_CLEANUP_POLICIES))}")
        retention = _int(name, "retention_hours", merged.get("retention_hours", 24), -1)
        if retention == 0:
            raise TopicSpecError(f"topic {name!r}: retention_hours 0 would delete everything")
        specs.append(TopicSpec(
            name=name,
            partitions=_int(name, "partitions", merged["partitions"], 1),
            replication_factor=_int(name, "replication_factor",
                                    merged.get("replication_factor", 1), 1),
            retention_hours=retention,
            cleanup_policy=policy,
            max_message_bytes=_int(name, "max_message_bytes",
                                   merged.get("max_message_bytes", 8 * 1024 * 1024), 1024),
            description=str(merged.get("description", "")),
        ))
    return specs


def load_topics(path: Path) -> list[TopicSpec]:
    """Read and validate the topics file."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise TopicSpecError(f"cannot read topics file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopicSpecError(f"{path}: {exc}") from None
    return parse_topics(doc)


def plan_topics(specs: list[TopicSpec], existing: Mapping[str, int]) -> TopicPlan:
    """Compare declared topics with ``existing`` (name -> partition count)."""
    plan = TopicPlan()
    for spec in specs:
        actual = existing.get(spec.name)
        if actual is None:
            plan.create.append(spec)
        elif actual != spec.partitions:
            plan.mismatched.append((spec.name, spec.partitions, actual))
        else:
            plan.present.append(spec.name)
    return plan


def existing_partitions(admin: Any) -> dict[str, int]:
    """Name -> partition count of every topic on the cluster (kafka-python admin)."""
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics()
            if not t.get("is_internal")}


def ensure_topics(admin: Any, specs: list[TopicSpec]) -> TopicPlan:
    """Create the missing declared topics; never alter existing ones."""
    from kafka.errors import TopicAlreadyExistsError

    plan = plan_topics(specs, existing_partitions(admin))
    if plan.create:
        new = {s.name: {"num_partitions": s.partitions,
                        "replication_factor": s.replication_factor,
                        "configs": s.configs} for s in plan.create}
        # A concurrent `up` may create them first: same outcome.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(new, wait_for_metadata=True)
    return plan
