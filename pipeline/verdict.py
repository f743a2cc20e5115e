"""Verdicts: may this session (agent, team, user) go on? allow / warn / block.

The detectors keep one control record per subject on the compacted topic
``llm_controls`` (key ``tenant|kind|subject``): ``warn`` while a warning incident is
open for it, ``block`` while a critical one is, and a tombstone when it resolves. The
ingest server reads the topic into a :class:`Verdicts` map and answers
``GET /v1/verdict?session=ID`` (also ``agent=``, ``team=``, ``user=``): the strictest
verdict of the subjects asked about, with the reasons and incident ids, so an app can
stop a runaway agent before its next call.
"""

from __future__ import annotations

from typing import Any

from pipeline.alerts import now_rfc3339
from schemas import alerts as A

ALLOW, WARN, BLOCK = "allow", "warn", "block"
RANK = {ALLOW: 0, WARN: 1, BLOCK: 2}
#: Query parameter -> subject kind of an alert.
SUBJECTS = {"session": "session", "agent": "agent", "team": "team", "user": "user"}


def control_key(tenant: str, kind: str, subject: str) -> str:
    return f"{tenant}|{kind}|{subject}"


def control_from_alert(alert: dict[str, Any]) -> tuple[str, dict[str, Any] | None] | None:
    """The ``llm_controls`` record an alert implies: (key, value), value None for a
    tombstone (resolved: allowed again); None when the alert is about no subject an app
    asks for (a model, the pipeline) or is only informational."""
    kind = alert.get(A.SUBJECT_KIND)
    if kind not in SUBJECTS.values():
        return None
    key = control_key(alert[A.TENANT], kind, alert[A.SUBJECT])
    if alert[A.STATE] == A.RESOLVED:
        return key, None
    verdict = {A.CRITICAL: BLOCK, A.WARNING: WARN}.get(alert[A.SEVERITY])
    if verdict is None:
        return None
    return key, {"tenant": alert[A.TENANT], "subject_kind": kind,
                 "subject": alert[A.SUBJECT], "verdict": verdict,
                 "reason": alert[A.SUMMARY], "incident": alert[A.DEDUP_KEY],
                 "alert_id": alert[A.ID], "severity": alert[A.SEVERITY],
                 "updated_at": now_rfc3339()}


class Verdicts:
    """The latest control of every subject (the compacted topic, in memory)."""

    def __init__(self) -> None:
        self.controls: dict[str, dict[str, Any]] = {}

    def apply(self, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.controls.pop(key, None)
        else:
            self.controls[key] = value

    def lookup(self, tenant: str, subjects: dict[str, str]) -> dict[str, Any]:
        """The answer for ``subjects`` (kind -> id) of ``tenant``: strictest wins."""
        found = [c for kind, sid in subjects.items()
                 if (c := self.controls.get(control_key(tenant, kind, sid))) is not None]
        verdict = max((c["verdict"] for c in found), key=RANK.__getitem__, default=ALLOW)
        return {"verdict": verdict, "tenant": tenant, "subjects": subjects,
                "reasons": [c["reason"] for c in found],
                "incidents": [{"dedup_key": c["incident"], "alert_id": c["alert_id"],
                               "severity": c["severity"],
                               "subject_kind": c["subject_kind"]} for c in found]}


class ControlsReader:
    """Keeps a :class:`Verdicts` map up to date from ``llm_controls`` (a daemon thread of
    the ingest server: kafka-python blocks, the receivers' event loop must not)."""

    def __init__(self, settings: Any) -> None:
        import threading

        self.settings = settings
        self.verdicts = Verdicts()
        self.ready = threading.Event()      # set once the topic was read to its end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmspend-controls",
                                        daemon=True)

    def start(self) -> ControlsReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import logging

        log = logging.getLogger(__name__)
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # the receivers must keep running; retry the reader
                log.warning("reading llm_controls failed; retrying in 5 s", exc_info=True)
                self._stop.wait(5)

    def _follow(self) -> None:
        import orjson
        from kafka import TopicPartition

        from pipeline import clients
        from schemas.topics import LLM_CONTROLS

        c = clients.consumer(self.settings, enable_auto_commit=False)
        try:
            tps = [TopicPartition(LLM_CONTROLS, p)
                   for p in sorted(c.partitions_for_topic(LLM_CONTROLS) or ())]
            if not tps:
                raise RuntimeError(f"topic {LLM_CONTROLS} not found (run `llmspend up`)")
            c.assign(tps)
            c.seek_to_beginning(*tps)
            ends = c.end_offsets(tps)
            while not self._stop.is_set():
                for records in c.poll(timeout_ms=200).values():
                    for r in records:
                        try:
                            value = None if r.value is None else orjson.loads(r.value)
                            self.verdicts.apply(r.key.decode(), value)
                        except (orjson.JSONDecodeError, AttributeError, UnicodeDecodeError):
                            continue
                if not self.ready.is_set() and all(c.position(tp) >= ends[tp]
                                                   for tp in tps):
                    self.ready.set()
        finally:
            c.close()
