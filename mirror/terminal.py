"""How wide the tables of every command are: one rule, so a pipe gets the same layout everywhere.

``--columns N`` wins; otherwise a terminal's own width; otherwise ``$COLUMNS``; otherwise 80
(a pipe or a file). ``wide`` lifts the limit for layouts that keep each row on one line
whatever its length (``--wide``).
"""

from __future__ import annotations

import os
import shutil
import sys

from rich.console import Console

__all__ = ["DEFAULT_COLUMNS", "WIDE_COLUMNS", "table_console", "table_width"]

DEFAULT_COLUMNS = 80      # when stdout is a pipe or a file and $COLUMNS is not set
WIDE_COLUMNS = 1000       # --wide: enough for the widest row of any table


def table_width(columns: int | None = None, *, wide: bool = False, stream=None) -> int:
    """The width tables are laid out for (see the module doc)."""
    if columns:
        return columns
    if wide:
        return WIDE_COLUMNS
    stream = stream if stream is not None else sys.stdout
    try:
        if stream.isatty():
            return shutil.get_terminal_size((DEFAULT_COLUMNS, 24)).columns
    except (AttributeError, ValueError, OSError):
        pass
    value = os.environ.get("COLUMNS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_COLUMNS


def table_console(columns: int | None = None, *, wide: bool = False, file=None,
                  stderr: bool = False) -> Console:
    """A rich console on stdout (or ``file`` / stderr) of :func:`table_width` columns."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    return Console(file=file, stderr=stderr, highlight=False,
                   width=table_width(columns, wide=wide, stream=stream))
