"""The docs are executable: every shell command and Python snippet of README.md and docs/*.md
runs against the test stack, in order, as a new user would type them, so a doc that stops
working fails CI.

A block may be preceded by an HTML comment (invisible on GitHub) that says how it runs:

- ``<!-- docs-test: background -->``: a long-running command (a worker, the join): started,
  it must still run a few seconds later and until the end of the file, then stop with exit 0
  on SIGTERM;
- ``<!-- docs-test: file NAME -->``: a TOML block is written to NAME (a card, rules);
- ``<!-- docs-test: exit N -->``: the block must exit N (a verdict's exit status);
- ``<!-- docs-test: skip: REASON -->``: not run; REASON must be one of SKIP_REASONS.

Each file runs in a fresh working directory on a fresh topic prefix (SHADOW_TOPIC_PREFIX),
never on a cluster's real ``shadow.*`` topics: the docs' literal topic names
(``shadow.requests``) are read as that prefix's. Shell blocks share exported variables; the
prefix's topics are deleted at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from shadow.settings import Settings
from shadow.stack import Endpoints

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_REASONS = ("needs a real cluster", "needs a GPU", "the set-up commands themselves")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
_RUNNABLE = {"sh", "bash", "python"}
_DEFAULT_TOPICS = re.compile(r"\bshadow\.(requests|outputs|pairs|windows|deadletter)\b")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    marker: str


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, dedented, with the marker before each."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    marker, i = "", 0
    while i < len(lines):
        stripped = lines[i].strip()
        found = _MARKER.fullmatch(stripped)
        if found:
            marker = found.group(1)
        elif stripped.startswith("```"):
            indent = len(lines[i]) - len(lines[i].lstrip())
            lang, start, body = stripped[3:].strip(), i + 1, []
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i][indent:] if not lines[i][:indent].strip() else lines[i])
                i += 1
            out.append(Block(lang, "\n".join(body) + "\n", start, marker))
            marker = ""
        elif stripped:
            marker = ""  # a marker belongs to the block right after it
        i += 1
    return out


def test_every_snippet_is_run_or_skipped_for_a_stated_reason() -> None:
    """Pure check of the docs themselves: nothing runnable is left out silently."""
    seen = 0
    for path in DOCS:
        for b in blocks(path):
            where = f"{path.name}:{b.line}"
            if b.marker.startswith("skip:"):
                reason = b.marker.removeprefix("skip:").strip()
                assert reason.startswith(SKIP_REASONS), f"{where}: skipped for {reason!r}"
            elif b.lang in ("toml", "json"):
                assert b.marker.startswith("file "), f"{where}: a {b.lang} block needs a file"
            elif b.lang:
                assert b.lang in _RUNNABLE, f"{where}: unknown block language {b.lang!r}"
                assert b.marker in ("", "background") or b.marker.startswith("exit "), where
            seen += b.lang in _RUNNABLE and not b.marker.startswith("skip:")
    assert seen >= 20


def _env(settings: Settings, stack: Endpoints, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    return {**env, "SHADOW_TOPIC_PREFIX": prefix, "SHADOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "SHADOW_REDIS_URL": stack.redis_url, "SHADOW_STATE_DIR": str(settings.state_dir),
            "PYTHONPATH": str(REPO), "COLUMNS": "120",
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}


class _Session:
    """One doc file's run: its directory, its shell state, its background processes."""

    def __init__(self, doc: Path, workdir: Path, env: dict[str, str]) -> None:
        self.doc, self.workdir, self.env = doc, workdir, env
        self.prefix = env["SHADOW_TOPIC_PREFIX"]
        self.background: list[tuple[Block, subprocess.Popen, Path]] = []
        self.state = workdir / ".exports.sh"

    def where(self, b: Block) -> str:
        return f"{self.doc.relative_to(REPO)}:{b.line}"

    def run(self, b: Block, n: int) -> None:
        b = Block(b.lang, _DEFAULT_TOPICS.sub(rf"{self.prefix}.\1", b.text), b.line, b.marker)
        if b.marker.startswith("file "):
            (self.workdir / b.marker.removeprefix("file ").strip()).write_text(b.text)
            return
        if b.marker.startswith("skip:") or b.lang not in _RUNNABLE:
            return
        log = self.workdir / f"block{n}.log"
        if b.marker == "background":
            self._start(b, log)
            return
        want = int(b.marker.removeprefix("exit ")) if b.marker.startswith("exit ") else 0
        if b.lang == "python":
            script = self.workdir / f"block{n}.py"
            script.write_text(b.text)
            cmd = [sys.executable, str(script)]
        else:
            script = self.workdir / f"block{n}.sh"
            script.write_text(f"[ -f {self.state} ] && source {self.state}\n{b.text}\n"
                              f"export -p > {self.state}\n")
            cmd = ["bash", "-e", "-o", "pipefail", str(script)]
        with log.open("wb") as out:
            rc = subprocess.run(cmd, cwd=self.workdir, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=400).returncode
        text = log.read_text(errors="replace")
        assert rc == want, f"{self.where(b)} exited {rc}, the doc says {want}:\n{b.text}\n" \
                           f"--- output ---\n{text[-4000:]}"
        assert "Traceback" not in text, f"{self.where(b)} printed a traceback:\n{text[-4000:]}"

    def _start(self, b: Block, log: Path) -> None:
        script = self.workdir / f"{log.stem}.sh"
        script.write_text(f"[ -f {self.state} ] && source {self.state}\nexec {b.text.strip()}\n")
        proc = subprocess.Popen(["bash", str(script)], cwd=self.workdir, env=self.env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.background.append((b, proc, log))
        time.sleep(8)  # started, and still running: not a usage or configuration error
        assert proc.poll() is None, f"{self.where(b)} stopped ({proc.returncode}):\n" \
                                    f"{log.read_text(errors='replace')[-4000:]}"

    def kill(self) -> None:
        for _, proc, _ in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop(self) -> None:
        problems = []
        for b, proc, log in self.background:
            if proc.poll() is not None:
                problems.append(f"{self.where(b)} died ({proc.returncode}):\n"
                                f"{log.read_text(errors='replace')[-3000:]}")
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait(10)
            text = log.read_text(errors="replace")
            if rc != 0 or "Traceback" in text:
                problems.append(f"{self.where(b)} exited {rc} on SIGTERM:\n{text[-3000:]}")
        assert not problems, "\n".join(problems)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_the_docs_run_as_written(doc: Path, settings: Settings, stack: Endpoints,
                                 tmp_path: Path) -> None:
    env = _env(settings, stack, f"docs-{uuid.uuid4().hex[:8]}")
    session = _Session(doc, tmp_path, env)
    try:
        for n, b in enumerate(blocks(doc)):
            session.run(b, n)
    except BaseException:
        session.kill()
        raise
    session.stop()
    clean = subprocess.run([sys.executable, "-m", "shadow.cli", "topics", "delete", "--yes"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
