"""`llmspend alerts` against the real broker: what is in llm_alerts comes back in order,
filtered, as JSON or as lines; malformed records are reported, not fatal; --follow tails
until Ctrl-C, which exits 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pipeline.alerts import Incident
from pipeline.clients import producer
from schemas import alerts as A
from schemas.topics import LLM_ALERTS
from tests.integration.kafka_helpers import ctrl_c_reaches_it

pytestmark = pytest.mark.integration
T0_US = int(time.time() * 1_000_000)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return subprocess.run([sys.executable, "-m", "pipeline", "alerts", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def _send(settings, items: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce (key, value) pairs to llm_alerts; their (partition, offset)."""
    p = producer(settings)
    try:
        futures = [p.send(LLM_ALERTS, key=k, value=v) for k, v in items]
        p.flush(30)
        return [(md.partition, md.offset) for md in (f.get(timeout=30) for f in futures)]
    finally:
        p.close()


def _lifecycle(tenant: str) -> list[dict]:
    """One incident: opens as a warning, rises to critical, resolves."""
    inc = Incident(A.dedup_key("session", tenant, "s-1"), "session", "s-1", tenant)
    records = [
        inc.observe(A.WARNING, "runaway_loop", f"{tenant}: search repeated 3 times",
                    {"repeats": 3}, T0_US),
        inc.observe(A.CRITICAL, "runaway_loop", f"{tenant}: search repeated 6 times",
                    {"repeats": 6}, T0_US + 2_000_000),
        inc.resolve(f"{tenant}: session went quiet; resolved", T0_US + 9_000_000),
    ]
    assert all(r is not None and not A.validate(r) for r in records)
    return records


@pytest.fixture(scope="module")
def produced(kafka_settings):
    """Three well-formed alerts of a fresh tenant, and two malformed records between."""
    tenant = f"alerts-cli-{uuid.uuid4().hex[:10]}"
    records = _lifecycle(tenant)
    bad_schema = {**records[0], A.SEVERITY: "fatal"}
    key = records[0][A.DEDUP_KEY].encode()
    where = _send(kafka_settings, [
        (key, json.dumps(records[0]).encode()),
        (key, b"{this is not json"),
        (key, json.dumps(records[1]).encode()),
        (key, json.dumps(bad_schema).encode()),
        (key, json.dumps(records[2]).encode()),
    ])
    return {"tenant": tenant, "records": records, "malformed": [where[1], where[3]]}


def test_no_follow_json_returns_exactly_the_records_in_order(produced):
    res = _cli("--since", "5m", "--no-follow", "--json", "--tenant", produced["tenant"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [json.dumps(r, separators=(",", ":"))
                                       for r in produced["records"]]
    for partition, offset in produced["malformed"]:
        assert f"malformed alert {LLM_ALERTS}[{partition}]@{offset}" in res.stderr
    assert "severity 'fatal'" in res.stderr
    assert "Traceback" not in res.stderr


def test_lines_carry_the_summaries_without_escape_codes(produced):
    res = _cli("--since", "5m", "--no-follow", "--tenant", produced["tenant"])
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    for line, record in zip(lines, produced["records"], strict=True):
        assert record[A.SUMMARY] in line and record[A.DEDUP_KEY] in line
        assert f"tenant={produced['tenant']}" in line
    assert [ln.split()[1] for ln in lines] == ["WARNING", "CRITICAL", "RESOLVED"]
    assert "\x1b" not in res.stdout


@pytest.mark.parametrize("args,expected", [
    (["--severity", "critical"], [1, 2]),
    (["--state", "resolved"], [2]),
    (["--state", "firing", "--severity", "warning"], [0, 1]),
    (["--detector", "runaway_loop"], [0, 1, 2]),
    (["--detector", "spend_anomaly"], []),
])
def test_filters(produced, args, expected):
    res = _cli("--since", "5m", "--no-follow", "--json", "--tenant", produced["tenant"],
               *args)
    assert res.returncode == 0, res.stderr
    got = [json.loads(line) for line in res.stdout.splitlines()]
    assert got == [produced["records"][i] for i in expected]


def test_without_since_only_new_alerts_are_shown(produced):
    res = _cli("--no-follow", "--json", "--tenant", produced["tenant"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""


def test_since_in_the_future_shows_nothing_and_a_bad_since_is_a_usage_error(produced):
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    res = _cli("--since", future, "--no-follow", "--tenant", produced["tenant"])
    assert (res.returncode, res.stdout) == (0, "")
    res = _cli("--since", "yesterday", "--no-follow")
    assert res.returncode == 2 and "neither a duration" in res.stderr


def test_follow_tails_new_alerts_and_ctrl_c_exits_0(kafka_settings, produced):
    tenant = produced["tenant"]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "alerts", "--since", "5m", "--json",
         "--tenant", tenant], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, preexec_fn=ctrl_c_reaches_it)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout],
                     daemon=True).start()

    def take(n: int, timeout_s: float = 60.0) -> list[dict]:
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < n:
            try:
                out.append(json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic()))))
            except queue.Empty:
                proc.kill()
                pytest.fail(f"only {len(out)} of {n} records; stderr: {proc.stderr.read()}")
        return out

    try:
        assert take(3) == produced["records"]
        # a new incident written while it tails shows up
        inc = Incident(A.dedup_key("session", tenant, "s-2"), "session", "s-2", tenant)
        fresh = inc.observe(A.INFO, "runaway_session", f"{tenant}: 50 steps", {}, T0_US)
        _send(kafka_settings, [(fresh[A.DEDUP_KEY].encode(), json.dumps(fresh).encode())])
        assert take(1) == [fresh]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stderr = proc.stderr.read()
    assert rc == 0, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
