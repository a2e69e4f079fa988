"""The root of every error a user can cause and fix.

Whatever raises one of these has written its message for a person: the CLI prints it as one line
(``imgclf: error: ...``) and exits with :attr:`UserError.exit_code`; the server answers it with a
JSON error. Anything else that escapes is a bug: the CLI prints its traceback and exits 1.
Subclasses keep a builtin base where callers already catch one (``class PackageError(UserError,
ValueError)``).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad option, missing file, unusable data: something the user can fix. Exit code 2."""

    exit_code = 2


class UnknownModelError(UserError, KeyError):
    """A name no registry knows (zoo model, architecture, label set). A ``KeyError`` too, for the
    callers that look names up with ``try/except KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown name"
