"""Options that several commands take, each defined once, and what turns them into objects.

A command lists the shared options it takes as decorators; their defaults come from the
configuration objects they fill (``JoinConfig``, ``InferenceEngine``), never restated here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

POSITIONS = ("beginning, end, an offset (1234), epoch ms (@1763798400000) or an ISO time "
             "with a zone (2026-11-22T10:00:00Z)")


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


def json_output(help: str = "Print the result as JSON (for scripts and CI).") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def pipeline_topic(_ctx: click.Context, _param: click.Parameter, value: str | None
                   ) -> str | None:
    """``--topic``: a topic's name, or a role of the pipeline (``requests``, ``outputs``,
    ``pairs``, ``windows``, ``deadletter``) for that topic of SHADOW_TOPIC_PREFIX."""
    from schemas.topics import ROLES
    from shadow.cli.common import settings

    if value in ROLES:
        return settings().topic(value)
    return value


def output_file(_ctx: click.Context, param: click.Parameter, value: Path | None
                ) -> Path | None:
    """A file to write: its folder must exist, said before the work rather than after it
    (a replay of an hour would be lost to a typo in ``--json``)."""
    if value is None:
        return None
    folder = value.parent
    if not folder.is_dir():
        raise click.BadParameter(f"{str(value)!r}: the folder {str(folder)!r} does not exist",
                                 param=param)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"{str(value)!r}: the folder {str(folder)!r} is not writable",
                                 param=param)
    return value


TOPIC_HELP = ("a topic, or a role of the pipeline (requests, outputs, pairs, windows, "
              "deadletter: that topic of SHADOW_TOPIC_PREFIX)")


def rules() -> Callable[[F], F]:
    """``--rules``: the alert rules the join evaluates, and replay with it."""
    return click.option("--rules", "rules_file", type=click.Path(dir_okay=False,
                                                                   path_type=Path),
                        default=None, help="TOML file of alert rules (default: the shipped "
                                           "rules).")


def rule_set(rules_file: Path | None) -> Any:
    """The RuleSet of ``--rules`` (the shipped rules without it); a bad file is one
    ConfigError."""
    from consumers.rules import RuleSet

    return RuleSet.from_file(rules_file) if rules_file else RuleSet()


def time_range(required: bool = True) -> Callable[[F], F]:
    """``--from`` and ``--to``: the same positions and messages for every command."""
    return _stack(
        click.option("--from", "start", required=required, metavar="POS",
                     help=f"Start of the range: {POSITIONS}."),
        click.option("--to", "end", required=required, metavar="POS",
                     help="End of the range, excluded: same forms as --from ('end': the end "
                          "when the command starts)."),
    )


_FILE = click.Path(dir_okay=False, path_type=Path)


def model_files() -> Callable[[F], F]:
    """How a candidate is loaded besides its model: ``[ID=]FILE`` names the candidate it is
    for when a command takes several (replay); a worker has one."""
    return _stack(
        click.option("--weights", multiple=True, metavar="[ID=]FILE",
                     help="State dict for a factory: .pt (loaded with weights_only=True) or "
                          ".safetensors."),
        click.option("--card", multiple=True, metavar="[ID=]FILE",
                     help="Model card (TOML or JSON): features in, output kind out. Default: "
                          "MODEL.card.toml, or MODEL_CARD beside the factory."),
        click.option("--adapter", multiple=True, metavar="[ID=]package.module:name",
                     help="Custom pre/post-processing (shadow.runtime.models.Adapter) instead of a "
                          "card."),
    )


def engine(max_batch: int) -> Callable[[F], F]:
    """Where and how the model runs. ``max_batch`` is the command's own default (a worker
    trades it against latency, replay has no latency to keep)."""
    return _stack(
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu or cuda[:N]."),
        click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
                     show_default=True, help="Precision of the model's weights and inputs."),
        click.option("--max-batch", type=click.IntRange(1, 65536), default=max_batch,
                     show_default=True, help="Most requests the model sees at once."),
    )


def windows() -> Callable[[F], F]:
    """What the join measures, shared by ``shadow join`` and ``shadow replay`` so that
    offline numbers are computed exactly as live ones."""
    from consumers.join import JoinConfig

    d = JoinConfig()
    return _stack(
        click.option("--window-s", type=click.FloatRange(min=0.001), default=d.window_ms / 1000,
                     show_default=True, help="Size of the tumbling event-time windows."),
        click.option("--grace-s", type=click.FloatRange(min=0), default=d.grace_ms / 1000,
                     show_default=True,
                     help="Event time a window waits after its end for late answers (the TTL "
                          "of an unmatched side)."),
        click.option("--reference-size", type=click.IntRange(min=10),
                     default=d.reference_size, show_default=True,
                     help="Requests per model that make the drift reference."),
        click.option("--profile", "profile_file", type=_FILE, default=None,
                     help="Drift reference from `shadow profile build` instead."),
        click.option("--tolerances", type=_FILE, default=None,
                     help="TOML file of comparison tolerances per model ([default], "
                          "[models.NAME])."),
    )


def join_config(window_s: float, grace_s: float, reference_size: int,
                profile_file: Path | None, tolerances: Path | None, **more: Any) -> Any:
    """The JoinConfig the ``windows()`` options describe; a bad file is one ConfigError."""
    from consumers.compare import Tolerances
    from consumers.join import JoinConfig
    from shadow.offline.profiles import load_profiles

    return JoinConfig(window_ms=int(window_s * 1000), grace_ms=int(grace_s * 1000),
                      reference_size=reference_size,
                      tolerances=Tolerances.from_file(tolerances) if tolerances else Tolerances(),
                      profiles=load_profiles(profile_file) if profile_file else {}, **more)


@dataclass(frozen=True)
class CandidateFiles:
    weights: Path | None = None
    card: Path | None = None
    adapter: str | None = None


def files_by_candidate(ids: list[str], weights: tuple[str, ...], cards: tuple[str, ...],
                       adapters: tuple[str, ...]) -> dict[str, CandidateFiles]:
    """``--weights/--card/--adapter [ID=]...`` per candidate id. Without ``ID=`` a value is
    for the only candidate; with several candidates each value must name one."""
    found: dict[str, dict[str, Any]] = {cid: {} for cid in ids}
    for option, values in (("weights", weights), ("card", cards), ("adapter", adapters)):
        for value in values:
            cid, sep, rest = value.partition("=")
            named = sep and cid in found and not (option != "adapter" and Path(value).exists())
            if not named:
                if len(ids) != 1:
                    raise click.BadParameter(
                        f"{value!r}: with several candidates say which one it is for "
                        f"(ID=..., one of {', '.join(ids)})", param_hint=f"'--{option}'")
                cid, rest = ids[0], value
            if option in found[cid]:
                raise click.BadParameter(f"given twice for candidate {cid!r}",
                                         param_hint=f"'--{option}'")
            if option != "adapter":
                path = Path(rest)
                if not path.is_file():
                    raise click.BadParameter(f"{rest!r}: no such file", param_hint=f"'--{option}'")
                found[cid][option] = path
            else:
                found[cid][option] = rest
    return {cid: CandidateFiles(**kw) for cid, kw in found.items()}
