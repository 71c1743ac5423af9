"""Console output, error messages and exit codes shared by every ``fedattr`` command.

Exit codes: 0 finished, ``FAILED_JOBS_EXIT`` (1) a run or job failed (also a full disk),
``USER_ERROR_EXIT`` (2) bad input, ``INTERRUPTED_EXIT`` (130) interrupted. This module imports
no other ``fedattr.cli`` module, so every command module can import it.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedattr.core.errors import RunFailedError, UserError
from fedattr.scenario import ScenarioError

__all__ = ["USER_ERROR_EXIT", "FAILED_JOBS_EXIT", "INTERRUPTED_EXIT", "out", "err", "fail",
           "user_errors", "print_json", "rows_table", "no_space_message"]

#: bad input: a scenario, override, file or option the user gave
USER_ERROR_EXIT = 2
#: a run whose jobs (some of them) failed, or that could not write its results
FAILED_JOBS_EXIT = 1
#: stopped by Ctrl-C (128 + SIGINT, the shell's convention)
INTERRUPTED_EXIT = 130

F = TypeVar("F", bound=Callable[..., Any])


def out() -> Console:
    """Console on the current stdout (looked up per call so that test runners capture it).

    Piped output gets a wide console: rich would otherwise squeeze tables into 80 columns.
    """
    wide = None if sys.stdout.isatty() else 200
    return Console(file=sys.stdout, soft_wrap=True, width=wide)


def err() -> Console:
    """Console on the current stderr."""
    return Console(file=sys.stderr, soft_wrap=True)


def fail(message: str, code: int = USER_ERROR_EXIT) -> NoReturn:
    """Print one red error message on stderr and exit with ``code``."""
    err().print(f"[bold red]error:[/bold red] [red]{escape(message)}[/red]")
    raise typer.Exit(code)


def no_space_message(exc: OSError) -> str:
    """``no space left on PATH`` for an ENOSPC error (PATH: the file it was writing, if known)."""
    where = exc.filename or exc.filename2
    return f"no space left on {where}" if where else "no space left on device"


def user_errors(fn: F) -> F:
    """Turn errors a user can cause into one message and an exit status, never a traceback.

    Bad input (ScenarioError, UserError, a missing file) exits 2; a run that failed on valid input
    (RunFailedError, a full disk) exits 1; Ctrl-C exits 130.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RunFailedError as exc:
            fail(str(exc), code=FAILED_JOBS_EXIT)
        except (ScenarioError, UserError) as exc:
            fail(str(exc))
        except FileNotFoundError as exc:
            fail(f"file not found: {exc.filename or exc}")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                fail(no_space_message(exc), code=FAILED_JOBS_EXIT)
            raise
        except KeyboardInterrupt:
            fail("interrupted", code=INTERRUPTED_EXIT)
    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Indented JSON on stdout, written plainly so that it always parses (paths become str)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def rows_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table from headers and rows (cells are shown as plain text, markup escaped)."""
    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*[escape(str(c)) for c in row])
    return table
