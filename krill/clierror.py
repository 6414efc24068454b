"""The error every ``krill`` subcommand raises for the user to read.

It lives apart from ``krill.cli`` (which imports every subcommand module) so
that subcommands can import it at the top of their modules without a cycle.
"""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A failure to report to the user as one line, with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
