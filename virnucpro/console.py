"""Console output: rich on a terminal, plain lines elsewhere, nothing but errors with --quiet.

Colours only when stderr is a terminal and NO_COLOR is unset (rich decides both). Everything shown,
and INFO messages --quiet hides, also goes to the run's log file once `log_to_file` is called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .errors import OutputError

console = Console(stderr=True, highlight=False)
_quiet = False
_verbose = False
_file_handler: logging.FileHandler | None = None
LOGGER = "virnucpro"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(quiet: bool = False, verbose: bool = False) -> None:
    global _quiet, _verbose
    _quiet, _verbose = quiet, verbose
    root = logging.getLogger(LOGGER)
    root.setLevel(logging.DEBUG)  # each handler filters: the console by --quiet/--verbose, the log file keeps INFO
    # A terminal gets rich's aligned, wrapped log lines; a pipe (log file, SLURM .out, CI) one plain
    # line per message, neither wrapped at 80 columns nor padded to the width.
    wanted = RichHandler if console.is_terminal else _PlainHandler
    handler = next((h for h in root.handlers if isinstance(h, (RichHandler, _PlainHandler))), None)
    if handler is not None and type(handler) is not wanted:
        root.removeHandler(handler)
        handler = None
    if handler is None:
        if wanted is RichHandler:
            handler = RichHandler(console=console, show_path=False, show_time=True, markup=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = _PlainHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    root.propagate = False


class _PlainHandler(logging.Handler):
    """Log records as plain lines on the console's stream (whatever sys.stderr is at the time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.out(self.format(record), highlight=False)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def _print(message) -> None:
    """console.print, wrapped to the width on a terminal only: piped lines stay whole."""
    console.print(message, soft_wrap=not console.is_terminal)


def log_to_file(path: Path) -> Path:
    """Also log to `path` (Workdir.run_log(); appended line by line, so not atomic)."""
    global _file_handler
    root = logging.getLogger(LOGGER)
    if _file_handler is not None:  # a second command in the same process (tests) gets its own file
        root.removeHandler(_file_handler)
        _file_handler.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    _file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    _file_handler.setLevel(logging.DEBUG if _verbose else logging.INFO)
    _file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_file_handler)
    _to_file(logging.INFO, f"virnucpro command line: {' '.join(sys.argv)}")
    return path


def log_file() -> Path | None:
    return Path(_file_handler.baseFilename) if _file_handler is not None else None


def _to_file(level: int, message: str, exc_info=None) -> None:
    """Console messages go to the log file as plain text (the console has already shown them)."""
    if _file_handler is not None and level >= _file_handler.level:
        record = logging.LogRecord(f"{LOGGER}.console", level, __file__, 0, message, None, exc_info)
        _file_handler.handle(record)


_from_signals: list[str] = []  # warnings a signal handler showed, for the log file


def warn_from_signal_handler(message: str) -> None:
    """A warning from inside a signal handler. The handler runs between two bytecodes of the main
    thread, maybe in the middle of a write to the console or the log file: writing through those
    buffered streams again is a reentrant call (RuntimeError, and a logging traceback on the
    console). So one unbuffered write to stderr now; the log file gets it at the next
    `log_signal_warnings()`, called from ordinary code."""
    with contextlib.suppress(OSError):
        os.write(2, f"WARNING {message}\n".encode("utf-8", "replace"))
    _from_signals.append(message)


def log_signal_warnings() -> None:
    while True:
        try:
            message = _from_signals.pop(0)  # atomic: any thread may call this
        except IndexError:
            return
        _to_file(logging.WARNING, message)


def info(*parts: str | tuple[str, str]) -> None:
    """Print the parts as literal text: paths, read ids and names are user text, never markup
    (`read[/1]`, a workdir `W[/]x`). A part given as (text, style) is styled: ("done", "green")."""
    text = Text.assemble(*parts)
    _to_file(logging.INFO, text.plain)
    if not _quiet:
        _print(text)


def warn(message: str) -> None:
    _to_file(logging.WARNING, message)
    if not _quiet:
        _print(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str) -> None:
    _to_file(logging.ERROR, message)
    # a fresh Console: the error must reach stderr even when a progress bar holds the shared one
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)


def interrupted(message: str) -> None:
    """A command stopped by a signal with its work kept: not an error, the same command resumes it."""
    _to_file(logging.WARNING, f"interrupted: {message}")
    Console(stderr=True, highlight=False).print(f"[bold yellow]interrupted:[/bold yellow] {escape(message)}", soft_wrap=True)


def log_traceback() -> None:
    """Keep the current exception's traceback in the log file; the console shows one line."""
    if _file_handler is not None:
        _to_file(logging.ERROR, "traceback:\n" + traceback.format_exc().rstrip())


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


def _stdout_failed(exc: OSError) -> BaseException:
    """What a failed write to stdout becomes. The rest of the output is dropped (stdout is pointed at
    /dev/null, so the interpreter's own flush at exit has nothing to complain about): a reader that
    went away (`| head`) ends the command quietly with status 1, as rich does; a full disk, or any
    other failure, is one error line."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if isinstance(exc, BrokenPipeError):
        return SystemExit(1)
    return OutputError(exc.errno, f"standard output: {exc.strerror or exc} while writing; nothing more was written "
                                  "(free space, or send the output elsewhere)")


def print_stdout(text: str) -> None:
    """One line (or block) of machine-readable output on stdout, written and flushed now (see _stdout_failed)."""
    try:
        if sys.stdout is None:  # started with stdout closed
            raise BrokenPipeError
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as exc:
        raise _stdout_failed(exc) from None


class StdoutFile:
    """sys.stdout for a rich Console whose writes fail as print_stdout's do (rich handles a closed
    pipe only; a full disk reached the user as an internal error)."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except (OSError, AttributeError) as exc:
            raise _stdout_failed(exc if isinstance(exc, OSError) else BrokenPipeError()) from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except (OSError, AttributeError) as exc:
            raise _stdout_failed(exc if isinstance(exc, OSError) else BrokenPipeError()) from None

    def isatty(self) -> bool:
        return stdout_is_tty()

    def __getattr__(self, name):
        return getattr(sys.stdout, name)


def stdout_is_tty() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()  # None: started with stdout closed


def is_quiet() -> bool:
    """Whether --quiet is in effect (callers that draw their own progress bars skip them)."""
    return _quiet
