"""What every `sluice` command module shares: the consoles, and the one place a SluiceError becomes exit code 2."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text
from typer.core import TyperGroup

from sluice.errors import SluiceError

console = Console()
err_console = Console(stderr=True)  # progress displays
# soft_wrap: an error's path or command is printed on one line, never broken where a user copies it.
_errors = Console(stderr=True, soft_wrap=True)


def say_error(message: str, label: str = "error:", style: str = "bold red") -> None:
    """One line on stderr: a coloured label, then the message as it is."""
    # As a Text, not markup: a message quoting "[...]" (a list, a filter) is printed as it is.
    _errors.print(Text.assemble((label, style), " ", message))


def fail(exc: Exception) -> NoReturn:
    """Print the error (its message names the input and the fix) and exit with code 2."""
    say_error(str(exc))
    raise typer.Exit(code=2)


class SluiceGroup(TyperGroup):
    """The top command group: a SluiceError from any command is printed and exits with code 2, here only."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SluiceError as exc:
            fail(exc)


class StageProgress:
    """Progress through named stages: a live bar on a terminal; in a log, a line per stage and every `every_s`."""

    def __init__(self, out: Console = err_console, every_s: float = 15.0):
        self.out, self.every_s = out, every_s
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out
        )
        self.task = self.bar.add_task("starting", total=None)
        self.start = self.printed_at = time.monotonic()
        self.printed: tuple[str, int] | None = None

    def __enter__(self) -> StageProgress:
        if self.out.is_terminal:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.out.is_terminal:  # a bar never started still prints a blank line when stopped
            self.bar.stop()

    def update(self, stage: str, done: int = 0, total: int | None = None) -> None:
        """Now at `done` of `total` (None: unknown) in `stage`."""
        if self.out.is_terminal:
            self.bar.update(self.task, description=stage, completed=done, total=total)
            return
        now = time.monotonic()
        changed = self.printed is None or self.printed[0] != stage or (done == total and self.printed[1] != done)
        if changed or now - self.printed_at >= self.every_s:
            count = f": {done}/{total}" if total else ""
            self.out.print(f"{stage}{count} ({now - self.start:.0f} s)", soft_wrap=True, highlight=False)
            self.printed, self.printed_at = (stage, done), now
