"""Logging for the long-running processes: one line per repeated Kafka-client complaint.

While Kafka is down, aiokafka logs "Unable connect to node" on every retry (every 100 ms)
and kafka-python adds its own lines: about 50 KB in a 20-second outage, megabytes in an
hour, and the line that matters (ours) drowns. :class:`RepeatFilter` lets the first line
of a kind through, then at most one every ``every_s`` seconds, saying how many alike it
held back. Our own loggers (``pipeline.*``) are never filtered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

#: The client libraries whose retry loops repeat themselves.
CLIENT_LOGGERS = ("aiokafka", "kafka")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RepeatFilter(logging.Filter):
    """Holds back lines of the Kafka clients that repeat within ``every_s`` seconds.

    Lines are alike when they share logger, level and format string (their arguments,
    such as a port or an errno, may differ). At most ``max_kinds`` kinds are remembered,
    so a client that logs ever-new text cannot grow the filter without bound.
    """

    def __init__(self, every_s: float = 30.0, prefixes: tuple[str, ...] = CLIENT_LOGGERS,
                 clock: Callable[[], float] = time.monotonic, max_kinds: int = 1024) -> None:
        super().__init__()
        self.every_s = every_s
        self.prefixes = prefixes
        self.clock = clock
        self.max_kinds = max_kinds
        self._lock = threading.Lock()   # the watchdog thread logs too
        # kind -> (time its last line went out, lines held back since)
        self._kinds: OrderedDict[tuple, list] = OrderedDict()

    def _is_client(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._is_client(record.name):
            return True
        # Decided once per record: every handler carrying this filter gets the same
        # answer (and the message is annotated once).
        decided = getattr(record, _DECIDED, None)
        if decided is not None:
            return decided
        keep = self._decide(record)
        setattr(record, _DECIDED, keep)
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.every_s:
                seen[1] += 1
                return False
            self._kinds[kind] = [now, 0]
            self._kinds.move_to_end(kind)
            while len(self._kinds) > self.max_kinds:
                self._kinds.popitem(last=False)
        if seen is not None and seen[1]:
            record.msg = (f"{record.getMessage()} [{seen[1]} alike held back in the "
                          f"last {now - seen[0]:.0f}s]")
            record.args = ()   # not None: Faust's formatter turns None into (None,)
        return True


_DECIDED = "llmspend_repeat_decision"


def quiet_repeats(logger: logging.Logger | None = None,
                  every_s: float = 30.0) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every handler of ``logger`` (the root logger).

    On handlers, not on loggers: a logger's filter does not see its children's records.
    """
    logger = logger or logging.getLogger()
    f = RepeatFilter(every_s)
    for h in logger.handlers:
        h.addFilter(f)
    return f


def configure(level: int = logging.INFO) -> None:
    """Plain timestamped lines on stderr, with Kafka-client repeats collapsed."""
    logging.basicConfig(level=level, format=FORMAT)
    quiet_repeats()
