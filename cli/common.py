"""What every `sluice` command module shares: the consoles and the one way to fail."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

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
