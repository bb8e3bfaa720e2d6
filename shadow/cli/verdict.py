"""``shadow verdict``: PROMOTE, HOLD or ROLLBACK, as an exit status a CI job can gate on."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from shadow.cli.common import EXIT_INPUT, console, fail, kafka, print_json, settings
from shadow.cli.options import json_output
from shadow.exceptions import ShadowstreamError


class _VerdictCommand(click.Command):
    """Exit 0/1/2 are verdicts: a usage or input error exits 3, so that a CI line such as
    ``shadow verdict ... || exit $?`` never reads a typo as HOLD or ROLLBACK."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:
            exc.exit_code = EXIT_INPUT
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.exit_code = EXIT_INPUT
            raise
        except ShadowstreamError as exc:
            fail(str(exc), EXIT_INPUT)


@click.command("verdict", cls=_VerdictCommand)
@click.option("--replay", "replay_json", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A replay's JSON report (`shadow replay --json`).")
@click.option("--live", is_flag=True, help="Judge the closed windows on <prefix>.windows.")
@click.option("--candidate", default=None, help="Which candidate (needed when there are "
                                                "several).")
@click.option("--model", default=None, help="Which model (needed when there are several).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML: min_windows, min_pairs, alpha, interval, "
                                 "since_change, [[metrics]].")
@json_output("Print the verdict as JSON.")
def command(replay_json: Path | None, live: bool, candidate: str | None,
            model: str | None, config_file: Path | None, as_json: bool) -> None:
    """PROMOTE (exit 0), HOLD (1) or ROLLBACK (2), with the reason for each metric.

    A rate (disagreement, candidate errors) by its confidence interval against its limit:
    above fails, below passes, across it holds; the answers' PSI against the live answers by
    the t-interval of its mean; latency against live's (Mann-Whitney U and an effect-size
    bound). The rates and the PSI are judged again since a change for the worse, if the run
    has one; every test at alpha over the number of tests. Critical metrics decide alone. A
    usage or input error (a missing file, a bad config) exits 3, never 1 or 2.

    \b
    Example:
      shadow verdict --replay report.json --candidate v13 || exit $?
    """
    from consumers.verdict import JudgeConfig, judge

    if bool(replay_json) == live:
        raise click.UsageError("give either --replay FILE or --live")
    s = settings()  # a misspelt setting is refused here too, not ignored
    config = JudgeConfig.from_file(config_file) if config_file else JudgeConfig()
    if replay_json:
        from shadow.offline.replay import report_windows

        groups = report_windows(replay_json)
    else:
        from shadow.offline.windows import read_windows

        groups = read_windows(s, kafka(s))
    key = _pick(groups, model, candidate)
    if any(w.get("is_control") for w in groups[key]):
        raise ShadowstreamError(f"{key[1]} is the control of {key[0]} (a second copy of the "
                                "live model): the noise floor the candidates are judged "
                                "against, not a candidate; its numbers are in their verdicts")
    verdict = judge(groups[key], config)
    try:
        if as_json:
            print_json({"model": key[0], "candidate": key[1], **verdict.as_dict()})
        else:
            colour = {"PROMOTE": "green", "HOLD": "yellow",
                      "ROLLBACK": "bold red"}[verdict.decision]
            console.print(Text.assemble((verdict.decision, colour),
                                        f" {key[1]} on {key[0]}: {verdict.reason}"))
            for r in verdict.results:
                console.print(f"  {r.outcome:8} {'critical ' if r.critical else ''}{r.reason}",
                              highlight=False)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped reading (`| head -1`): the decision stands, and is the status.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(verdict.exit_code)


def _pick(groups: dict[tuple[str, str], list[dict[str, Any]]], model: str | None,
          candidate: str | None) -> tuple[str, str]:
    keys = [k for k in groups if (model is None or k[0] == model)
            and (candidate is None or k[1] == candidate)
            # A control is the noise floor: judged only when named.
            and (candidate is not None or not any(w.get("is_control") for w in groups[k]))]
    if not keys:
        raise ShadowstreamError("no windows for that model and candidate"
                                f" (have: {', '.join('/'.join(k) for k in groups) or 'none'})")
    if len(keys) > 1:
        raise ShadowstreamError("several model/candidate pairs: choose with --model and "
                                f"--candidate ({', '.join('/'.join(k) for k in keys)})")
    return keys[0]
