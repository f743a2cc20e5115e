"""Topic spec parsing and the create/report plan of `llmspend up`."""

import pytest

from pipeline.config import Settings
from pipeline.topics import TopicSpecError, load_topics, parse_topics, plan_topics
from schemas import topics as topic_names


def test_declared_file_parses_and_names_every_topic_in_schemas():
    specs = load_topics(Settings().topics_file)
    assert {s.name for s in specs} == set(topic_names.ALL)
    by_name = {s.name: s for s in specs}
    assert by_name["llm_controls"].cleanup_policy == "compact"
    assert by_name["llm_controls"].configs["retention.ms"] == "-1"
    assert by_name["otlp_spans"].configs["retention.ms"] == str(6 * 3_600_000)
    assert all(s.max_message_bytes == 8 * 1024 * 1024 for s in specs)


def test_defaults_apply_and_topic_values_override():
    specs = parse_topics({
        "defaults": {"retention_hours": 12, "max_message_bytes": 2048},
        "topics": {"a": {"partitions": 3}, "b": {"partitions": 1, "retention_hours": 1}},
    })
    assert [(s.name, s.partitions, s.retention_hours, s.max_message_bytes) for s in specs] == \
        [("a", 3, 12, 2048), ("b", 1, 1, 2048)]


@pytest.mark.parametrize("doc,message", [
    ({}, "declares no"),
    ({"topics": {"a": {}}}, "partitions is required"),
    ({"topics": {"a": {"partitions": 0}}}, "partitions must be >= 1"),
    ({"topics": {"a": {"partitions": "6"}}}, "must be an integer"),
    ({"topics": {"a": {"partitions": True}}}, "must be an integer"),
    ({"topics": {"a b": {"partitions": 1}}}, "legal Kafka topic name"),
    ({"topics": {"a": {"partitions": 1, "cleanup_policy": "forever"}}}, "cleanup_policy"),
    ({"topics": {"a": {"partitions": 1, "retention_hours": 0}}}, "delete everything"),
    ({"topics": {"a": {"partitions": 1, "partition": 2}}}, "unknown key"),
    ({"defaults": {"partitions": 2}, "topics": {"a": {"partitions": 1}}}, "defaults"),
])
def test_invalid_specs_name_the_topic_and_key(doc, message):
    with pytest.raises(TopicSpecError, match=message):
        parse_topics(doc)


def test_plan_creates_missing_reports_mismatch_and_never_alters():
    specs = parse_topics({"topics": {"new": {"partitions": 2}, "same": {"partitions": 3},
                                     "diff": {"partitions": 6}}})
    plan = plan_topics(specs, {"same": 3, "diff": 4, "unrelated": 1})
    assert [s.name for s in plan.create] == ["new"]
    assert plan.present == ["same"]
    assert plan.mismatched == [("diff", 6, 4)]
