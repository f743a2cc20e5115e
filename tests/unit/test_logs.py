"""The Kafka clients' retry chatter is collapsed; our own lines never are."""

from __future__ import annotations

import logging

from pipeline.logs import RepeatFilter, quiet_repeats


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _record(name: str, msg: str, *args, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_client_line_passes_once_per_period_and_counts_what_it_held():
    clock = Clock()
    f = RepeatFilter(every_s=30, clock=clock)
    msg = "Unable connect to node with id %s: %s"
    assert f.filter(_record("aiokafka", msg, 1, "refused"))
    passed = []
    for i in range(200):                      # 20 a second for 10 s
        clock.t += 0.05
        passed.append(f.filter(_record("aiokafka", msg, 1, f"port {i}")))
    assert not any(passed)
    clock.t = 30.0
    again = _record("aiokafka", msg, 1, "refused")
    assert f.filter(again)
    assert again.getMessage() == ("Unable connect to node with id 1: refused "
                                  "[200 alike held back in the last 30s]")
    clock.t = 30.1
    assert not f.filter(_record("aiokafka", msg, 1, "refused"))
    clock.t = 3600.0                          # quiet for an hour, then again
    late = _record("aiokafka", msg, 1, "refused")
    assert f.filter(late) and f.filter(late)  # one answer per record, asked twice
    assert late.getMessage().endswith("[1 alike held back in the last 3570s]")


def test_an_annotated_line_still_formats_through_the_workers_formatter():
    """Faust's formatter (mode's) wraps a record's args in a tuple when they are not
    one; annotated lines must survive that (they did not: a logging error per line)."""
    from mode.utils.logging import ExtensionFormatter

    clock = Clock()
    f = RepeatFilter(every_s=30, clock=clock)
    msg = "Initializing connection for node_id %s at %s:%s (rack=%s) 100%%"
    f.filter(_record("kafka.net.manager", msg, "bootstrap-0", "127.0.0.1", 9092, None))
    f.filter(_record("kafka.net.manager", msg, "bootstrap-0", "127.0.0.1", 9092, None))
    clock.t = 60.0
    again = _record("kafka.net.manager", msg, "bootstrap-0", "127.0.0.1", 9092, None)
    assert f.filter(again)
    line = ExtensionFormatter(fmt="%(message)s").format(again)
    assert line == ("Initializing connection for node_id bootstrap-0 at 127.0.0.1:9092 "
                    "(rack=None) 100% [1 alike held back in the last 60s]")


def test_our_own_lines_and_other_kinds_are_never_held_back():
    f = RepeatFilter(every_s=30, clock=Clock())
    for _ in range(5):
        assert f.filter(_record("pipeline.ingest.core", "Kafka unavailable"))
        assert f.filter(_record("kafkaesque", "not a client logger"))
    assert f.filter(_record("kafka.cluster", "a"))
    assert f.filter(_record("kafka.cluster", "b"))                 # another text
    assert f.filter(_record("kafka.cluster", "a", level=logging.WARNING))  # another level
    assert f.filter(_record("aiokafka.producer.sender", "a"))       # another logger
    assert not f.filter(_record("kafka.cluster", "a"))


def test_the_filter_remembers_a_bounded_number_of_kinds():
    f = RepeatFilter(every_s=30, clock=Clock(), max_kinds=8)
    for i in range(100):
        assert f.filter(_record("kafka.net.connection", f"<conn {i}>: closed"))
    assert len(f._kinds) == 8
    assert not f.filter(_record("kafka.net.connection", "<conn 99>: closed"))


def test_quiet_repeats_filters_child_loggers_through_the_root_handlers():
    root = logging.getLogger("llmspend-test-root")
    root.propagate = False
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handlers = [Keep(), Keep()]               # each handler sees the first line
    for h in handlers:
        root.addHandler(h)
    try:
        f = quiet_repeats(root)
        assert isinstance(f, RepeatFilter)
        assert all(h.filters == [f] for h in handlers)
        f.prefixes = ("llmspend-test-root.aiokafka",)
        child = logging.getLogger("llmspend-test-root.aiokafka.conn")
        for _ in range(10):
            child.error("Unable connect to node")
        logging.getLogger("llmspend-test-root.pipeline").error("ours")
        assert seen == ["Unable connect to node"] * 2 + ["ours"] * 2
    finally:
        for h in handlers:
            root.removeHandler(h)
