"""The errors ``krill`` shows the user as one line: ``CliError`` and ``ConfigError``.

They live apart from ``krill.cli`` (which imports every subcommand module) so
that subcommands can import them at the top of their modules without a cycle.
``ConfigError`` is defined here, not in ``krill.config`` (which re-exports it),
so that ``krill.cli`` can catch it without loading the config loader (tomllib:
~7 ms of every ``krill delta apply``'s start, issue 15).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CliError", "ConfigError", "listen_failure", "unwritable", "user_error_in"]


class CliError(Exception):
    """A failure to report to the user as one line, with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and says why."""


# What to do about the errors a listener's bind gives, by errno.
_BIND_ADVICE = {
    errno.EADDRINUSE: "another process listens there: stop it or choose another port",
    errno.EADDRNOTAVAIL: "no interface of this host has that address: use one it has, or 0.0.0.0",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a higher one",
}


def listen_failure(exc: OSError, address: str, flag: str) -> CliError | None:
    """A listener that could not bind ``address`` (given as ``flag``), as one line that says
    what to do; None for any other OSError (a caller re-raises those)."""
    advice = _BIND_ADVICE.get(exc.errno or 0)
    if advice is None:
        return None
    return CliError(f"cannot listen on {address} ({flag}): {os.strerror(exc.errno or 0)}; {advice}")


def unwritable(
    exc: OSError, directory: Path, what: str, inputs: Iterable[Path] = ()
) -> CliError | None:
    """``exc`` as "cannot write WHAT" when it is about ``directory`` or a path under it
    other than ``inputs``; None for any other error (a caller words or re-raises those).

    Commands write into temporary files there and rename them into place, so the error
    names a file the user never gave (``.krill-tar-x1y2.tmp``): the line names what they
    gave (``what``: "OUT out.krd", "--data /srv/krill") and says what to do.
    """
    names = [n for n in (exc.filename, exc.filename2) if isinstance(n, str)]
    root, given = os.path.abspath(directory), {os.path.abspath(p) for p in inputs}
    for name in map(os.path.abspath, names):
        if name not in given and Path(name).is_relative_to(root):
            return CliError(
                f"cannot write {what}: {exc.strerror or exc}; choose a directory you can write"
            )
    return None


def user_error_in(group: BaseExceptionGroup) -> CliError | ConfigError | None:
    """The first ``CliError`` or ``ConfigError`` in ``group`` (a TaskGroup's, say), if any.

    A service that fails while starting inside a task group raises the group, not
    the error; the CLI shows the error's one line either way.
    """
    for exc in group.exceptions:
        if isinstance(exc, CliError | ConfigError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = user_error_in(exc)
            if found is not None:
                return found
    return None
