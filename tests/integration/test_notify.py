"""`llmspend notify` against the real broker and a real HTTP receiver: a target that
fails twice then recovers gets every alert exactly once, in order; a restart resumes
after the last delivered record without repeating it; filters skip what they should."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import pytest

from pipeline import clients
from pipeline.alerts import Incident
from schemas.topics import LLM_ALERTS
from tests.integration.kafka_helpers import free_port

pytestmark = pytest.mark.integration


class Receiver(http.server.ThreadingHTTPServer):
    """Accepts POSTs, failing the first ``fail`` ones with 503."""

    def __init__(self, fail: int) -> None:
        self.fail, self.bodies, self.attempts = fail, [], 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.attempts += 1
                if server.attempts <= server.fail:
                    self.send_response(503)
                else:
                    server.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *_a) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@contextmanager
def notifier(state, env):
    full = {**os.environ, "LLMSPEND_STATE_DIR": str(state), **env}
    ready = state / "run" / "notify.ready"
    ready.unlink(missing_ok=True)
    log = open(state / "notify.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "notify"], env=full,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((state / "notify.log").read_text()[-3000:])
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def produce(settings, records: list) -> None:
    p = clients.producer(settings)
    try:
        for r in records:
            value = r if isinstance(r, bytes) else json.dumps(r).encode()
            p.send(LLM_ALERTS, key=b"k", value=value).get(timeout=30)
    finally:
        p.close()


def incident(tenant: str, n: int) -> list[dict]:
    inc = Incident(f"session/{tenant}/s{n}", "session", f"s{n}", tenant)
    return [inc.observe("warning", "runaway_loop", f"loop {n}", {"n": n}, 1_000_000 + n),
            inc.observe("critical", "runaway_loop", f"loop {n}", {"n": n}, 2_000_000 + n),
            inc.resolve(f"quiet {n}", 3_000_000 + n)]


def wait_for(pred, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_failing_target_gets_everything_once_and_a_restart_repeats_nothing(
        kafka_settings, tmp_path):
    tenant = f"ntf-{uuid.uuid4().hex[:8]}"
    rx = Receiver(fail=2)
    quiet = Receiver(fail=0)
    targets = {"hook": {"format": "webhook", "url": f"http://127.0.0.1:{rx.server_port}/x",
                        "tenants": tenant},
               "critical-only": {"format": "webhook", "min_severity": "critical",
                                 "url": f"http://127.0.0.1:{quiet.server_port}/y",
                                 "tenants": tenant}}
    env = {"LLMSPEND_STREAM_APP_ID": f"llmspend-notify-{uuid.uuid4().hex[:8]}",
           "LLMSPEND_NOTIFY_TARGETS": json.dumps(targets),
           "LLMSPEND_NOTIFY_RETRY_MAX_S": "1"}
    first = incident(tenant, 1)
    with notifier(tmp_path, env):
        produce(kafka_settings, [*first, b"{not json"])
        wait_for(lambda: len(rx.bodies) == 3)
        wait_for(lambda: len(quiet.bodies) == 2)
        time.sleep(1.0)     # let the last commit land before stopping
    assert [b["id"] for b in rx.bodies] == [r["id"] for r in first]
    assert rx.attempts == 5                      # 2 refused, then 3 delivered once each
    assert [b["severity"] for b in quiet.bodies] == ["critical", "critical"]

    second = incident(tenant, 2)
    produce(kafka_settings, second)              # while no notifier runs
    with notifier(tmp_path, env):
        wait_for(lambda: len(rx.bodies) == 6)
        time.sleep(2.0)
    assert [b["id"] for b in rx.bodies] == [r["id"] for r in first + second]
    rx.shutdown()
    quiet.shutdown()


@pytest.fixture
def alertmanager(tmp_path):
    """The real Prometheus Alertmanager (Debian package) on a free port, no clustering."""
    import shutil
    import urllib.request

    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is not installed (.ci/run installs it: "
                    "apt-get install prometheus-alertmanager)")
    cfg = tmp_path / "am.yml"
    cfg.write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")
    port = free_port()
    (tmp_path / "am-data").mkdir()
    log = open(tmp_path / "am.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--config.file={cfg}",
                             f"--storage.path={tmp_path / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 30)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_alertmanager_gets_one_alert_per_incident_and_its_resolve(kafka_settings, tmp_path,
                                                                  alertmanager):
    import urllib.parse
    import urllib.request

    tenant = f"ntf-{uuid.uuid4().hex[:8]}"
    warn, crit, done = incident(tenant, 7)
    env = {"LLMSPEND_STREAM_APP_ID": f"llmspend-notify-{uuid.uuid4().hex[:8]}",
           "LLMSPEND_NOTIFY_TARGETS": json.dumps({"am": {
               "format": "alertmanager", "url": alertmanager, "tenants": tenant}})}
    query = urllib.parse.quote(f'dedup_key="{warn["dedup_key"]}"')

    def active() -> list[dict]:
        with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts?filter={query}",
                                    timeout=5) as r:
            return json.loads(r.read())

    def resolved_received() -> int:
        """Alertmanager's own count of resolved alerts received (all API versions)."""
        with urllib.request.urlopen(f"{alertmanager}/metrics", timeout=5) as r:
            return sum(int(float(line.rsplit(" ", 1)[1]))
                       for line in r.read().decode().splitlines()
                       if line.startswith("alertmanager_alerts_received_total")
                       and 'status="resolved"' in line)

    with notifier(tmp_path, env):
        produce(kafka_settings, [warn])
        wait_for(lambda: [a["labels"]["severity"] for a in active()] == ["warning"])
        produce(kafka_settings, [crit])
        # The warning is ended when the incident escalates: one alert, critical.
        wait_for(lambda: [a["labels"]["severity"] for a in active()] == ["critical"])
        (alert,) = active()
        assert alert["labels"]["alertname"] == "LLMSpendRunawayLoop"
        assert alert["labels"]["tenant"] == tenant and alert["status"]["state"] == "active"
        assert alert["annotations"]["summary"] == crit["summary"]
        before = resolved_received()
        produce(kafka_settings, [done])
        wait_for(lambda: active() == [])
        assert resolved_received() > before


