"""A real local Apache Kafka (single KRaft node, no Docker), run from Maven-resolved jars.

``up`` resolves the broker jars once with ``mvn`` (``infra/kafka/pom.xml``) into a cache
shared by every checkout, writes its own ``server.properties`` (the jars ship none),
formats KRaft storage the first time, starts ``kafka.Kafka`` in its own session and waits
until it answers a metadata request. ``down`` sends SIGTERM and waits for a clean
shutdown. Both are idempotent. Nothing here runs when ``LLMSPEND_KAFKA_BOOTSTRAP`` names
an existing cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PROJECT_ROOT, Settings
from pipeline.processes import alive, terminate

POM = PROJECT_ROOT / "infra" / "kafka" / "pom.xml"
LOG4J_CONFIG = PROJECT_ROOT / "infra" / "kafka" / "log4j2.properties"
_COMPLETE_MARKER = ".complete"
NODE_ID = 1


class BrokerError(RuntimeError):
    """An expected failure (no Java, port taken, mvn failed...): one clear line for the CLI."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    managed: bool
    log_file: Path | None
    reachable: bool


# ---------------------------------------------------------------- paths and files


def jar_dir(settings: Settings) -> Path:
    return settings.kafka.jar_cache / settings.kafka.version


def pid_file(settings: Settings) -> Path:
    return settings.broker_dir / "broker.pid"


def log_dir(settings: Settings) -> Path:
    return settings.broker_dir / "logs"


