"""What every command shares: consoles, settings, the servers, one-line errors, exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import orjson
from rich.console import Console
from rich.text import Text

from schemas.exceptions import closest
from shadow.exceptions import KafkaUnreachableError, ShadowstreamError
from shadow.settings import Settings, load_settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INPUT = 3
"""``shadow verdict`` only: a usage or input error, kept apart from its verdicts 0/1/2."""

# Piped, or in a CI log, rich would cut tables at 80 columns: give them all the width they
# need instead (a table is only as wide as its content) and no colours or cursor moves.
_PIPED_WIDTH = 4096


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader stopped reading (``| head``): rich would exit 1 on the spot, which reads
        as HOLD from ``shadow verdict``. Say it as the error it is; the command decides."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())
        raise BrokenPipeError


def _console(stderr: bool) -> Console:
    console = _Console(stderr=stderr)
    if console.is_terminal:
        return console
    return _Console(stderr=stderr, width=_PIPED_WIDTH, color_system=None, highlight=False)


console = _console(stderr=False)
err_console = _console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None = None, *, disable: bool = False
                 ) -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar on stderr (done / total and the time left; a count alone while the
    total is unknown), shown from the first update. Yields ``update(done, total=None)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(),
                   MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                   disable=disable, transient=False)
    task = bar.add_task(description, total=total)

    def update(done: int, new_total: int | None = None) -> None:
        if not bar.live.is_started:  # shown once there is something to show, not before
            bar.start()
        if new_total is not None:
            bar.update(task, completed=done, total=new_total)
        else:
            bar.update(task, completed=done)

    try:
        yield update
    finally:
        bar.stop()


def print_error(message: str) -> None:
    """One line on stderr, never wrapped, never read as rich markup."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True,
                      highlight=False)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print_error(message)
    sys.exit(code)


class Group(click.Group):
    """Turns our errors into one clear line on stderr and exit status 1, not a traceback, and
    click's usage errors into one line too (exit 2) instead of its four."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShadowstreamError as exc:
            fail(str(exc))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            hint = closest(args[0], self.commands) if args else ""
            if hint:
                exc.message = f"{exc.message.rstrip('.')}; did you mean {hint!r}?"
            raise

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group alone
            ctx = exc.ctx
            names = sorted(ctx.command.commands) if isinstance(ctx.command, click.Group) else []
            fail(f"`{ctx.command_path}` needs a command: {', '.join(names)} (see "
                 f"`{ctx.command_path} --help`)", exc.exit_code)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            message = exc.format_message().replace(" Did you mean", "; did you mean")
            fail(f"{message}{see}", exc.exit_code)
        except click.Abort:
            fail("aborted")
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def print_json(obj: Any) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def settings() -> Settings:
    return load_settings()


def verbose_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # librdkafka's own lines (a refused connection, a broker still loading) repeat many
        # times a second while it retries; what they mean reaches the user as one error.
        logging.getLogger("shadowstream.kafka").setLevel(logging.CRITICAL + 1)


def kafka(s: Settings) -> str:
    """The bootstrap servers, once they have answered within ``kafka_timeout_s``."""
    from shadow import clients
    from shadow.stack import resolve_kafka

    bootstrap = resolve_kafka(s)
    clients.probe_kafka(s, bootstrap)
    return bootstrap


def redis_url(s: Settings) -> str:
    from shadow.stack import resolve_redis

    return resolve_redis(s)


__all__ = ["EXIT_ERROR", "EXIT_INPUT", "EXIT_OK", "EXIT_USAGE", "Group",
           "KafkaUnreachableError", "console", "err_console", "fail", "kafka", "print_error",
           "print_json", "redis_url", "settings", "verbose_logging"]
