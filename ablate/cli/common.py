"""What every command shares: one-line errors, the study file, consoles, and ablate's log lines.

Bad input is one line on stderr and exit status 2, never a traceback. Every string that comes
from the user (a study file's values, a path, a variant name) is printed as it is, never as
Rich markup, so a `[/x]` in it is shown, not parsed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.text import Text

from ablate.spec.study import Study, StudyError, load_study

__all__ = ["err", "fail", "console", "load", "show_notices", "warnings_to"]

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """The one line of an error, then the exit status; `raise fail(...) from None`."""
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def console(width: int = 200) -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=width)  # piped: do not squeeze tables into 80 columns


def load(path: Path) -> Study:
    try:
        return load_study(path)
    except StudyError as exc:
        raise fail(str(exc)) from None


class _Notice(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"note: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)


def show_notices() -> None:
    """ablate's own notices (the bundled data in use, ...) as one line each on stderr, above any
    progress display."""
    logger = logging.getLogger("ablate")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _Notice) for h in logger.handlers):
        logger.addHandler(_Notice())


class _OneLine(logging.Handler):
    def __init__(self, out: Console):
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.print(Text("warning: ", style="yellow") + Text(record.getMessage()), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def warnings_to(out: Console) -> Iterator[None]:
    """ablate's warnings (a discarded checkpoint, a storage blip) as one line each, above the progress display."""
    log, handler = logging.getLogger("ablate"), _OneLine(out)
    notices = [h for h in log.handlers if isinstance(h, _Notice)]  # warnings are printed here, once, not also as notes
    propagate, log.propagate = log.propagate, False
    log.addHandler(handler)
    for h in notices:
        h.addFilter(_below_warnings)
    try:
        yield
    finally:
        for h in notices:
            h.removeFilter(_below_warnings)
        log.removeHandler(handler)
        log.propagate = propagate


def _below_warnings(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING
