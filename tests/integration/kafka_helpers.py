"""Helpers for integration tests: read back what landed in a topic, run receivers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from pipeline import clients
from pipeline.config import Settings

_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and never given before in this run: the OS may hand the port
    it just freed out again, and two "free" ports that are equal break a test (Kafka's
    port and its controller port, once in CI)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` for a process a test will Ctrl-C: SIGINT back to its default, so
    Python installs its KeyboardInterrupt handler even when the test run itself was
    started in the background by a shell (which starts it with SIGINT ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def processes_of(needle: bytes, state_dir: Path) -> list[int]:
    """Pids whose command line holds ``needle`` and whose command line or environment
    names ``state_dir`` (what a command started there and must have stopped)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmd and str(state_dir).encode() in cmd + env:
            pids.append(int(entry.name))
    return pids


def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    return clients.end_offsets(settings, topic)


def read_records(settings: Settings, start: dict[TopicPartition, int],
                 done: Callable[[list[Any]], bool], timeout_s: float = 30.0) -> list[Any]:
    """Consume from ``start`` offsets until ``done(records)`` or the timeout."""
    return clients.read_from(settings, start, done, timeout_s)


def alert_records(records, **fields: Any) -> list[dict]:
    """The alert records among ``records`` (llm_alerts) whose fields equal ``fields``;
    other tests write malformed records there on purpose, so those are skipped."""
    import json

    out = []
    for r in records:
        try:
            a = json.loads(r.value)
        except (ValueError, TypeError):
            continue
        if isinstance(a, dict) and all(a.get(k) == v for k, v in fields.items()):
            out.append(a)
    return out


@contextmanager
def receiver(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Run `llmspend ingest` as a real process on free ports; yields its endpoints."""
    http, grpc = free_port(), free_port()
    full = {**os.environ, "LLMSPEND_INGEST_HTTP_PORT": str(http),
            "LLMSPEND_INGEST_GRPC_PORT": str(grpc), **env}
    # Its output goes to a file, never to a pipe nobody reads: with Kafka down the
    # receiver logs every reconnect, and once a pipe's 64 KiB fill up its next log
    # line blocks the whole event loop (a POST then hangs, as it did in CI).
    log = tempfile.NamedTemporaryFile(prefix="llmspend-receiver-", suffix=".log")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "ingest"], env=full,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError("receiver exited: "
                                   + Path(log.name).read_bytes().decode()[-2000:])
            try:
                urllib.request.urlopen(base + "/metrics", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("receiver did not start") from None
                time.sleep(0.2)
        yield {"http": base, "traces": base + "/v1/traces", "grpc": f"127.0.0.1:{grpc}",
               "log": log.name}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def worker_process(state: Path, env: dict[str, str] | None = None,
                   ) -> Iterator[subprocess.Popen]:
    """A real `llmspend worker` in its own consumer group, starting at the topics' end,
    so it sees only what the test produces after it is ready (every stage but the
    lake sink unless ``env`` says otherwise)."""
    full = {**os.environ, "LLMSPEND_STATE_DIR": str(state),
            "LLMSPEND_STREAM_APP_ID": f"llmspend-test-{uuid.uuid4().hex[:8]}",
            "LLMSPEND_STREAM_AUTO_OFFSET_RESET": "latest",
            "LLMSPEND_STREAM_METRICS_PORT": "0",
            # The stages these tests are about; the lake's tests add "lake" themselves.
            "LLMSPEND_STREAM_STAGES": "normalise,aggregate,detect,detect_windows",
            **(env or {})}
    log = open(state / "worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], env=full,
                            stdout=log, stderr=subprocess.STDOUT)
    ready = state / "run" / "worker.ready"
    deadline = time.monotonic() + 120
    try:
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((state / "worker.log").read_text()[-3000:])
            time.sleep(0.3)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
