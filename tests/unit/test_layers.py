"""The layering promise (README, "Where things live"), checked on the source (AST) and on a
fresh interpreter: which package may import which.

- ``schemas`` imports no other package of the project;
- ``producers`` (what services embed) imports only ``schemas``;
- ``consumers`` never imports ``shadow`` or ``producers``, and its core (all but
  ``consumers.faust``, the app wiring) never imports Kafka, Faust or Redis clients;
- only ``shadow.cli`` imports click or rich;
- the statistics core, replay and the inference engine load no Kafka, Faust or Redis module
  when imported (replay and the live join share the core on that promise).

Imports inside functions count: a lazy import still ties the layers together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "producers", "consumers", "shadow")
SERVERS = frozenset({"confluent_kafka", "aiokafka", "kafka", "faust", "mode", "redis"})
CONSOLE = frozenset({"click", "rich"})
# Deprecated aliases kept for one release (each a re-export of the module's new home).
ALIASES = frozenset({"producers/traffic.py", "shadow/models.py", "shadow/engine.py"})


def imported(path: Path) -> set[str]:
    """Every module a file imports, dotted, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(root: Path) -> list[str]:
    """One line per import that breaks the layering, as ``file: imports name (rule)``."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in ALIASES:
                continue
            for name in sorted(imported(path)):
                top = name.split(".")[0]
                rule = _rule(rel, package, name, top)
                if rule:
                    found.append(f"{rel}: imports {name} ({rule})")
    return found


def _rule(rel: str, package: str, name: str, top: str) -> str | None:
    if top in CONSOLE and not rel.startswith("shadow/cli/"):
        return "only shadow.cli uses click and rich"
    if package == "schemas" and top in PACKAGES and top != "schemas":
        return "schemas imports no other package of the project"
    if package == "producers" and top in PACKAGES and top not in ("schemas", "producers"):
        return "producers imports only schemas"
    if package == "consumers":
        if top in ("shadow", "producers"):
            return "consumers never imports shadow or producers"
        if top in SERVERS and not rel.startswith("consumers/faust/"):
            return "the core imports no Kafka, Faust or Redis client (consumers.faust does)"
    return None


def test_the_project_keeps_its_layers() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(("where", "line", "rule"), [
    ("consumers/windows_extra.py", "import faust", "the core imports no Kafka"),
    ("consumers/helper.py", "def f():\n    from shadow.settings import Settings\n",
     "consumers never imports shadow"),
    ("schemas/extra.py", "from consumers.compare import compare", "schemas imports no other"),
    ("producers/extra.py", "from shadow import clients", "producers imports only schemas"),
    ("shadow/runtime/extra.py", "import rich.console", "only shadow.cli uses click"),
])
def test_a_wrong_import_is_caught(tmp_path: Path, where: str, line: str, rule: str) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    target = tmp_path / where
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(line + "\n")
    (tmp_path / "consumers" / "faust").mkdir(exist_ok=True)
    (tmp_path / "consumers" / "faust" / "app.py").write_text("import faust\nimport redis\n")
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{where}: imports") and rule in found[0]


def test_core_replay_and_engine_load_no_server_client() -> None:
    """On a fresh interpreter (this one has loaded everything): what importing them loads."""
    code = (
        "import sys\n"
        "import consumers, consumers.join, consumers.merge, consumers.verdict\n"
        "import shadow.offline.replay, shadow.offline.recordfile, shadow.runtime.engine\n"
        f"servers = {sorted(SERVERS | CONSOLE)!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(servers)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def test_moved_modules_keep_their_old_paths_for_one_release() -> None:
    """The documented old paths (a candidate factory, the adapter protocol, the engine) still
    work, each saying where it moved; the package's own names resolve lazily."""
    code = (
        "import warnings\n"
        "import shadow\n"
        "from shadow.runtime.models import load_candidate\n"
        "assert load_candidate('producers.traffic:build_model') is not None\n"
        "from shadow.models import Adapter\n"
        "from shadow.engine import InferenceEngine\n"
        "assert Adapter is shadow.Adapter and InferenceEngine is shadow.InferenceEngine\n"
        "assert callable(shadow.replay) and callable(shadow.load_candidate)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    for old, new in (("producers.traffic", "shadow.sim.traffic"),
                     ("shadow.models", "shadow.runtime.models"),
                     ("shadow.engine", "shadow.runtime.engine")):
        assert f"FutureWarning: {old} moved to {new}" in run.stderr  # shown by default
