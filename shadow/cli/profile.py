"""``shadow profile``: drift reference profiles from a range of the requests topic."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from shadow.cli import options
from shadow.cli.common import Group, err_console, kafka, print_json, settings


@click.group("profile", cls=Group)
def command() -> None:
    """Drift reference profiles.

    \b
    Example:
      shadow profile build --from 2026-11-22T10:00:00Z --to 2026-11-22T11:00:00Z -o ref.json
      shadow join --profile ref.json
    """


@command.command("build")
@options.time_range()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=options.output_file,
              help="The profile file to write (JSON).")
@click.option("--bins", type=click.IntRange(2, 10_000), default=100, show_default=True,
              help="Quantile bins per numeric feature.")
@options.json_output()
def build(start: str, end: str, output: Path, bins: int, as_json: bool) -> None:
    """Build a drift reference from a range of <prefix>.requests.

    One profile per model found: its inputs' features and its live answers, binned on
    quantiles of the range. The range takes the positions of `shadow record`.
    `shadow join --profile FILE` (and `shadow replay --profile FILE`) judge drift against it.

    \b
    Example:
      shadow profile build --from beginning --to end -o ref.json --json
    """
    from shadow.offline.profiles import build_profiles
    from shadow.offline.recording import parse_range

    s = settings()
    lo, hi = parse_range(start, end)
    bootstrap = kafka(s)
    with err_console.status("reading requests...", spinner="dots") as status:
        result = build_profiles(s, bootstrap, lo, hi, bins=bins,
                                progress=lambda n: status.update(f"read {n} requests"))
    output.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
    if as_json:
        print_json({"file": str(output), "requests": result.requests,
                    "skipped": result.skipped, "models": sorted(result.profiles)})
        return
    n = len(result.profiles)
    err_console.print(f"profile: {result.requests} requests of {n} model{'s' if n != 1 else ''}"
                      f", {result.skipped} undecodable skipped -> {output}", highlight=False)
