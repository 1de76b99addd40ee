"""Errors a user can act on: they carry one plain sentence and are shown without a traceback."""

import errno
import sqlite3


class UserError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""


def disk_full(exc: BaseException) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or SQLite's SQLITE_FULL."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (
        isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
    )
