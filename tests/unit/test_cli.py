"""Every command has --help, and our errors end as one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
         timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    return subprocess.run([sys.executable, "-m", "shadow.cli", *args],
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("path", [p for p in _commands(main) if p],
                         ids=lambda p: " ".join(p))
def test_every_help_shows_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="shadow")
    assert "Example" in result.output and "shadow " in result.output.split("Example")[1]


def _report(tmp_path: Path) -> Path:
    from shadow.sim.traffic import TrafficSpec, build_model
    from tests.unit.test_replay import candidate, recorded, run

    result = run(recorded(900, TrafficSpec(seed=2), build_model(0)), candidate("c"))
    path = tmp_path / "report.json"
    path.write_bytes(result.json_bytes())
    return path


def test_verdict_keeps_exit_3_for_usage_and_input_errors(tmp_path: Path) -> None:
    # Exit 1 (HOLD) and 2 (ROLLBACK) are verdicts: a typo must not read as one.
    report = _report(tmp_path)
    ok = CliRunner().invoke(main, ["verdict", "--replay", str(report), "--candidate", "c"])
    assert ok.exit_code in (0, 1, 2) and "c on fraud-scorer" in ok.output
    bad_config = tmp_path / "verdict.toml"
    bad_config.write_text("min_window = 5\n")
    not_a_report = tmp_path / "x.json"
    not_a_report.write_text("{}")
    cases = [
        (["verdict", "--replay", str(tmp_path / "missing.json")], "missing.json"),
        (["verdict"], "give either --replay FILE or --live"),
        (["verdict", "--replay", str(report), "--live"], "give either"),
        (["verdict", "--replay", str(report), "--frobnicate"], "No such option"),
        (["verdict", "--replay", str(report), "--config", str(bad_config)],
         "unknown key 'min_window' (did you mean 'min_windows'?)"),
        (["verdict", "--replay", str(not_a_report)], "not a replay report"),
        (["verdict", "--replay", str(report), "--candidate", "nope"], "no windows for that"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 3, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert "exits 3" in CliRunner().invoke(main, ["verdict", "--help"]).output
    # A misspelt setting is refused by the verdict too, not ignored.
    typo = CliRunner().invoke(main, ["verdict", "--replay", str(report)],
                              env={"SHADOW_TOPIC_PREFX": "x"})
    assert typo.exit_code == 3 and "did you mean 'SHADOW_TOPIC_PREFIX'" in typo.output


def test_a_misspelt_setting_stops_every_command_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "shadow.toml").write_text('topic_prefx = "team-a"\n')
    run = _cli("topics", "list", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'shadow.toml'}: unknown key 'topic_prefx' (did you mean "
        "'topic_prefix'?)"]


UNREACHABLE = {"SHADOW_KAFKA_BOOTSTRAP": "127.0.0.1:1", "SHADOW_KAFKA_TIMEOUT_S": "3",
               "SHADOW_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize("args", [
    ("topics", "create"), ("topics", "list"),
    ("record", "--topic", "t", "--from", "beginning", "--to", "end", "-o", "{tmp}/r.zst"),
    ("profile", "build", "--from", "beginning", "--to", "end", "-o", "{tmp}/p.json"),
    ("replay", "--topic", "t", "--from", "beginning", "--to", "end", "--candidate",
     "shadow.sim.traffic:build_model"),
    ("verdict", "--live"),
    ("worker", "--candidate", "shadow.sim.traffic:build_model", "--candidate-id", "c"),
    ("join", "--web-port", "0"),
    ("traffic", "--rate", "10", "--duration", "1"),
], ids=lambda a: " ".join(a[:2]))
def test_kafka_unreachable_is_one_line_naming_it_within_the_timeout(
        args: tuple[str, ...], tmp_path: Path) -> None:
    args = tuple(a.format(tmp=tmp_path) for a in args)
    if args[0] == "join":
        from shadow.stack.procs import free_port

        args = ("join", "--web-port", str(free_port()))
    t0 = time.monotonic()
    run = _cli(*args, env=UNREACHABLE, cwd=tmp_path)
    took = time.monotonic() - t0
    lines = run.stderr.strip().splitlines()
    assert run.returncode == (3 if args[0] == "verdict" else 1), run.stderr
    assert lines[-1].startswith("error: cannot reach Kafka at 127.0.0.1:1 within 3 s"), lines
    assert len(lines) <= 2, run.stderr  # the error, and at most the command's own banner
    assert "Traceback" not in run.stderr and "Connection refused" not in run.stdout
    assert took < 3 + 15, took  # the timeout, plus starting Python and torch


def test_the_default_kafka_timeout_is_15_seconds(tmp_path: Path) -> None:
    t0 = time.monotonic()
    run = _cli("topics", "list", env={"SHADOW_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, cwd=tmp_path)
    assert run.returncode == 1 and "within 15 s" in run.stderr
    assert 14 < time.monotonic() - t0 < 30
    verbose = _cli("-v", "topics", "list", env=UNREACHABLE, cwd=tmp_path)
    assert "Connection refused" in verbose.stderr  # librdkafka's own lines, with -v only


def test_ranges_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    for args, message in [
        (("record", "--topic", "t", "--from", "@20", "--to", "@10", "-o", "r.zst"),
         "error: --to (1970-01-01T00:00:00.010Z) must be after --from "
         "(1970-01-01T00:00:00.020Z)"),
        (("record", "--topic", "t", "--from", "2026-11-22T10:00:00", "--to", "end", "-o",
          "r.zst"), "error: '2026-11-22T10:00:00' has no time zone: add Z for UTC"),
        (("profile", "build", "--from", "500", "--to", "100", "-o", "p.json"),
         "error: --to (offset 100) must be after --from (offset 500)"),
        (("replay", "--topic", "t", "--from", "end", "--to", "beginning", "--candidate",
          "shadow.sim.traffic:build_model"), "error: --from end --to beginning is empty"),
    ]:
        run = _cli(*args, env=UNREACHABLE, cwd=tmp_path)
        assert run.returncode == 1 and run.stderr.strip().startswith(message), run.stderr
        assert not (tmp_path / "r.zst").exists()


def test_replay_output_piped_is_full_width_without_escapes(tmp_path: Path) -> None:
    from shadow.sim.traffic import TrafficSpec, build_model
    from tests.unit.test_recording import _write
    from tests.unit.test_replay import recorded

    path = tmp_path / "rec.jsonl.zst"
    _write(path, recorded(600, TrafficSpec(seed=1), build_model(0)))
    run = _cli("replay", "--file", str(path), "--candidate",
               "a-long-candidate-name=shadow.sim.traffic:build_model",
               "--candidate", "broken=tests.models_for_tests:broken", "--device", "cpu",
               "--window-s", "5", cwd=tmp_path, env={"COLUMNS": "80"})
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout + run.stderr and "…" not in run.stdout
    assert "a-long-candidate-name" in run.stdout and "fraud-scorer" in run.stdout
    assert "dead-lettered" in run.stdout and "engine ms/req" in run.stdout
    assert "broken: 600 requests answered with an error: 600 x RuntimeError" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) > 80


def test_replay_takes_the_workers_model_options_and_bad_files_are_one_line(
        tmp_path: Path) -> None:
    import torch

    from shadow.sim.traffic import TrafficSpec, build_model
    from tests.unit.test_recording import _write
    from tests.unit.test_replay import recorded

    path = tmp_path / "rec.jsonl.zst"
    _write(path, recorded(300, TrafficSpec(seed=1), build_model(0)))
    weights = tmp_path / "seed1.pt"
    torch.save(build_model(1).state_dict(), weights)
    out = {}
    for name, args in (("factory", ["--candidate", "v=shadow.sim.traffic:build_model",
                                    "--weights", f"v={weights}"]),
                       ("reference", ["--candidate", "v=tests.models_for_tests:fraud_seed1"])):
        run = _cli("replay", "--file", str(path), *args, "--device", "cpu", "--json",
                   str(tmp_path / f"{name}.json"), cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        out[name] = (tmp_path / f"{name}.json").read_bytes()
    assert out["factory"] == out["reference"]  # the weights were loaded, for candidate v
    bad = tmp_path / "tol.toml"
    bad.write_text("[default]\nrtol = -1\n")
    for command in (["replay", "--file", str(path), "--candidate",
                     "shadow.sim.traffic:build_model"], ["join"]):
        run = _cli(*command, "--tolerances", str(bad), env=UNREACHABLE, cwd=tmp_path)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines() == [
            f"error: {bad}: [default] rtol: must be a non-negative number, got -1"]


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    for args, start in [
        (("worker", "--candidate", "x", "--candidate-id", "y", "--card", "nope.toml"),
         "error: Invalid value for '--card': 'nope.toml': no such file (see `shadow worker "
         "--help`)"),
        (("replay", "--frobnicate"), "error: No such option: --frobnicate"),
        (("worker", "--candidate", "x", "--candidate-id", "bad id!"),
         "error: Invalid value for '--candidate-id': 'bad id!'"),
        (("topics",), "error: `shadow topics` needs a command: create, delete, list"),
        (("topics", "creat"), "error: No such command 'creat'; did you mean 'create'?"),
        (("worker", "--gpu"), "error: No such option: --gpu; did you mean --group?"),
        # Said before an hour of replay, not after it (with a traceback).
        (("replay", "--file", __file__, "--candidate", "x", "--json", "/nonexistent/r.json"),
         "error: Invalid value for '--json': '/nonexistent/r.json': the folder '/nonexistent' "
         "does not exist"),
        (("record", "--topic", "t", "--from", "beginning", "--to", "end", "-o",
          "/nonexistent/x.zst"), "error: Invalid value for '-o' / '--output': "
                                  "'/nonexistent/x.zst': the folder '/nonexistent' does not exist"),
        (("replay", "--file", __file__, "--candidate", "x", "--jobs", "0"),
         "error: Invalid value for '--jobs': 0 is not in the range x>=1."),
    ]:
        run = _cli(*args, cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.strip().splitlines()[0].startswith(start), \
            run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_topic_option_takes_a_role_of_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from shadow.cli.options import pipeline_topic

    monkeypatch.setenv("SHADOW_TOPIC_PREFIX", "walk7")
    assert pipeline_topic(None, None, "requests") == "walk7.requests"  # type: ignore[arg-type]
    assert pipeline_topic(None, None, "deadletter") == "walk7.deadletter"  # type: ignore[arg-type]
    # Any other name is a topic's own, even one that looks like another prefix's.
    assert pipeline_topic(None, None, "shadow.requests") == "shadow.requests"  # type: ignore[arg-type]
    assert pipeline_topic(None, None, None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "words"), [
    (["--control", "shadow.sim.chat:build_chat_control"],
     "a --control is judged against nothing alone"),
    (["--candidate", "c=shadow.sim.chat:build_chat", "--control",
      "c=shadow.sim.chat:build_chat_control"], "candidate and control ids must differ"),
    (["--candidate", "shadow.sim.chat:build_chat", "--verdict-config", "pyproject.toml"],
     "--verdict-config goes with --report"),
])
def test_replay_control_mistakes_are_one_line(tmp_path: Path, args: list[str],
                                              words: str) -> None:
    recording = tmp_path / "r.jsonl.zst"
    recording.write_bytes(b"")
    result = CliRunner().invoke(main, ["replay", "--file", str(recording), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


def test_a_bad_verdict_config_for_the_report_is_refused_before_the_work(tmp_path: Path) -> None:
    recording, bad = tmp_path / "r.jsonl.zst", tmp_path / "v.toml"
    recording.write_bytes(b"")
    bad.write_text("[[metrics]]\nmetric = \"disagreement\"\nlimit = 0.05\n")
    result = CliRunner().invoke(main, ["replay", "--file", str(recording), "--candidate",
                                       "shadow.sim.chat:build_chat", "--report",
                                       str(tmp_path / "r.html"), "--verdict-config", str(bad)])
    assert result.exit_code != 0 and "disagreement_rate" in result.output
    assert not (tmp_path / "r.html").exists()


def test_worker_help_says_what_a_control_is() -> None:
    text = CliRunner().invoke(main, ["worker", "--help"]).output
    assert "--control" in text and "noise floor" in text


def test_a_reader_that_stops_early_does_not_change_the_verdict(tmp_path: Path) -> None:
    """`shadow verdict ... | head -1` in CI: the pipe's status is still the decision."""
    import itertools

    from shadow.sim import chat
    from tests.unit.test_generative import _recorded, _replay

    rows = [(p.request_id, {"message": p.message}, p.segment)
            for p in itertools.islice(chat.prompts(seed=4), 4000)]
    report = tmp_path / "r.json"
    report.write_bytes(_replay(_recorded("support-chat", "shadow.sim.chat:build_chat", rows),
                               chat.TOLERANCES, "shadow.sim.chat", {"c": "build_chat_retrained"},
                               "build_chat_control").json_bytes())
    alone = _cli("verdict", "--replay", str(report), "--candidate", "c")
    assert alone.returncode == 2, alone.stdout  # ROLLBACK: neither an error nor HOLD
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")},
           "PYTHONPATH": str(REPO)}
    for as_json in ([], ["--json"]):
        # The reading end is closed before the verdict writes a byte: every write fails.
        proc = subprocess.Popen([sys.executable, "-m", "shadow.cli", "verdict", "--replay",
                                 str(report), "--candidate", "c", *as_json],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=REPO)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(120) == alone.returncode, err
        assert "Traceback" not in err


