"""Runaway-loop detection latency under background traffic.

Latency is measured from the moment the ingest server ACCEPTED the offending spans (HTTP
200 for ``POST /v1/traces``, sent only once Kafka acknowledged them in ``otlp_spans``)
to the moment the incident's alert is READABLE in ``llm_alerts`` (returned by a
kafka-python consumer tailing the topic in this process), and on to the moment
``llmspend notify`` DELIVERED it: its webhook POST received (body read) by an HTTP server
on loopback in this process. All ends are ``time.monotonic()`` in this process.

Set-up, on a temporary state dir and free ports, in the shared local broker
(``llmspend up --kafka-only`` is done for you if it does not run; it is left running):

* one real ``llmspend ingest`` (auth on: every span is tenant ``bench-detect``) and one
  real ``llmspend worker`` with every stage, in a consumer group of its own that starts
  at the topics' end (``LLMSPEND_STREAM_AUTO_OFFSET_RESET=latest``);
* one real ``llmspend notify`` with one ``webhook`` target (``bench``, tenant
  ``bench-detect``) pointing at a ``ThreadingHTTPServer`` on a free loopback port in this
  process; its consumer group ``<app id>-notify-bench`` is new, so it starts at the end
  of ``llm_alerts`` (probes are sent only after its ``run/notify.ready``);
* background: generator traffic (``pipeline.traffic``: the Azure-trace replay through
  the real OTel SDK and the stock OTLP/HTTP exporter) paced in real time at about
  ``--calls-per-s`` calls per second, in a child process (so it does not share this
  process's GIL with the timing). Its ``rate`` is calibrated on the plan and the
  start-up ramp of the trace is cut off, so the load is steady from the first second;
* probes: every ``--probe-every`` seconds one OTLP/HTTP protobuf request holding ONE new
  session (unique ``gen_ai.conversation.id``) with 3 identical ``execute_tool`` spans
  (same tool, same arguments): the session detector's ``loop_warn`` (3 in a row), so
  the warning of ``session/bench-detect/<session>`` is the alert measured.

Prints probes sent / alerted / delivered, P50/P95/P99/max latency to the alert and to
the webhook (with the alert readable -> webhook hop), the background calls/s actually
sent, the worker's consumer lag (committed offsets, sampled every 2 s) and the CPU of
each process. Never asserts timings (target: P99 < 2 s for both); exits 1 only if a
probe was rejected, got no alert or no webhook within 30 s. The worker, notifier and
receiver are stopped and the worker's own topics and consumer groups (the notifier's
too) deleted at the end.

Usage: ``.venv/bin/python bench/bench_detect.py [--seconds 60] [--calls-per-s 1000]
[--probe-every 2.0]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from pipeline.config import load_settings
from schemas import alerts as A
from schemas.topics import LLM_ALERTS, LLM_CALLS, OTLP_SPANS
from tests.integration.kafka_helpers import free_port, worker_process

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench-detect"
TOOL, ARGS = "search_kb", '{"q":"same"}'
LOST_AFTER_S = 30.0
LEAD_S = 5.0        # background before the first probe (the pipeline warms up)
TAIL_S = 5.0        # background after the last probe
RAMP_S = 15.0       # start-up ramp of a plan (sessions arriving), cut off
CALLS_PER_TRACE_S = 14.4  # first guess of the trace's calls per trace second


# --------------------------------------------------------------------- background


def _window(rate: float, seed: int, prefix: str, seconds: float):
    """A plan at ``rate``, cut to the spans ending in [RAMP_S, RAMP_S + seconds) of
    wall time: (plan, calls in it)."""
    from pipeline.traffic.plan import Options, plan

    start = 1_764_000_000 * 10**9
    p = plan(Options(seed=seed, rate=rate, duration_s=rate * (RAMP_S + seconds + 1),
                     start_time_ns=start, tenants=(TENANT,), service_prefix=prefix))
    lo, hi = start + int(RAMP_S * 1e9), start + int((RAMP_S + seconds) * 1e9)
    spans = [sp for sp in p.spans if lo <= sp.end_ns < hi]
    calls = sum(sp.copies for sp in spans if sp.call is not None)
    return dataclasses.replace(p, spans=spans, start_ns=lo, end_ns=hi), calls


def _background(endpoint: str, token: str, calls_per_s: float, seconds: float,
                prefix: str, go: Any, out: Any) -> None:
    """Child process: plan (calibrating the rate), wait for ``go``, emit paced."""
    try:
        from pipeline.traffic import emit as emit_mod
        from pipeline.traffic.generator import now_ns, shift

        t = time.perf_counter()
        rate = calls_per_s / CALLS_PER_TRACE_S
        p, calls = _window(rate, 17, prefix, seconds)
        for _ in range(2):  # the trace's density varies: correct the rate on the plan
            if abs(calls / seconds / calls_per_s - 1) < 0.03:
                break
            rate *= calls_per_s * seconds / max(calls, 1)
            p, calls = _window(rate, 17, prefix, seconds)
        spans = sum(sp.copies for sp in p.spans)
        out.put(("ready", {"rate": rate, "calls": calls, "spans": spans,
                           "plan_s": time.perf_counter() - t}))
        go.wait()
        shift(p, now_ns() - p.start_ns)
        exporter = emit_mod.make_exporter("http", endpoint, token, TENANT)
        stats = emit_mod.emit(p, {TENANT: exporter}, max_rate=False)
        out.put(("done", {"spans": stats.spans, "exported": stats.exported,
                          "failed": stats.failed, "batches": stats.batches,
                          "seconds": stats.seconds, "calls": calls}))
    except BaseException as exc:  # reported by the parent, then re-raised
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


def _result(proc: Any, out: Any) -> tuple[str, Any]:
    """The background process's final message (or why there is none)."""
    import queue

    while True:
        alive = proc.is_alive()
        try:
            return out.get(timeout=1.0)
        except queue.Empty:
            if not alive:
                return "error", f"exited with code {proc.exitcode} without a result"


