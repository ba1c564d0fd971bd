"""Console output: rich on a terminal, plain lines elsewhere, nothing but errors with --quiet."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
_quiet = False


def configure(quiet: bool = False, verbose: bool = False) -> None:
    global _quiet
    _quiet = quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger("virnucpro")
    root.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=console, show_path=False, show_time=console.is_terminal, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.propagate = False


def info(message: str) -> None:
    if not _quiet:
        console.print(message)


def warn(message: str) -> None:
    if not _quiet:
        console.print(f"[yellow]warning:[/yellow] {message}")


def error(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (not with --quiet, not when piped); yields advance(n)."""
    if _quiet or not console.is_terminal:
        yield lambda n=1: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def is_quiet() -> bool:
    return _quiet


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
