"""Notifiers: deliver ``llm_alerts`` records to webhooks, Slack, PagerDuty, Alertmanager.

Each configured target (``[notify] targets``) is delivered by its own thread reading
``llm_alerts`` with its own consumer group, ``<app id>-notify-<target>``, whose committed
offset IS the delivery state: a record's offset is committed only once the target
accepted it (or its filters skipped it). So a restart resumes exactly after the last
delivered record (nothing lost; a crash between the target's answer and the commit can
repeat that one record, whose ``id`` / ``Idempotency-Key`` lets the target drop it), and
a failing target retries with exponential backoff without holding back the others or
the topic. Formats are built by :mod:`pipeline.notify_formats`.

Per target: minimum severity, tenants, and a cool-down per ``dedup_key``: an incident
that resolves and re-opens within ``cooldown_s`` is not re-announced (escalations and
the resolve of a delivered incident always go out).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import notify_formats as F
from pipeline.config import ConfigError, Settings
from schemas import alerts as A
from schemas.topics import LLM_ALERTS

log = logging.getLogger(__name__)

FORMATS = ("webhook", "slack", "pagerduty", "alertmanager")
#: Alertmanager ends an alert after its resolve_timeout (5 min by default) unless it is
#: posted again: open incidents are re-posted this often.
REPOST_S = 60.0


@dataclass(frozen=True)
class Target:
    """One place alerts go to."""

    name: str
    format: str
    url: str
    routing_key: str = ""
    min_severity: str | None = None
    tenants: frozenset[str] | None = None
    dashboard_url: str | None = None


def parse_targets(table: dict[str, Any]) -> list[Target]:
    """``{name = {format = "slack", url = "...", min_severity = "warning",
    tenants = "acme,globex"}}`` -> targets (errors name the target and key)."""
    out = []
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"notify.targets.{name}: expected a table")
        unknown = set(spec) - {"format", "url", "routing_key", "min_severity", "tenants",
                               "dashboard_url"}
        if unknown:
            raise ConfigError(f"notify.targets.{name}: unknown key(s) "
                              f"{', '.join(sorted(unknown))}")
        fmt = spec.get("format", "webhook")
        if fmt not in FORMATS:
            raise ConfigError(f"notify.targets.{name}.format: {fmt!r} is not one of "
                              f"{', '.join(FORMATS)}")
        url = spec.get("url") or (F.PD_URL if fmt == "pagerduty" else "")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"notify.targets.{name}.url: expected an http(s) URL")
        if fmt == "pagerduty" and not spec.get("routing_key"):
            raise ConfigError(f"notify.targets.{name}: pagerduty needs routing_key")
        sev = spec.get("min_severity")
        if sev is not None and sev not in A.SEVERITIES:
            raise ConfigError(f"notify.targets.{name}.min_severity: {sev!r} is not one of "
                              f"{', '.join(A.SEVERITIES)}")
        tenants = spec.get("tenants")
        if isinstance(tenants, str):
            tenants = [t.strip() for t in tenants.split(",") if t.strip()]
        out.append(Target(name, fmt, url, spec.get("routing_key", ""), sev,
                          frozenset(tenants) if tenants else None,
                          spec.get("dashboard_url")))
    return out


def build_request(target: Target, record: dict[str, Any]) -> F.Request:
    if target.format == "slack":
        return F.slack(record, target.url, target.dashboard_url)
    if target.format == "pagerduty":
        return F.pagerduty(record, target.routing_key, target.url)
    if target.format == "alertmanager":
        return F.alertmanager([record], target.url)
    return F.webhook(record, target.url)


@dataclass
class Cooldown:
    """What was delivered per dedup_key, to keep flapping incidents quiet."""

    cooldown_s: float
    last: dict[str, tuple[float, str, str]] = field(default_factory=dict)  # t, state, sev

    def allow(self, record: dict[str, Any], now_s: float) -> bool:
        prev = self.last.get(record[A.DEDUP_KEY])
        if record[A.STATE] == A.RESOLVED:
            return prev is not None and prev[1] == A.FIRING   # close what we opened
        if prev is None:
            return True
        t, state, sev = prev
        if state == A.FIRING:
            return A.RANK[record[A.SEVERITY]] > A.RANK[sev]    # escalations only
        return now_s - t >= self.cooldown_s                     # re-opened after a while

    def delivered(self, record: dict[str, Any], now_s: float) -> None:
        self.last[record[A.DEDUP_KEY]] = (now_s, record[A.STATE], record[A.SEVERITY])


def backoff_s(attempt: int, cap_s: float, base_s: float = 0.5) -> float:
    """Exponential backoff with +-20 % jitter, capped."""
    return min(cap_s, base_s * 2 ** attempt) * random.uniform(0.8, 1.2)


def send(request: F.Request, timeout_s: float) -> None:
    """POST it; raises on a network error or a non-2xx answer."""
    req = urllib.request.Request(request.url, data=request.body, method=request.method,
                                 headers=request.headers)
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        if not 200 <= r.status < 300:
            raise urllib.error.HTTPError(request.url, r.status, "not accepted", r.headers,
                                         None)


class TargetWorker(threading.Thread):
    """Delivers every ``llm_alerts`` record to one target, in order (module docstring)."""

    def __init__(self, settings: Settings, target: Target,
                 stop: threading.Event) -> None:
        super().__init__(name=f"notify-{target.name}", daemon=True)
        self.settings, self.target, self.stop_event = settings, target, stop
        self.cooldown = Cooldown(settings.notify.cooldown_s)
        self.group = f"{settings.stream.app_id}-notify-{target.name}"
        self.delivered = self.skipped = self.failures = 0
        self.ready = threading.Event()
        #: Alertmanager targets: the latest firing record of each open incident, re-posted
        #: every ``REPOST_S`` (Alertmanager ends an alert nobody re-posts).
        self.am_open: dict[str, dict[str, Any]] = {}
        self._reposted = time.monotonic()

    def run(self) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        from pipeline import clients

        c = clients.consumer(self.settings, LLM_ALERTS, group_id=self.group,
                             enable_auto_commit=False, auto_offset_reset="latest")
        if self.target.format == "alertmanager":
            self._recover_open()
        try:
            while not self.stop_event.is_set():
                batches = c.poll(timeout_ms=500)
                self._repost()
                if not self.ready.is_set() and c.assignment():
                    for tp in c.assignment():
                        c.position(tp)      # resolve "latest" now: nothing after is missed
                    self.ready.set()
                for tp, records in batches.items():
                    for r in records:
                        if not self._deliver(r):
                            return          # stopping
                        c.commit({TopicPartition(tp.topic, tp.partition):
                                  OffsetAndMetadata(r.offset + 1, "", -1)})
        finally:
            c.close()

    def _deliver(self, r: Any) -> bool:
        """Deliver one record (retrying until it is accepted); False when stopping."""
        try:
            record = orjson.loads(r.value)
            problems = A.validate(record) if isinstance(record, dict) else ["not an object"]
        except orjson.JSONDecodeError as exc:
            problems = [str(exc)]
        if problems:
            log.warning("notify %s: skipping malformed %s[%d]@%d: %s", self.target.name,
                        LLM_ALERTS, r.partition, r.offset, "; ".join(problems[:3]))
            self.skipped += 1
            return True
        now = time.time()
        if not F.passes(record, self.target.min_severity, self.target.tenants) \
                or not self.cooldown.allow(record, now):
            self.skipped += 1
            return True
        if self.target.format == "alertmanager":
            request = F.alertmanager(self._am_batch(record), self.target.url)
        else:
            request = build_request(self.target, record)
        attempt = 0
        while not self.stop_event.is_set():
            try:
                send(request, self.settings.notify.timeout_s)
                self.cooldown.delivered(record, time.time())
                self.delivered += 1
                return True
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    # The target says this request can never be accepted: retrying
                    # forever would block every later alert. Log it loudly and move on.
                    log.error("notify %s: %s rejected with HTTP %d, skipped: %s",
                              self.target.name, record[A.DEDUP_KEY], exc.code,
                              exc.read()[:300] if exc.fp else "")
                    self.skipped += 1
                    return True
                self._failed(record, exc, attempt)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self._failed(record, exc, attempt)
            attempt += 1
        return False

    def _failed(self, record: dict[str, Any], exc: Exception, attempt: int) -> None:
        self.failures += 1
        wait = backoff_s(attempt, self.settings.notify.retry_max_s)
        log.warning("notify %s: %s failed (%s); retry in %.1f s", self.target.name,
                    record[A.DEDUP_KEY], exc, wait)
        self.stop_event.wait(wait)

    # ------------------------------------------------------------ Alertmanager

    def _am_batch(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The record, plus the end of its previous severity: severity is a label, so a
        warning that became critical would otherwise stay open beside it."""
        key = record[A.DEDUP_KEY]
        prev = self.am_open.get(key)
        batch = []
        if prev is not None and prev[A.SEVERITY] != record[A.SEVERITY]:
            batch.append({**prev, A.STATE: A.RESOLVED,
                          A.LAST_SEEN: max(record[A.LAST_SEEN], prev[A.FIRST_SEEN])})
        batch.append(record)
        if record[A.STATE] == A.FIRING:
            self.am_open[key] = record
        else:
            self.am_open.pop(key, None)
        return batch

    def _repost(self) -> None:
        if not self.am_open or time.monotonic() - self._reposted < REPOST_S:
            return
        self._reposted = time.monotonic()
        try:
            send(F.alertmanager(list(self.am_open.values()), self.target.url),
                 self.settings.notify.timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("notify %s: re-posting %d open alert(s) failed: %s",
                        self.target.name, len(self.am_open), exc)

    def _recover_open(self) -> None:
        """After a restart: the incidents still open, from the alert log itself."""
        from pipeline.stream.detect_stage import read_alerts

        latest: dict[str, dict[str, Any]] = {}
        try:
            for r in read_alerts(self.settings):
                if isinstance(r, dict) and not A.validate(r):
                    latest[r[A.DEDUP_KEY]] = r
        except Exception:  # recovery is best effort; new records still flow
            log.warning("notify %s: could not read back open incidents", self.target.name,
                        exc_info=True)
        self.am_open = {k: r for k, r in latest.items() if r[A.STATE] == A.FIRING
                        and F.passes(r, self.target.min_severity, self.target.tenants)}


def run(settings: Settings) -> None:
    """`llmspend notify`: deliver to every target until SIGTERM/SIGINT."""
    import signal

    targets = parse_targets(settings.notify.targets)
    if not targets:
        raise ConfigError("notify.targets: no targets configured (see the README's "
                          "On-call section)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: stop.set())
    workers = [TargetWorker(settings, t, stop) for t in targets]
    for w in workers:
        w.start()
        log.info("notify %s: %s -> %s", w.target.name, w.target.format, w.target.url)
    ready = settings.state_dir / "run" / "notify.ready"
    while not stop.is_set() and not all(w.ready.is_set() for w in workers):
        stop.wait(0.2)
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text("ready\n")
    try:
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        ready.unlink(missing_ok=True)
        for w in workers:
            w.join(timeout=10)