# -------------------------------------------------------------------------- probes


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def probe_request(session: str, service: str) -> bytes:
    """One OTLP protobuf request: a session calling the same tool with the same
    arguments 3 times in a row (10 ms each, 5 ms apart, ending now)."""
    now = time.time_ns()
    trace_id = uuid.uuid4().bytes
    scope = trace_pb2.ScopeSpans()
    scope.scope.name = "llmspend-bench-detect"
    for i in range(3):
        end = now - (2 - i) * 15_000_000
        span = scope.spans.add()
        span.trace_id = trace_id
        span.span_id = os.urandom(8)
        span.name = f"execute_tool {TOOL}"
        span.kind = trace_pb2.Span.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = end - 10_000_000
        span.end_time_unix_nano = end
        span.attributes.extend([
            _kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", TOOL),
            _kv("gen_ai.tool.call.arguments", ARGS), _kv("gen_ai.conversation.id", session),
            _kv("gen_ai.tool.call.id", f"call-{i}")])
    rs = trace_pb2.ResourceSpans()
    rs.resource.attributes.append(_kv("service.name", service))
    rs.scope_spans.append(scope)
    return ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString()


class Tail(threading.Thread):
    """Tails every partition of one topic from its current end, in a thread of its own
    (its own consumer: one topic's fetches never wait for another's)."""

    def __init__(self, settings, topic: str) -> None:
        super().__init__(name=f"tail-{topic}", daemon=True)
        from kafka import TopicPartition

        from pipeline import clients

        self.stop = threading.Event()
        self.c = clients.consumer(settings, enable_auto_commit=False, fetch_max_wait_ms=100)
        parts = self.c.partitions_for_topic(topic) or set()
        if not parts:
            raise SystemExit(f"topic {topic} not found (run `llmspend up`)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.c.assign(tps)
        self.c.seek_to_end(*tps)
        for tp in tps:  # resolve "end" now, before any probe
            self.c.position(tp)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for batch in self.c.poll(timeout_ms=100).values():
                    now = time.monotonic()
                    for r in batch:
                        self.record(r, now)
        finally:
            self.c.close()

    def record(self, r: Any, now: float) -> None:
        raise NotImplementedError


class AlertTail(Tail):
    """llm_alerts: when each probe session's first firing alert was read, and how long
    after the worker stamped the record (the tail's own delay)."""

    def __init__(self, settings, sessions: set[str]) -> None:
        super().__init__(settings, LLM_ALERTS)
        self.sessions = sessions           # probe session ids (shared, add-only)
        self.first: dict[str, float] = {}  # session -> monotonic time first read
        self.stamp_to_read_ms: list[float] = []
        self.extra: dict[str, int] = {}    # session -> further firing records

    def record(self, r: Any, now: float) -> None:
        try:
            a = json.loads(r.value or b"")
        except ValueError:
            return
        if not (isinstance(a, dict) and a.get(A.TENANT) == TENANT
                and a.get(A.SUBJECT_KIND) == "session" and a.get(A.SUBJECT) in self.sessions
                and a.get(A.STATE) == A.FIRING):
            return
        sid = a[A.SUBJECT]
        if sid in self.first:
            self.extra[sid] = self.extra.get(sid, 0) + 1
        else:
            self.first[sid] = now
            self.stamp_to_read_ms.append(time.time() * 1000 - r.timestamp)


class CallsTail(Tail):
    """llm_calls: when each probe session's calls were first readable (the normalise
    stage's output), to split the latency into normalise and detect."""

    def __init__(self, settings, marker: bytes) -> None:
        super().__init__(settings, LLM_CALLS)
        self.marker = marker               # the probe session ids' common prefix
        self.first: dict[str, float] = {}

    def record(self, r: Any, now: float) -> None:
        if not r.value or self.marker not in r.value:
            return
        for line in r.value.split(b"\n"):
            if self.marker in line:
                sid = json.loads(line).get("session_id")
                self.first.setdefault(sid, now)


class HookReceiver:
    """The webhook target: a ``ThreadingHTTPServer`` on a free loopback port in this
    process, noting when each probe session's first firing alert was POSTed to it."""

    def __init__(self, sessions: set[str]) -> None:
        self.sessions = sessions           # probe session ids (shared, add-only)
        self.first: dict[str, float] = {}  # session -> monotonic time first received
        self.extra: dict[str, int] = {}    # session -> further firing deliveries
        self.other = self.malformed = 0    # background alerts, undecodable bodies
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                hook.record(body, now)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, name="hook",
                                       daemon=True)

    def record(self, body: bytes, now: float) -> None:
        try:
            a = json.loads(body)
        except ValueError:
            a = None
        with self.lock:
            if not isinstance(a, dict):
                self.malformed += 1
                return
            sid = a.get(A.SUBJECT)
            if not (a.get(A.TENANT) == TENANT and a.get(A.SUBJECT_KIND) == "session"
                    and sid in self.sessions and a.get(A.STATE) == A.FIRING):
                self.other += 1
            elif sid in self.first:
                self.extra[sid] = self.extra.get(sid, 0) + 1
            else:
                self.first[sid] = now

    def __enter__(self) -> HookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------- processes