def server_properties(settings: Settings) -> str:
    """The broker's configuration: one combined broker+controller node on loopback."""
    k = settings.kafka
    data = (settings.broker_dir / "data").resolve()
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{k.controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{k.port},CONTROLLER://127.0.0.1:{k.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{k.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "1",
        # A single node: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Every topic is declared in infra/topics.toml; a typo must fail, not create one.
        "auto.create.topics.enable": "false",
        # Large OTLP batches: the same limit as our producers and topics.
        "message.max.bytes": str(k.max_message_bytes),
        "replica.fetch.max.bytes": str(k.max_message_bytes),
        "socket.request.max.bytes": str(max(k.max_message_bytes * 2, 104857600)),
        # A laptop, not a data centre.
        "log.retention.hours": str(k.log_retention_hours),
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.check.interval.ms": "60000",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    header = "# Written by llmspend (pipeline/broker.py) on every `up`; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in lines.items())


# ---------------------------------------------------------------- processes


def _read_pid(settings: Settings) -> int | None:
    try:
        return int(pid_file(settings).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_broker(pid: int, settings: Settings) -> bool:
    """A live process whose command line is our kafka.Kafka with our properties file."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    props = str((settings.broker_dir / "server.properties").resolve()).encode()
    return b"kafka.Kafka" in cmdline and props in cmdline


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running_pid(settings: Settings) -> int | None:
    pid = _read_pid(settings)
    if pid is not None and _is_our_broker(pid, settings):
        return pid
    return None


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise BrokerError(f"{what}: '{cmd[0]}' not found; install it or set its path "
                          f"(LLMSPEND_KAFKA_JAVA / LLMSPEND_KAFKA_MVN)") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def resolve_jars(settings: Settings) -> Path:
    """Resolve the broker jars with mvn once; later calls reuse the cache offline."""
    target = jar_dir(settings)
    if (target / _COMPLETE_MARKER).exists():
        return target
    if shutil.which(settings.kafka.mvn) is None:
        raise BrokerError(f"'{settings.kafka.mvn}' (Maven) not found: it resolves the Kafka "
                          f"broker jars once; install Maven or set LLMSPEND_KAFKA_MVN")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    _run([settings.kafka.mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
          f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
          f"-Dkafka.version={settings.kafka.version}"],
         f"resolving Apache Kafka {settings.kafka.version} with mvn")
    if not any(staging.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"mvn resolved no kafka_2.13 jar into {staging}")
    (staging / _COMPLETE_MARKER).write_text(settings.kafka.version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-resolved cache is never taken as complete
    return target


def _java_cmd(settings: Settings, main: str, *args: str) -> list[str]:
    return [settings.kafka.java, f"-Xmx{settings.kafka.heap}", "-Xss1m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={log_dir(settings).resolve()}",
            "-cp", f"{jar_dir(settings)}/*", main, *args]


def _ensure_formatted(settings: Settings, props: Path) -> None:
    data = settings.broker_dir / "data"
    if (data / "meta.properties").exists():
        return
    cluster_id = _cluster_id()
    _run(_java_cmd(settings, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                   "-c", str(props.resolve()), "--ignore-formatted"),
         "formatting KRaft storage")


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, never
    starting with '-' (Kafka's Uuid.randomUuid rule: kafka-storage's argument parser
    would read such an id as an option, which failed one format in 64)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def wait_reachable(bootstrap: str, timeout_s: float, settings: Settings,
                   pid: int | None = None) -> None:
    """Block until the broker answers a metadata request, or raise BrokerError."""
    from pipeline.clients import admin_client

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise BrokerError("the broker exited during start-up; see "
                              f"{log_dir(settings) / 'server.log'} and "
                              f"{settings.broker_dir / 'stdout.log'}")
        try:
            admin = admin_client(settings, request_timeout_ms=5000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.5)
    raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout_s:.0f}s ({last})")


def start(settings: Settings) -> tuple[int, bool]:
    """Start the local broker if it is not running; returns (pid, started_now)."""
    if not settings.kafka.managed:
        raise BrokerError("LLMSPEND_KAFKA_BOOTSTRAP is set: llmspend does not manage that "
                          "broker")
    pid = running_pid(settings)
    if pid is not None:
        wait_reachable(settings.kafka.bootstrap_servers, settings.kafka.start_timeout_s,
                       settings, pid)
        return pid, False
    k = settings.kafka
    for name, port in (("kafka.port", k.port), ("kafka.controller_port", k.controller_port)):
        if not _port_free(port):
            raise BrokerError(f"port {port} ({name}) is taken by another process, not "
                              f"llmspend's broker; stop it or set "
                              f"LLMSPEND_{name.upper().replace('.', '_')}")
    if shutil.which(k.java) is None:
        raise BrokerError(f"'{k.java}' not found: the Kafka broker needs Java 17+; install "
                          f"a JDK or set LLMSPEND_KAFKA_JAVA")
    resolve_jars(settings)
    settings.broker_dir.mkdir(parents=True, exist_ok=True)
    log_dir(settings).mkdir(parents=True, exist_ok=True)
    props = settings.broker_dir / "server.properties"
    props.write_text(server_properties(settings))
    _ensure_formatted(settings, props)
    stdout = open(settings.broker_dir / "stdout.log", "ab")  # noqa: SIM115 - child owns it
    proc = subprocess.Popen(_java_cmd(settings, "kafka.Kafka", str(props.resolve())),
                            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=settings.broker_dir)
    stdout.close()
    pid_file(settings).write_text(f"{proc.pid}\n")
    try:
        wait_reachable(k.bootstrap_servers, k.start_timeout_s, settings, proc.pid)
    except BrokerError:
        stop(settings)
        raise
    return proc.pid, True


def stop(settings: Settings, timeout_s: float = 60.0) -> bool:
    """SIGTERM the local broker and wait for it; returns whether one was running."""
    pid = running_pid(settings)
    if pid is None:
        pid_file(settings).unlink(missing_ok=True)
        return False
    terminate(pid, timeout_s)
    pid_file(settings).unlink(missing_ok=True)
    return True


def status(settings: Settings) -> BrokerStatus:
    pid = running_pid(settings) if settings.kafka.managed else None
    reachable = True
    try:
        wait_reachable(settings.kafka.bootstrap_servers, 3.0, settings)
    except BrokerError:
        reachable = False
    return BrokerStatus(
        running=pid is not None or (not settings.kafka.managed and reachable),
        pid=pid,
        bootstrap=settings.kafka.bootstrap_servers,
        managed=settings.kafka.managed,
        log_file=(log_dir(settings) / "server.log") if settings.kafka.managed else None,
        reachable=reachable,
    )
