"""Every command has --help, and our errors end as one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from shadow.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "shadow")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="shadow")
    assert result.exit_code == 0, result.output
    assert "Usage: shadow" in result.output
    cmd: click.Command = main
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    assert cmd.help
    first_line = " ".join(cmd.help.split("\n")[0].split())
    assert first_line in " ".join(result.output.split())


def test_missing_program_gives_one_line_saying_what_to_install(tmp_path: Path) -> None:
    # An empty PATH: java, mvn and redis-server are all missing.
    env = {**os.environ, "PATH": str(tmp_path), "SHADOW_STATE_DIR": str(tmp_path / "state"),
           "SHADOW_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SHADOW_KAFKA_BOOTSTRAP", None)
    proc = subprocess.run([sys.executable, "-m", "shadow.cli", "stack", "up"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert any(line.startswith("error: mvn not found") and "apt-get install -y maven" in line
               for line in lines), proc.stderr


def test_no_stack_running_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("SHADOW_KAFKA_BOOTSTRAP", raising=False)
    result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 1
    assert "run `shadow stack up`, or set SHADOW_KAFKA_BOOTSTRAP" in result.output


def test_a_model_that_cannot_load_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a zip archive")
    result = CliRunner().invoke(main, ["worker", "--candidate", str(bad), "--candidate-id", "x",
                                       "--device", "cpu"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("error: cannot load") and "broken.pt" in line
    assert "not a TorchScript archive" in line and "Traceback" not in result.output


def test_worker_threads_must_be_positive_and_are_explained() -> None:
    result = CliRunner().invoke(main, ["worker", "--candidate", "x", "--candidate-id", "x",
                                       "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
    help_text = CliRunner().invoke(main, ["worker", "--help"]).output
    assert "--threads" in help_text and "intra-op" in help_text


def test_worker_threads_are_set_before_the_model_loads(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a zip archive")
    try:
        torch.set_num_threads(2)
        result = CliRunner().invoke(main, ["worker", "--candidate", str(bad), "--candidate-id",
                                           "x", "--device", "cpu", "--threads", "1"])
        assert result.exit_code == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