@contextmanager
def notify_process(state: Path, env: dict[str, str], hook_url: str):
    """A real `llmspend notify` delivering tenant bench-detect's alerts to ``hook_url``
    (target ``bench``, format webhook), logging to a file; yields once it is ready."""
    targets = {"bench": {"format": "webhook", "url": hook_url, "tenants": TENANT}}
    full = {**os.environ, "LLMSPEND_STATE_DIR": str(state),
            "LLMSPEND_NOTIFY_TARGETS": json.dumps(targets), **env}
    ready = state / "run" / "notify.ready"
    ready.unlink(missing_ok=True)
    log = open(state / "notify.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "notify"], env=full,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("notify did not start: "
                                   + (state / "notify.log").read_text()[-3000:])
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@contextmanager
def receiver_process(state: Path, env: dict[str, str]):
    """A real `llmspend ingest` on free ports, logging to a file; yields its base URL."""
    http_port, grpc_port = free_port(), free_port()
    full = {**os.environ, "LLMSPEND_STATE_DIR": str(state),
            "LLMSPEND_INGEST_HTTP_PORT": str(http_port),
            "LLMSPEND_INGEST_GRPC_PORT": str(grpc_port), **env}
    log = open(state / "ingest.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "ingest"], env=full,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("receiver did not start: "
                                   + (state / "ingest.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(base + "/health", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        yield proc, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _cpu_s(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LagSampler(threading.Thread):
    """Every 2 s: the worker group's lag on otlp_spans and llm_calls (end offsets minus
    committed offsets; Faust commits every second, so this includes up to ~1 s)."""

    def __init__(self, settings, group: str) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.settings, self.group = settings, group
        self.samples: dict[str, list[int]] = {OTLP_SPANS: [], LLM_CALLS: []}
        self.stop = threading.Event()

    def run(self) -> None:
        from kafka import TopicPartition

        from pipeline import clients

        admin = clients.admin_client(self.settings)
        c = clients.consumer(self.settings, enable_auto_commit=False)
        try:
            tps = {t: [TopicPartition(t, p) for p in c.partitions_for_topic(t) or ()]
                   for t in self.samples}
            while not self.stop.wait(2.0):
                try:
                    for topic, out in self.samples.items():
                        ends = c.end_offsets(tps[topic])
                        done = clients.group_offsets(admin, self.group, topic)
                        out.append(sum(max(0, end - done.get(tp.partition, end))
                                       for tp, end in ends.items()))
                except Exception:  # noqa: BLE001 - a missed sample is no failure
                    continue
        finally:
            c.close()
            admin.close()


def _cleanup_kafka(settings, app_id: str) -> None:
    """Delete the worker's own topics (session changelog...) and consumer groups (the
    app id's, and its stages' own such as ``<app id>-aggregate-emit``)."""
    from pipeline import clients

    admin = clients.admin_client(settings)
    try:
        mine = [t for t in admin.list_topics() if t.startswith(app_id)]
        if mine:
            admin.delete_topics(mine)
        groups = [g["group_id"] for g in admin.list_groups()
                  if g["group_id"].startswith(app_id)]
        if groups:
            admin.delete_groups(groups)
    except Exception as exc:  # noqa: BLE001 - leftovers are harmless
        print(f"note: could not delete the worker's topics/group {app_id}: {exc}")
    finally:
        admin.close()


# --------------------------------------------------------------------------- main


def _rank(xs: list[float], q: float) -> float:
    """Nearest-rank quantile (the q-th value of the sorted sample)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def _clock(t: float) -> str:
    """Wall-clock time of day, UTC, to the tenth of a second."""
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 10)}"


def _post(conn: http.client.HTTPConnection, body: bytes, token: str) -> int:
    conn.request("POST", "/v1/traces", body=body,
                 headers={"Content-Type": "application/x-protobuf",
                          "Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="how long probes are sent (background runs 10 s longer)")
    ap.add_argument("--calls-per-s", type=float, default=1000.0,
                    help="background calls per second (0: no background)")
    ap.add_argument("--probe-every", type=float, default=2.0, help="seconds between probes")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the worker and ingest logs (the temporary state dir)")
    args = ap.parse_args()

    from pipeline import broker
    from pipeline.cli import bring_up

    settings = load_settings()
    if bring_up(settings, echo=lambda _line: None):
        print(f"kafka: started the local broker on {settings.kafka.bootstrap_servers} "
              f"(left running; `llmspend down` stops it)")
    run = uuid.uuid4().hex[:8]
    app_id = f"llmspend-bench-detect-{run}"
    token = f"bench-{uuid.uuid4().hex}"
    metrics_port = free_port()
    env = {"LLMSPEND_STREAM_APP_ID": app_id, "LLMSPEND_STREAM_AUTO_OFFSET_RESET": "latest",
           "LLMSPEND_STREAM_METRICS_PORT": str(metrics_port),
           "LLMSPEND_INGEST_TOKENS": f"{token}={TENANT}"}
    sessions: set[str] = set()
    sent: dict[str, float] = {}
    sent_wall: dict[str, float] = {}
    round_trip: dict[str, float] = {}
    rejected: list[str] = []
    ctx = mp.get_context("spawn")
    bg_out = ctx.Queue()
    go = ctx.Event()
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        state = Path(tempfile.mkdtemp(prefix="bench-detect-")) if args.keep_logs \
            else Path(tmp)
        try:
            with worker_process(state, env) as worker, \
                    receiver_process(state, env) as (ingest, base), \
                    HookReceiver(sessions) as hook, \
                    notify_process(state, env, hook.url) as notifier:
                print(f"worker (app id {app_id}, stages {settings.stream.stages}), "
                      f"receiver {base} and notify -> {hook.url} ready; {os.cpu_count()} "
                      f"CPUs, load average {os.getloadavg()[0]:.2f} before the run")
                bg = None
                if args.calls_per_s > 0:
                    bg = ctx.Process(target=_background, name="bench-detect-background",
                                     args=(base, token, args.calls_per_s,
                                           args.seconds + LEAD_S + TAIL_S,
                                           f"bd{run[:4]}-", go, bg_out), daemon=True)
                    bg.start()
                    kind, info = bg_out.get(timeout=600)
                    if kind != "ready":
                        raise RuntimeError(f"background generator failed: {info}")
                    print(f"background: plan of {info['calls']:,} calls / "
                          f"{info['spans']:,} spans at rate {info['rate']:.1f} (trace s "
                          f"per wall s) for {args.seconds + LEAD_S + TAIL_S:.0f} s, "
                          f"planned in {info['plan_s']:.1f} s")
                tail = AlertTail(settings, sessions)
                calls_tail = CallsTail(settings, f"bench-loop-{run}-".encode())
                tail.start()
                calls_tail.start()
                lag = LagSampler(settings, app_id)
                pids = {"worker": worker.pid, "ingest": ingest.pid, "notify": notifier.pid,
                        "generator": bg.pid if bg else None,
                        "broker": broker.status(settings).pid, "bench": os.getpid()}
                go.set()
                time.sleep(LEAD_S if bg else 1.0)
                lag.start()
                cpu0 = {k: _cpu_s(v) for k, v in pids.items()}
                w0 = time.monotonic()
                rng = random.Random(run)
                conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
                n = 0
                while n * args.probe_every < args.seconds:
                    sid = f"bench-loop-{run}-{n:04d}"
                    body = probe_request(sid, f"bench-detect-probe-{run}")
                    sessions.add(sid)
                    posted = time.monotonic()
                    try:
                        status = _post(conn, body, token)
                    except (OSError, http.client.HTTPException) as exc:
                        conn.close()
                        status = f"{type(exc).__name__}: {exc}"
                    if status == 200:
                        sent[sid] = time.monotonic()
                        sent_wall[sid] = time.time()
                        round_trip[sid] = sent[sid] - posted
                    else:
                        rejected.append(f"{sid}: {status}")
                    n += 1
                    due = w0 + (n + rng.uniform(-0.1, 0.1)) * args.probe_every
                    time.sleep(max(0.0, due - time.monotonic()))
                conn.close()
                wall = time.monotonic() - w0
                deadline = max(sent.values(), default=0) + LOST_AFTER_S
                while (set(sent) - set(tail.first) or set(sent) - set(hook.first)) \
                        and time.monotonic() < deadline:
                    if notifier.poll() is not None and not set(sent) - set(tail.first):
                        break  # notify died: what it did not deliver is lost
                    time.sleep(0.1)
                notify_exit = notifier.poll()
                cpu1 = {k: _cpu_s(v) for k, v in pids.items()}
                lag.stop.set()
                tail.stop.set()
                calls_tail.stop.set()
                bg_stats = None
                if bg is not None:
                    kind, bg_stats = _result(bg, bg_out)
                    if kind != "done":
                        raise RuntimeError(f"background generator failed: {bg_stats}")
                    bg.join(timeout=30)
                worker_metrics = _worker_metrics(metrics_port)
                lag.join(timeout=10)
                tail.join(timeout=10)
                calls_tail.join(timeout=10)
            notify_failures = _notify_log_failures(state)  # the notifier has stopped
        finally:
            go.set()
            _cleanup_kafka(settings, app_id)

    lat = [(tail.first[s] - t0) * 1000 for s, t0 in sent.items() if s in tail.first]
    lost = [s for s in sent if s not in tail.first]
    hooked = dict(hook.first)
    dlat = [(hooked[s] - t0) * 1000 for s, t0 in sent.items() if s in hooked]
    undelivered = [s for s in sent if s not in hooked]
    print()
    print("runaway-loop detection: POST /v1/traces answered 200 -> alert readable in "
          "llm_alerts -> webhook delivered by `llmspend notify` (receiver on loopback)")
    if bg_stats:
        s = bg_stats
        print(f"background  {s['calls']:,} calls ({s['spans']:,} spans, {s['exported']:,} "
              f"acknowledged, {s['failed']:,} failed, {s['batches']:,} requests) in "
              f"{s['seconds']:.1f} s: {s['calls'] / s['seconds']:,.0f} calls/s, "
              f"{s['spans'] / s['seconds']:,.0f} spans/s (target {args.calls_per_s:,.0f} "
              f"calls/s)")
    else:
        print("background  none")
    print(f"probes      {len(sessions)} sent over {wall:.0f} s, {len(sent)} accepted, "
          f"{len(lat)} alerted, {len(lost)} lost (no alert within {LOST_AFTER_S:.0f} s), "
          f"{len(rejected)} rejected; {len(dlat)} delivered by webhook, "
          f"{len(undelivered)} lost (no webhook within {LOST_AFTER_S:.0f} s)")
    if lat:
        print(f"latency ms  P50 {_rank(lat, .50):,.0f}  P95 {_rank(lat, .95):,.0f}  "
              f"P99 {_rank(lat, .99):,.0f}  max {max(lat):,.0f}  min {min(lat):,.0f}  "
              f"(n={len(lat)}, nearest rank; target P99 < 2,000)")
        rt = [x * 1000 for x in round_trip.values()]
        print(f"  {'(POST /v1/traces round trip, before t0)':<43} P50 {_rank(rt, .5):,.0f}  "
              f"P95 {_rank(rt, .95):,.0f}  max {max(rt):,.0f}")
        split = [((calls_tail.first[s] - t0) * 1000, (tail.first[s] - calls_tail.first[s])
                  * 1000) for s, t0 in sent.items()
                 if s in tail.first and s in calls_tail.first]
        for i, what in enumerate(("accepted -> llm_calls readable (normalise)",
                                  "llm_calls -> alert readable (detect)")):
            xs = [x[i] for x in split]
            if xs:
                print(f"  {what:<43} P50 {_rank(xs, .5):,.0f}  P95 {_rank(xs, .95):,.0f}"
                      f"  max {max(xs):,.0f}")
        if tail.stamp_to_read_ms:
            xs = tail.stamp_to_read_ms
            print(f"  {'alert record timestamp -> read by bench':<43} P50 "
                  f"{_rank(xs, .5):,.0f}  max {max(xs):,.0f}")
        slow = sorted((s for s in sent if s in tail.first),
                      key=lambda s: sent[s] - tail.first[s])[:3]
        print("  slowest   " + "  ".join(
            f"{(tail.first[s] - sent[s]) * 1000:,.0f} ms (sent {_clock(sent_wall[s])})"
            for s in slow) + " UTC")
        thirds = [lat[i * len(lat) // 3:(i + 1) * len(lat) // 3] for i in range(3)]
        print("  by third  " + "  ".join(f"median {_rank(t, .5):,.0f}" for t in thirds if t)
              + "  (a rising median: the worker falls behind)")
    if dlat:
        print(f"delivered ms  P50 {_rank(dlat, .50):,.0f}  P95 {_rank(dlat, .95):,.0f}  "
              f"P99 {_rank(dlat, .99):,.0f}  max {max(dlat):,.0f}  min {min(dlat):,.0f}  "
              f"(accepted -> webhook received on loopback, n={len(dlat)}, nearest rank; "
              f"target P99 < 2,000)")
        hop = [(hooked[s] - tail.first[s]) * 1000 for s in sent
               if s in hooked and s in tail.first]
        if hop:
            print(f"  {'alert readable -> webhook (notify)':<43} P50 {_rank(hop, .5):,.0f}  "
                  f"P95 {_rank(hop, .95):,.0f}  P99 {_rank(hop, .99):,.0f}  "
                  f"max {max(hop):,.0f}  min {min(hop):,.0f}")
        slow = sorted(hooked.keys() & sent.keys(), key=lambda s: sent[s] - hooked[s])[:3]
        print("  slowest   " + "  ".join(
            f"{(hooked[s] - sent[s]) * 1000:,.0f} ms (sent {_clock(sent_wall[s])})"
            for s in slow) + " UTC")
    print(f"notify      webhook POSTs received: {len(hooked)} probe alerts, "
          f"{sum(hook.extra.values())} repeats, {hook.other:,} other (background) alerts, "
          f"{hook.malformed} undecodable; {notify_failures} failed delivery "
          f"attempt(s) logged"
          + (f"; EXITED with code {notify_exit} during the run" if notify_exit is not None
             else ""))
    for topic, xs in lag.samples.items():
        if xs:
            print(f"worker lag  {topic:<10} committed-offset lag, {len(xs)} samples: max "
                  f"{max(xs):,} records, last {xs[-1]:,}")
    if worker_metrics:
        print(f"worker      {worker_metrics}")
    cpu = []
    for k in pids:
        if cpu0.get(k) is not None and cpu1.get(k) is not None:
            cpu.append(f"{k} {100 * (cpu1[k] - cpu0[k]) / wall:.0f}%")
    print(f"CPU         % of one core over the probe window: {', '.join(cpu)}")
    if args.keep_logs:
        print(f"logs        {state / 'worker.log'}, {state / 'ingest.log'}, "
              f"{state / 'notify.log'}")
    if tail.extra:
        print(f"WARNING: {len(tail.extra)} probe session(s) alerted more than once: another "
              f"worker consumes otlp_spans on this broker (its alerts may be the ones timed)")
    for r in rejected[:5]:
        print(f"rejected    {r}")
    for s in undelivered[:5]:
        print(f"undelivered {s}" + ("" if s in tail.first else " (no alert either)"))
    return 1 if lost or rejected or undelivered else 0


def _notify_log_failures(state: Path) -> int:
    """How many delivery attempts the notifier logged as failed (retried)."""
    try:
        text = (state / "notify.log").read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "failed (" in line)


def _worker_metrics(port: int) -> str:
    """A few counters of the worker's /metrics (sanity: it saw the traffic)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return ""
    want = {'llmspend_detect_events_total{kind="calls"}': "session-detector calls",
            'llmspend_detect_events_total{kind="alerts"}': "session alerts",
            'llmspend_aggregate_events_total{kind="calls"}': "aggregated calls"}
    out = []
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key in want:
            out.append(f"{want[key]} {float(value):,.0f}")
    return ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())
