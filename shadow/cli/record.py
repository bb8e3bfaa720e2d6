"""``shadow record``: a range of a topic into a file, exact to the byte."""

from __future__ import annotations

from pathlib import Path

import click

from shadow.cli import options
from shadow.cli.common import err_console, kafka, print_json, progress_bar, settings


@click.command("record")
@click.option("--topic", required=True, callback=options.pipeline_topic,
              help=f"The topic to record: {options.TOPIC_HELP}.")
@options.time_range()
@click.option("--partitions", default=None, metavar="P,P,...",
              help="Only these partitions (default: all).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=options.output_file,
              help="The recording to write (zstd JSON lines).")
@click.option("--force", is_flag=True, help="Overwrite an existing complete recording.")
@options.json_output()
def command(topic: str, start: str, end: str, partitions: str | None, output: Path,
            force: bool, as_json: bool) -> None:
    """Record a time or offset range of a topic to a compressed file.

    Keeps each message's topic, partition, offset, timestamp, key and value (exact bytes),
    in time order across partitions (the order replay reads them in). Interrupted? Run the
    same command again: it resumes from the last checkpoint.

    \b
    Example:
      shadow record --topic requests --from 2026-11-22T10:00:00Z \\
          --to 2026-11-22T11:00:00Z -o monday.jsonl.zst
    """
    from shadow.offline.recording import parse_range, record

    s = settings()
    try:
        parts = [int(p) for p in partitions.split(",")] if partitions else None
    except ValueError:
        raise click.BadParameter(f"{partitions!r}: expected P,P,...",
                                 param_hint="'--partitions'") from None
    lo, hi = parse_range(start, end)
    bootstrap = kafka(s)
    with progress_bar(f"recording {topic}", disable=as_json) as progress:
        stats = record(s, bootstrap, topic, lo, hi, output, partitions=parts, force=force,
                       progress=progress)
    if as_json:
        print_json({"topic": topic, "file": str(output), "records": stats.records,
                    "resumed_from": stats.resumed_from,
                    "partitions": {p: list(r) for p, r in sorted(stats.partitions.items())}})
        return
    resumed = f" (resumed after {stats.resumed_from})" if stats.resumed_from else ""
    n = len(stats.partitions)
    err_console.print(f"recorded {stats.records} messages of {topic} from {n} "
                      f"partition{'s' if n != 1 else ''}{resumed} -> {output}",
                      highlight=False)
