"""Debian's Prometheus on a free loopback port, with the project's scrape config and rules.

``prometheus/prometheus.yml`` discovers targets from ``targets/*.json`` beside it, so the
worker and the join app register their /metrics by writing a file there (see
``register_target``), whatever port they got.
"""

from __future__ import annotations

import contextlib
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson

from shadow.stack import procs

READY_TIMEOUT_S = 30.0
CONFIG_DIR = Path(__file__).resolve().parents[2] / "prometheus"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=0.5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(root: Path, port: int | None = None, config_dir: Path = CONFIG_DIR) -> tuple[int, int]:
    """Start Prometheus; returns (pid, port)."""
    exe = procs.require("prometheus")
    (root / "targets").mkdir(parents=True, exist_ok=True)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copyfile(config_dir / name, root / name)
    port = port or procs.free_port()
    log = root / "prometheus.log"
    cmd = [
        exe,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=2d",
    ]
    pid = procs.spawn(cmd, log, cwd=root)
    procs.wait_ready("prometheus", lambda: _ready(f"http://127.0.0.1:{port}"), pid, log,
                     READY_TIMEOUT_S)
    return pid, port


def register_target(root: Path, job: str, address: str, labels: dict[str, str] | None = None
                    ) -> Path:
    """Make Prometheus scrape ``address`` (host:port) under ``job``; returns the target file."""
    targets = root / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    path = targets / f"{job}-{address.replace(':', '_')}.json"
    doc = [{"targets": [address], "labels": {"job": job, **(labels or {})}}]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc))
    tmp.rename(path)  # atomic: Prometheus never reads half a file
    return path


@contextlib.contextmanager
def registered(root: Path | None, job: str, address: str,
               labels: dict[str, str] | None = None) -> Iterator[Path | None]:
    """While the block runs, the local Prometheus (when ``root`` is its directory) scrapes
    ``address``; the target is withdrawn after. A process killed with SIGKILL leaves its file,
    and Prometheus then shows that target as down."""
    if root is None:
        yield None
        return
    path = register_target(root, job, address, labels)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