def test_the_control_is_not_judged_and_only_one_is_taken(tmp_path: Path) -> None:
    import itertools

    from shadow.sim import chat
    from tests.unit.test_generative import _recorded, _replay

    rows = [(p.request_id, {"message": p.message}, p.segment)
            for p in itertools.islice(chat.prompts(seed=4), 600)]
    result = _replay(_recorded("support-chat", "shadow.sim.chat:build_chat", rows),
                     chat.TOLERANCES, "shadow.sim.chat", {"v2": "build_chat_retrained"},
                     "build_chat_control")
    report = tmp_path / "r.json"
    report.write_bytes(result.json_bytes())
    judged = CliRunner().invoke(main, ["verdict", "--replay", str(report), "--candidate",
                                       "control"])
    assert judged.exit_code == 3 and "is the control of support-chat" in judged.output
    # Without --candidate the control is left out: v2 is the only candidate.
    assert "v2 on support-chat" in CliRunner().invoke(
        main, ["verdict", "--replay", str(report)]).output
    from shadow.cli.common import console
    from shadow.cli.views import replay_table

    with console.capture() as captured:
        console.print(replay_table(result))
    assert "control (control)" in captured.get() and "excess over" in captured.get()
    recording = tmp_path / "r.jsonl.zst"
    recording.write_bytes(b"")
    two = CliRunner().invoke(main, ["replay", "--file", str(recording), "--candidate",
                                    "shadow.sim.chat:build_chat", "--control", "a=x:y",
                                    "--control", "b=x:z"])
    assert two.exit_code == 2 and "one control is enough" in two.output