def test_slack_and_pagerduty_payloads_reach_their_receivers_with_the_resolve(
        kafka_settings, tmp_path):
    tenant = f"ntf-{uuid.uuid4().hex[:8]}"
    slack, pd = Receiver(fail=0), Receiver(fail=0)
    targets = {"slack": {"format": "slack", "tenants": tenant,
                         "url": f"http://127.0.0.1:{slack.server_port}/services/T/B/X"},
               "pd": {"format": "pagerduty", "routing_key": "rk-123", "tenants": tenant,
                      "url": f"http://127.0.0.1:{pd.server_port}/v2/enqueue"}}
    env = {"LLMSPEND_STREAM_APP_ID": f"llmspend-notify-{uuid.uuid4().hex[:8]}",
           "LLMSPEND_NOTIFY_TARGETS": json.dumps(targets)}
    warn, crit, done = incident(tenant, 3)
    with notifier(tmp_path, env):
        produce(kafka_settings, [warn, crit, done])
        wait_for(lambda: len(slack.bodies) == 3 and len(pd.bodies) == 3)
    assert [b["event_action"] for b in pd.bodies] == ["trigger", "trigger", "resolve"]
    assert {b["dedup_key"] for b in pd.bodies} == {warn["dedup_key"]}
    assert pd.bodies[1]["payload"]["severity"] == "critical"
    assert all(b["routing_key"] == "rk-123" for b in pd.bodies)
    assert "loop 3" in slack.bodies[0]["text"] and slack.bodies[0]["blocks"]
    assert "RESOLVED" in slack.bodies[2]["text"]
    slack.shutdown()
    pd.shutdown()
