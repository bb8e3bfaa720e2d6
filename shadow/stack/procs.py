"""Process plumbing for the local stack: free ports, spawning detached servers, stopping them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shadow.exceptions import MissingToolError, ServerStartError

INSTALL_HINTS = {
    "java": "apt-get install -y openjdk-17-jre-headless",
    "mvn": "apt-get install -y maven",
    "redis-server": "apt-get install -y redis-server",
    "prometheus": "apt-get install -y prometheus",
    "promtool": "apt-get install -y prometheus",
}


def require(tool: str) -> str:
    """Absolute path of ``tool``, or MissingToolError saying how to install it."""
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(tool, INSTALL_HINTS.get(tool, f"install {tool}"))
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn(cmd: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start a server in its own session (it outlives this process); output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    _children[proc.pid] = proc
    return proc.pid


# Popen objects of servers this process started, so that they are reaped (not left as zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when it is gone).

    A pid together with its start time names one process for good: a recycled pid has a
    different start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rpartition(")")[2].split()[19])


def alive(pid: int, started: int | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, started at ``started``."""
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def stop(pid: int, started: int | None, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group, then SIGKILL it after ``grace_s``."""
    if not alive(pid, started):
        _reap(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def wait_ready(
    server: str,
    ready: Callable[[], bool],
    pid: int,
    log: Path,
    timeout_s: float,
) -> None:
    """Poll ``ready`` until true; fail early with the log's tail if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive(pid):
            raise ServerStartError(server, "the process exited", log, log_tail(log))
        time.sleep(0.1)
    stop(pid, None)
    raise ServerStartError(server, f"not ready after {timeout_s:.0f}s", log, log_tail(log))


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
