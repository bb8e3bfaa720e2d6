"""Debian's redis-server on a free loopback port. Append-only file on (fsync every second):
alerts and their states outlive a restart of Redis."""

from __future__ import annotations

from pathlib import Path

import redis

from shadow.stack import procs

READY_TIMEOUT_S = 20.0


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start(root: Path, port: int | None = None,
          acl_user: tuple[str, str] | None = None) -> tuple[int, int]:
    """Start redis-server; returns (pid, port). With ``acl_user`` (name, password) the
    default user is switched off: only that user, with its password, gets in."""
    exe = procs.require("redis-server")
    root.mkdir(parents=True, exist_ok=True)
    port = port or procs.free_port()
    log = root / "redis.log"
    conf = root / "redis.conf"
    conf.touch(mode=0o600)  # the ACL's password is in it, not on the command line
    lines = [] if acl_user is None else [
        "user default off", f"user {acl_user[0]} on >{acl_user[1]} ~* &* +@all"]
    conf.write_text("".join(line + "\n" for line in lines))
    cmd = [
        exe, str(conf), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root),
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
        "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(log),
    ]
    pid = procs.spawn(cmd, root / "stdout.log", cwd=root)
    auth = "" if acl_user is None else f"{acl_user[0]}:{acl_user[1]}@"
    url = f"redis://{auth}127.0.0.1:{port}/0"
    procs.wait_ready("redis", lambda: _pings(url), pid, log, READY_TIMEOUT_S)
    return pid, port
