"""What every `sluice` command module shares: the consoles and the one way to fail."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(exc: Exception) -> NoReturn:
    """Print the error (its message names the input and the fix) and exit with code 2."""
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)
