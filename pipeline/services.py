"""Background services started by `llmspend up` (receivers, stream workers).

Each service is one `llmspend <command>` process in its own session, with a pid file in
``<state_dir>/run`` and a log in ``<state_dir>/logs``; `up` is idempotent and `down`
stops them with SIGTERM (then SIGKILL after a grace period).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Settings
from pipeline.processes import alive, terminate


class ServiceError(RuntimeError):
    """A service did not start; the message points at its log."""


def _pid_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "run" / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of a running service started by us (checked against its command line)."""
    try:
        pid = int(_pid_path(settings, name).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"pipeline" in cmd and name.split("-")[0].encode() in cmd and alive(pid):
        return pid
    return None


def start(settings: Settings, name: str, args: list[str],
          ready: Callable[[], bool], timeout_s: float = 60.0) -> tuple[int, bool]:
    """Start ``python -m pipeline <args>`` unless running; wait until ``ready()``."""
    pid = running_pid(settings, name)
    if pid is not None:
        return pid, False
    for d in (_pid_path(settings, name).parent, log_path(settings, name).parent):
        d.mkdir(parents=True, exist_ok=True)
    log = open(log_path(settings, name), "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    _pid_path(settings, name).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path(settings, name).read_text(errors="replace").strip()
            last = tail.splitlines()[-1] if tail else "no output"
            raise ServiceError(f"{name} exited during start-up: {last} "
                               f"(log: {log_path(settings, name)})")
        if ready():
            return proc.pid, True
        time.sleep(0.2)
    stop(settings, name)
    raise ServiceError(f"{name} not ready within {timeout_s:.0f}s "
                       f"(log: {log_path(settings, name)})")


def stop(settings: Settings, name: str, grace_s: float = 20.0) -> bool:
    """SIGTERM the service and wait; returns whether it was running."""
    pid = running_pid(settings, name)
    path = _pid_path(settings, name)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    terminate(pid, grace_s)
    path.unlink(missing_ok=True)
    return True
